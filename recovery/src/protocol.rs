//! What the install agent and the server's install API share: the phases an install reports
//! and the agent's view of the server.
//!
//! The agent learns where its server is from the kernel command line the server wrote when
//! it scheduled the boot: `ignite.server=http://IP:PORT ignite.mac=MAC ignite.token=TOKEN`.
//! The token, not the source address, authenticates every request of that install.

use std::path::Path;

use anyhow::Result;
use ignite_profiles::{ArchiveRef, ClientFacts, InstallPlan};
use serde::{Deserialize, Serialize};

/// One step of an install's progress, as the agent reports it and `ignite client list` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The agent runs and has an address.
    Booted {
        ip: String,
    },
    Partitioned,
    Formatted,
    /// Archive data written so far, of `total` bytes.
    Extracting {
        done: u64,
        total: u64,
    },
    Extracted {
        bytes: u64,
    },
    /// Identity, network, fstab and hooks written.
    Configured,
    BootLoader,
    Done,
    Failed {
        error: String,
        log_tail: String,
    },
}

/// The agent's side of the install API. The network implementation talks HTTP to
/// `ignite server`; a local one installs from a store on the same machine.
pub trait Source {
    /// The profile rendered for this client, given what the agent found on it.
    fn plan(&self, facts: &ClientFacts) -> Result<InstallPlan>;
    fn report(&self, phase: &Phase) -> Result<()>;
    /// Appends lines to this install's log on the server.
    fn log(&self, text: &str) -> Result<()>;
    /// Writes the snapshot's file tree under `root` (owners, modes, xattrs, hard links,
    /// sparse files kept), calling `progress(done, total)` as bytes land. Returns the bytes
    /// written.
    fn extract(
        &self,
        archive: &ArchiveRef,
        root: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64>;
}
