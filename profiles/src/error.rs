//! Errors: profile diagnostics (with positions) and render errors (about a client).

use serde::Serialize;
use std::fmt;

/// One problem in a profile, at a file, line and column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file as it was named when loaded (a base profile: beside the profile extending it).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "profile {} line {} col {}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Every problem found in a profile (never empty), in file and position order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Errors(pub Vec<Diagnostic>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Why a valid profile cannot be rendered for a given client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("profile {profile}: no disk of the client matches {wanted} (the client has: {have}); change [disk] in the profile or give the client such a disk")]
    NoMatchingDisk {
        profile: String,
        wanted: String,
        have: String,
    },
    #[error("profile {profile}: disk {disk} has {have} but the layout needs at least {need}; give the client a disk of at least {need} or shrink the partitions")]
    DiskTooSmall {
        profile: String,
        disk: String,
        have: String,
        need: String,
        need_bytes: u64,
    },
    #[error("profile {profile}: the layout goes on {count} disks (disk.count) but {found} of the client's disks match {wanted} (the client has: {have}); give the client {count} such disks or lower disk.count")]
    TooFewDisks {
        profile: String,
        count: usize,
        found: usize,
        wanted: String,
        have: String,
    },
    #[error("profile {profile}: the disks of one layout must have the same logical sector size, but they have {disks}; choose disks alike (e.g. by transport or size)")]
    MixedSectorSizes { profile: String, disks: String },
    #[error("profile {profile}: disk {disk} reports {sector}-byte logical sectors; only 512 to 4096 (a power of two) are supported")]
    BadSectorSize {
        profile: String,
        disk: String,
        sector: u64,
    },
    #[error("profile {profile}: MAC address {mac:?} is not a MAC; use e.g. \"52:54:00:12:34:56\"")]
    BadMac { profile: String, mac: String },
    #[error("profile {profile}: hostname template {template:?} uses {{name}} but the client has no hostname; give the client a hostname or use {{mac6}}")]
    NoClientHostname { profile: String, template: String },
    #[error("profile {profile}: hostname {hostname:?} {why}; use letters, digits and '-', labels of at most 63 characters")]
    BadHostname {
        profile: String,
        hostname: String,
        why: String,
    },
}
