//! netpath's agent and CLI as a library: the integration tests and the benchmark use the
//! same code as the `netpath` binary.
//!
//! Layers, each using only those above it in this list (a unit test checks it):
//! - base: [`pin`] (the pin dir), [`iface`], [`sys`] (raw syscalls), [`packet`] (frames);
//! - [`maps`]: typed handles on the pinned maps; [`state`]: the desired state's types
//!   and checks. Neither knows the other;
//! - [`datapath`]: loading the programs, attaching them, removing them;
//! - [`reconcile`]: one reconciler per map family, desired state -> maps;
//! - [`sources`]: the config file and the CLI's live entries -> one desired state;
//! - [`inspect`]: reading the maps for people (reports, dumps, status, trace, doctor,
//!   monitor, metrics);
//! - [`bench`], [`agent`]: per-packet costs; the agent loop;
//! - [`cli`]: the command line.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod datapath;
pub mod iface;
pub mod inspect;
pub mod maps;
pub mod packet;
pub mod pin;
pub mod reconcile;
pub mod sources;
pub mod state;
pub mod sys;
