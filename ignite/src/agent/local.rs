//! An [`InstallServer`] on this machine: the profile from a file, the archive from a local
//! store. `ignite install` uses it to install onto a local disk (or a loop device holding a
//! guest image), running exactly the steps the network agent runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use ignite_archive::Store;
use ignite_profiles::{ArchiveRef, ClientFacts, InstallPlan, Profile};

use crate::install::{InstallServer, Phase};

pub struct LocalServer {
    pub profile: Profile,
    pub store: PathBuf,
}

impl InstallServer for LocalServer {
    fn plan(&self, facts: &ClientFacts) -> Result<InstallPlan> {
        Ok(self.profile.render(facts)?)
    }

    fn report(&self, phase: &Phase) -> Result<()> {
        match phase {
            Phase::Extracting { done, total } => {
                eprintln!("ignite install: extracting {done}/{total} bytes")
            }
            p => eprintln!("ignite install: {}", serde_json::to_string(p)?),
        }
        Ok(())
    }

    /// The console already shows every line ([`super::log::Log`]); there is no server log.
    fn log(&self, _text: &str) -> Result<()> {
        Ok(())
    }

    fn extract(
        &self,
        archive: &ArchiveRef,
        root: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64> {
        let store =
            Store::open(&self.store).with_context(|| format!("store {}", self.store.display()))?;
        let m = store
            .resolve(&archive.to_string())
            .with_context(|| format!("archive {archive} in store {}", self.store.display()))?;
        let total = m.stats.logical_bytes;
        let done = AtomicU64::new(0);
        // The export runs on its own thread; this one polls its byte counter for progress.
        let stats = std::thread::scope(|s| {
            let job = s.spawn(|| ignite_archive::export_dir::export_dir(&store, &m, root, &done));
            while !job.is_finished() {
                std::thread::sleep(Duration::from_millis(200));
                progress(done.load(Ordering::Relaxed), total);
            }
            job.join()
        })
        .map_err(|_| anyhow::anyhow!("the archive export thread panicked"))?
        .with_context(|| format!("cannot extract {archive} into {}", root.display()))?;
        progress(stats.bytes, total);
        Ok(stats.bytes)
    }
}
