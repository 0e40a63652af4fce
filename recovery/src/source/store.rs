//! An [`Source`] on this machine: the profile from a file, the archive from a local
//! store. `ignite install` uses it to install onto a local disk or a guest's disk image
//! file, running exactly the steps the network agent runs.
//!
//! For an image file, each partition is attached as a loop device over its byte range
//! (`losetup --offset --sizelimit`) and the plan names those devices: that needs no
//! partition support in the kernel (many VM kernels have no GPT support) and no udev.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};

use ignite_profiles::{ArchiveRef, ClientFacts, InstallPlan, Profile, Step};

use crate::loopdev::Loops;
use crate::protocol::{Phase, Source};

pub struct Store {
    pub profile: Profile,
    pub store: PathBuf,
    /// Loop devices attached for an image file's partitions, detached on drop.
    loops: Mutex<Loops>,
}

impl Store {
    pub fn new(profile: Profile, store: PathBuf) -> Store {
        Store {
            profile,
            store,
            loops: Mutex::new(Loops::default()),
        }
    }

    /// Points the plan's partition devices at loop devices over the image file's ranges.
    fn attach_partitions(&self, plan: &mut InstallPlan) -> Result<()> {
        let image = plan.disk.path.clone();
        for p in &mut plan.disk.partitions {
            let dev = self
                .loops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .attach(Path::new(&image), p.start_bytes, p.size_bytes, false)
                .with_context(|| format!("partition {}", p.number))?;
            for step in &mut plan.steps {
                match step {
                    Step::Format { device, .. } | Step::Mount { device, .. }
                        if *device == p.device =>
                    {
                        device.clone_from(&dev)
                    }
                    _ => {}
                }
            }
            p.device = dev;
        }
        Ok(())
    }
}

impl Source for Store {
    fn plan(&self, facts: &ClientFacts) -> Result<InstallPlan> {
        let mut plan = self.profile.render(facts)?;
        if Path::new(&plan.disk.path).is_file() {
            self.attach_partitions(&mut plan)?;
        }
        Ok(plan)
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
        let store = ignite_archive::Store::open(&self.store)
            .with_context(|| format!("store {}", self.store.display()))?;
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
