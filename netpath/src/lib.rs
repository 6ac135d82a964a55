//! netpath's agent and CLI as a library: the integration tests and the benchmark use the
//! same code as the `netpath` binary.

pub mod bench;
pub mod config;
pub mod datapath;
pub mod doctor;
pub mod dump;
pub mod iface;
pub mod metrics;
pub mod monitor;
pub mod nat;
pub mod packet;
pub mod pin;
pub mod policy;
pub mod report;
pub mod status;
pub mod sys;
pub mod trace;
