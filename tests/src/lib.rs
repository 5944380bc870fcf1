//! ikelb integration tests

pub mod lab;
pub mod packet;
