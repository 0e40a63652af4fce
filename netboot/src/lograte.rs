//! Rate-limited log lines. A hostile LAN can send tens of thousands of packets a minute, and
//! one line per packet fills the disk (a 50k-packet barrage once wrote 5.9 MB of log).
//!
//! Each kind of line (a static key) is printed at most `burst` times per window; the rest
//! are counted. The count is reported once the window has ended: on the next line of that
//! kind, or by [`flush`], which the service loops call every [`WINDOW`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a window lasts.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Warnings and errors about hostile or broken input: a few lines per kind and window.
pub static WARNINGS: Limiter = Limiter::new(WINDOW, 5);

/// Boot steps ([`crate::boot::log_step`]): generous, since a boot storm of real clients
/// is many steps; a flood of forged requests still costs a bounded number of lines.
pub static STEPS: Limiter = Limiter::new(WINDOW, 100);

struct Slot {
    key: &'static str,
    start: Instant,
    printed: u32,
    suppressed: u64,
}

pub struct Limiter {
    window: Duration,
    burst: u32,
    slots: Mutex<Vec<Slot>>,
}

impl Limiter {
    pub const fn new(window: Duration, burst: u32) -> Limiter {
        Limiter {
            window,
            burst,
            slots: Mutex::new(Vec::new()),
        }
    }

    /// Whether a line of kind `key` may be printed at `now`: `Some(n)` with the number of
    /// such lines left out in the window that just ended (to be mentioned), `None` to leave
    /// this one out (it is counted).
    pub fn check(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let i = match slots.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                slots.push(Slot {
                    key,
                    start: now,
                    printed: 0,
                    suppressed: 0,
                });
                slots.len() - 1
            }
        };
        let s = &mut slots[i];
        let mut before = 0;
        if now.saturating_duration_since(s.start) >= self.window {
            before = s.suppressed;
            *s = Slot {
                key,
                start: now,
                printed: 0,
                suppressed: 0,
            };
        }
        if s.printed < self.burst {
            s.printed += 1;
            Some(before)
        } else {
            s.suppressed += 1;
            None
        }
    }

    /// The kinds whose window has ended with lines left out, with their counts; those
    /// windows start afresh.
    pub fn take_ended(&self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for s in slots.iter_mut() {
            if s.suppressed > 0 && now.saturating_duration_since(s.start) >= self.window {
                out.push((s.key, s.suppressed));
                s.suppressed = 0;
                s.printed = 0;
                s.start = now;
            }
        }
        out
    }
}

/// Logs how many lines each limiter left out in windows that have ended.
pub fn flush() {
    let now = Instant::now();
    for (limiter, what) in [(&WARNINGS, "warnings"), (&STEPS, "boot step lines")] {
        for (key, n) in limiter.take_ended(now) {
            tracing::warn!(
                "{n} more {what} like \"{key}\" were not logged in the last {} s",
                WINDOW.as_secs()
            );
        }
    }
}

/// Calls [`flush`] once a window, for a service loop's `select!`:
/// `_ = flusher.tick() => continue`.
pub(crate) struct Flusher(tokio::time::Interval);

impl Flusher {
    pub(crate) fn new() -> Flusher {
        Flusher(tokio::time::interval(WINDOW))
    }

    pub(crate) async fn tick(&mut self) {
        self.0.tick().await;
        flush();
    }
}

/// `limited!(LIMITER, LEVEL, "key", "format", args...)`: logs at `LEVEL` unless `LIMITER`
/// has had enough lines of kind "key" in this window; mentions how many it left out before.
macro_rules! limited {
    ($limiter:expr, $level:expr, $key:expr, $($arg:tt)+) => {
        if let Some(n) = $limiter.check($key, std::time::Instant::now()) {
            if n > 0 {
                tracing::event!(
                    $level,
                    "{} ({n} more like it were not logged in the previous {} s)",
                    format_args!($($arg)+),
                    $crate::lograte::WINDOW.as_secs()
                );
            } else {
                tracing::event!($level, $($arg)+);
            }
        }
    };
}

/// A rate-limited warning: `warn_limited!("key", "format", args...)`.
macro_rules! warn_limited {
    ($key:expr, $($arg:tt)+) => {
        $crate::lograte::limited!($crate::lograte::WARNINGS, tracing::Level::WARN, $key, $($arg)+)
    };
}

/// A rate-limited error: `error_limited!("key", "format", args...)`.
macro_rules! error_limited {
    ($key:expr, $($arg:tt)+) => {
        $crate::lograte::limited!($crate::lograte::WARNINGS, tracing::Level::ERROR, $key, $($arg)+)
    };
}

/// A rate-limited info line about a client's packet.
macro_rules! info_limited {
    ($key:expr, $($arg:tt)+) => {
        $crate::lograte::limited!($crate::lograte::WARNINGS, tracing::Level::INFO, $key, $($arg)+)
    };
}

pub(crate) use {error_limited, info_limited, limited, warn_limited};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_counted_and_reported() {
        let l = Limiter::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let printed: Vec<_> = (0..1000).filter_map(|_| l.check("flood", at(1))).collect();
        assert_eq!(printed, vec![0, 0, 0], "three lines, then silence");
        assert_eq!(l.check("other", at(1)), Some(0), "kinds are limited apart");
        assert!(l.take_ended(at(5)).is_empty(), "window still running");
        // The next line after the window says how many were left out.
        assert_eq!(l.check("flood", at(11)), Some(997));
        for _ in 0..10 {
            l.check("flood", at(12));
        }
        // With no further line of that kind, flushing reports the count once.
        assert_eq!(l.take_ended(at(30)), vec![("flood", 8)]);
        assert!(l.take_ended(at(60)).is_empty());
    }
}
