//! Reading the datapath for people and programs: counters, peers, flows and policy as
//! rows and tables, `status`, `dump`, `trace`, `doctor`, `monitor`, and the Prometheus
//! metrics the agent serves. Nothing here writes a map the programs read.

pub mod decisions;
pub mod doctor;
pub mod dump;
pub mod flows;
pub mod metrics;
pub mod monitor;
pub mod networks;
pub mod policy;
pub mod profile;
pub mod report;
pub mod status;
pub mod trace;
