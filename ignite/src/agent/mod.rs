//! The install agent.

pub mod remote;
