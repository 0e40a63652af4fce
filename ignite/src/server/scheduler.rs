//! Runs capture schedules in the server: a thread looks every second for schedules that are
//! due ([`crate::clock`] time), starts at most `max_running` captures at once (one per name),
//! and after each successful capture applies the schedule's retention to that guest's
//! captures and collects garbage. A run missed while the server was down is due at start and
//! runs once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::clock;
use crate::state::schedules::Schedule;
use crate::state::State;

pub struct Scheduler {
    pub state_dir: PathBuf,
    pub store_dir: PathBuf,
    pub max_running: usize,
}

impl Scheduler {
    /// Starts the scheduling thread; it ends when `stop` is set.
    pub fn spawn(self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let running = Arc::new(Mutex::new(HashSet::<String>::new()));
        let me = Arc::new(self);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = me.tick(&running) {
                    tracing::error!("capture scheduler: {e:#}");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    }

    fn tick(self: &Arc<Self>, running: &Arc<Mutex<HashSet<String>>>) -> Result<()> {
        let state = State::open(&self.state_dir)?;
        let now = clock::now();
        for s in state.schedules()? {
            if s.next_run > now {
                continue;
            }
            let mut r = running.lock().unwrap_or_else(|e| e.into_inner());
            if r.contains(&s.name) || r.len() >= self.max_running {
                continue;
            }
            r.insert(s.name.clone());
            drop(r);
            state.schedule_started(&s, now)?;
            tracing::info!("scheduled capture of {} starts", s.name);
            let (me, running) = (self.clone(), running.clone());
            std::thread::spawn(move || {
                let result = match me.run(&s) {
                    Ok(summary) => summary,
                    Err(e) => format!("failed: {e:#}"),
                };
                tracing::info!("scheduled capture of {}: {result}", s.name);
                if let Ok(state) = State::open(&me.state_dir) {
                    let _ = state.schedule_finished(&s.name, &result);
                }
                running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&s.name);
            });
        }
        Ok(())
    }

    /// One scheduled run: capture, then retention and gc only if the capture succeeded.
    fn run(&self, s: &Schedule) -> Result<String> {
        let state = State::open(&self.state_dir)?;
        let store = Arc::new(ignite_archive::Store::open_or_init(&self.store_dir)?);
        let c =
            crate::guests::capture::capture_guest(&self.state_dir, &state, store.clone(), &s.name)?;
        let mut summary = format!(
            "ok: {}@{} ({} new)",
            s.name,
            ignite_recovery::capture::record::short(&c.snapshot.id),
            ignite_profiles::human(c.record.stats.new_stored_bytes)
        );
        if let Some(v) = &s.options.verify_boot {
            let verdict = crate::guests::verify_boot::verify_boot(
                &self.state_dir,
                &state,
                store.clone(),
                c.history,
                &format!("{}@{}", s.name, c.snapshot.id),
                &v.check(),
            )?;
            summary += &format!(", {}", verdict.lines().next().unwrap_or(""));
            if !verdict.starts_with("boots") {
                // Pruning now could drop the last capture known to boot.
                return Ok(summary + "; retention skipped");
            }
        }
        if !s.keep.is_empty() {
            let pruned = ignite_recovery::capture::retention::prune(
                &store,
                &s.name,
                &s.keep.policy(),
                false,
            )?;
            let gc = ignite_archive::gc::gc(&store)?;
            summary += &format!(
                ", {} capture(s) pruned, {} freed",
                pruned.removed.len(),
                ignite_profiles::human(gc.bytes_freed.max(0) as u64)
            );
        }
        Ok(summary)
    }
}
