//! ikelb's black-box integration tests: network-namespace labs, the backends' UDP responder,
//! and the demo (see `lab`).

pub mod bird;
pub mod cluster;
pub mod dashboard;
pub mod family;
pub mod fixture;
pub mod frame;
pub mod fuzz;
pub mod ike;
pub mod lab;
pub mod packet;
pub mod packet6;
pub mod xdp;
