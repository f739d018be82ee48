//! imagewarden agent library: everything the `imagewarden` binary does, so
//! that integration tests drive the same code.

pub mod agent_loop;
pub mod cli;
pub mod cmd_check;
pub mod cmd_run;
pub mod controller;
pub mod crosscheck;
pub mod finding;
pub mod kube_actions;
pub mod kube_run;
pub mod memory;
pub mod metrics;
pub mod probes;
pub mod server;
pub mod sink;
pub mod sources;
