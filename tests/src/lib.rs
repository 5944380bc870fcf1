//! ikelb integration tests

pub mod lab;
