//! Everything done to a machine's disks: the plan runner and its steps (partition, file
//! systems, extract, identity, network, boot loader), the protocol between the in-guest agent
//! and the server, and the sources an agent reads a plan and its archive from.
//!
//! An install is a restore of a golden archive onto a fresh layout; capture, restore and clone
//! are its siblings here. The binary (`ignite`) wires these to its CLI, its server and the
//! agent's PID-1 shell; nothing in this crate knows about either.
//!
//! Errors are `anyhow` chains, unlike the leaf crates: every step ends at an operator's
//! console or the server's install log as one line, and nothing matches on them.

pub mod api_client;
pub mod capture;
pub mod clone;
pub mod disk;
pub mod facts;
pub mod log;
pub mod loopdev;
pub mod media;
pub mod nbd;
pub mod process;
pub mod protocol;
pub mod random;
pub mod recover;
pub mod restore;
pub mod runner;
pub mod source;
pub mod steps;
pub mod tls;
pub mod tree;

pub use protocol::{Phase, Source};
