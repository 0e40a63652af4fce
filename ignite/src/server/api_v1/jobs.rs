//! Long work as jobs: `POST` answers 202 with `{"job": ID}` at once, the work runs on a
//! thread of its own, and `GET /api/v1/jobs/{id}` shows its state, progress and log; each
//! change is also handed to the table's observer (an event on `/api/v1/events`).
//!
//! The table is in memory (a restart forgets it) and bounded: the newest [`KEEP`] jobs, each
//! with at most [`MAX_LOG`] log lines (the newest kept).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::now_ms;

/// Jobs kept; the oldest finished one goes when a new one starts.
pub const KEEP: usize = 100;
/// Log lines kept per job.
pub const MAX_LOG: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
}

/// A job as `GET /api/v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: u64,
    /// What it does, e.g. `archive verify`.
    pub kind: String,
    pub state: JobState,
    /// Units done of `total` (bytes, chunks, steps: the kind says).
    pub done: u64,
    pub total: Option<u64>,
    /// Its log, the newest 1000 lines.
    #[schema(value_type = Vec<String>)]
    pub log: VecDeque<String>,
    /// What the work returned, once done.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
}

/// The answer to a request that started a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobRef {
    pub job: u64,
}

/// Told of each change of a job, as it is after the change.
pub type Observer = Box<dyn Fn(&Job) + Send + Sync>;

pub struct Jobs {
    table: Mutex<Table>,
    observer: Observer,
}

#[derive(Default)]
struct Table {
    next: u64,
    jobs: BTreeMap<u64, Job>,
}

/// What running work sees of its job: where it reports progress and log lines.
pub struct Handle {
    id: u64,
    jobs: Arc<Jobs>,
}

impl Jobs {
    pub fn new(observer: Observer) -> Arc<Jobs> {
        Arc::new(Jobs {
            table: Mutex::new(Table::default()),
            observer,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work` as job `kind` on a thread of its own; returns its id at once.
    pub fn spawn(
        self: &Arc<Self>,
        kind: &str,
        work: impl FnOnce(&Handle) -> anyhow::Result<serde_json::Value> + Send + 'static,
    ) -> u64 {
        let id = self.start(kind);
        let h = Handle {
            id,
            jobs: self.clone(),
        };
        std::thread::spawn(move || {
            let r = work(&h);
            h.jobs.finish(id, r);
        });
        id
    }

    /// A new running job's id (forgetting the oldest finished job past [`KEEP`]).
    fn start(&self, kind: &str) -> u64 {
        let mut t = self.table();
        t.next += 1;
        let id = t.next;
        t.jobs.insert(
            id,
            Job {
                id,
                kind: kind.to_string(),
                state: JobState::Running,
                done: 0,
                total: None,
                log: VecDeque::new(),
                result: None,
                error: None,
                started_ms: now_ms(),
                finished_ms: None,
            },
        );
        while t.jobs.len() > KEEP {
            let Some(old) = t
                .jobs
                .values()
                .find(|j| j.state != JobState::Running)
                .map(|j| j.id)
            else {
                break;
            };
            t.jobs.remove(&old);
        }
        let j = t.jobs[&id].clone();
        drop(t);
        (self.observer)(&j);
        id
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Job)) {
        let mut t = self.table();
        let Some(j) = t.jobs.get_mut(&id) else {
            return;
        };
        f(j);
        let j = j.clone();
        drop(t);
        (self.observer)(&j);
    }

    fn finish(&self, id: u64, r: anyhow::Result<serde_json::Value>) {
        self.update(id, |j| {
            j.finished_ms = Some(now_ms());
            match r {
                Ok(v) => {
                    j.state = JobState::Done;
                    j.result = Some(v);
                }
                Err(e) => {
                    j.state = JobState::Failed;
                    j.error = Some(format!("{e:#}"));
                }
            }
        })
    }

    pub fn get(&self, id: u64) -> Option<Job> {
        self.table().jobs.get(&id).cloned()
    }

    /// Every job kept, oldest first.
    pub fn list(&self) -> Vec<Job> {
        self.table().jobs.values().cloned().collect()
    }
}

impl Handle {
    pub fn progress(&self, done: u64, total: Option<u64>) {
        self.jobs.update(self.id, |j| {
            j.done = done;
            j.total = total;
        })
    }

    /// Runs `work` with a counter (bytes, as a rule) shown as the job's progress of `total`
    /// while it runs, sampled every 200 ms.
    pub fn with_progress<T>(&self, total: Option<u64>, work: impl FnOnce(&AtomicU64) -> T) -> T {
        let counter = AtomicU64::new(0);
        let finished = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !finished.load(Ordering::Relaxed) {
                    self.progress(counter.load(Ordering::Relaxed), total);
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            let r = work(&counter);
            finished.store(true, Ordering::Relaxed);
            self.progress(counter.load(Ordering::Relaxed), total);
            r
        })
    }

    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        self.jobs.update(self.id, |j| {
            if j.log.len() == MAX_LOG {
                j.log.pop_front();
            }
            j.log.push_back(line);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Job `id` once it is no longer running; panics after 20 s.
    fn finished(jobs: &Jobs, id: u64) -> Job {
        let t = Instant::now();
        loop {
            let j = jobs.get(id).unwrap();
            if j.state != JobState::Running {
                return j;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "still running: {j:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_job_reports_progress_log_and_result_or_its_failure() {
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let seen_tx = std::sync::Mutex::new(seen_tx);
        let jobs = Jobs::new(Box::new(move |j: &Job| {
            let _ = seen_tx.lock().unwrap().send((j.id, j.state));
        }));
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let id = jobs.spawn("count", move |h| {
            h.progress(1, Some(2));
            h.log("half way");
            go_rx.recv()?;
            h.progress(2, Some(2));
            Ok(serde_json::json!({"counted": 2}))
        });
        // It runs until told to go on: what it reported so far is visible meanwhile.
        let t = Instant::now();
        while jobs.get(id).unwrap().log.is_empty() {
            assert!(t.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(10));
        }
        let j = jobs.get(id).unwrap();
        assert_eq!((j.state, j.done, j.total), (JobState::Running, 1, Some(2)));
        go_tx.send(()).unwrap();
        let j = finished(&jobs, id);
        assert_eq!(j.state, JobState::Done);
        assert_eq!(j.result.unwrap()["counted"], 2);
        assert_eq!(j.log, ["half way"]);
        assert!(j.finished_ms.is_some());
        // The observer saw every change: start, progress, log, progress, end.
        // (It is told after the table changed: the last may come a moment after.)
        let changes: Vec<_> = (0..5)
            .map(|_| seen.recv_timeout(Duration::from_secs(20)).unwrap())
            .collect();
        assert!(seen.try_recv().is_err(), "more than 5 changes");
        assert_eq!(changes[0], (id, JobState::Running));
        assert_eq!(changes[4], (id, JobState::Done));
        let bad = jobs.spawn("fail", |_| anyhow::bail!("store gone"));
        let j = finished(&jobs, bad);
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.error.as_deref(), Some("store gone"));
        assert!(jobs.get(999).is_none());
    }

    #[test]
    fn a_counter_is_the_jobs_progress_while_it_runs_and_after() {
        let jobs = Jobs::new(Box::new(|_: &Job| {}));
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let id = jobs.spawn("count", move |h| {
            h.with_progress(Some(10), |c| {
                c.store(5, Ordering::Relaxed);
                go_rx.recv()?;
                c.store(10, Ordering::Relaxed);
                Ok(serde_json::Value::Null)
            })
        });
        let t = Instant::now();
        while jobs.get(id).unwrap().done != 5 {
            assert!(t.elapsed() < Duration::from_secs(20), "{:?}", jobs.get(id));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(jobs.get(id).unwrap().total, Some(10));
        go_tx.send(()).unwrap();
        let j = finished(&jobs, id);
        assert_eq!((j.state, j.done), (JobState::Done, 10));
    }

    #[test]
    fn the_table_and_each_log_stay_bounded() {
        let jobs = Jobs::new(Box::new(|_: &Job| {}));
        let first = jobs.spawn("chatty", |h| {
            for n in 0..MAX_LOG + 5 {
                h.log(format!("line {n}"));
            }
            Ok(serde_json::Value::Null)
        });
        let j = finished(&jobs, first);
        assert_eq!(j.log.len(), MAX_LOG);
        assert_eq!(j.log.front().unwrap(), "line 5");
        let mut last = first;
        for _ in 0..KEEP + 3 {
            last = jobs.spawn("quick", |_| Ok(serde_json::Value::Null));
            finished(&jobs, last);
        }
        let kept = jobs.list();
        assert_eq!(kept.len(), KEEP);
        assert!(jobs.get(first).is_none(), "the oldest finished job went");
        assert_eq!(kept.last().unwrap().id, last);
    }
}
