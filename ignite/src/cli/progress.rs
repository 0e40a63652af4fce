//! Progress bars with throughput, only when stderr is a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Runs `work` with a byte counter; shows it as a bar (or spinner, without `total`).
pub fn with_progress<T>(total: Option<u64>, label: &str, work: impl FnOnce(&AtomicU64) -> T) -> T {
    let counter = AtomicU64::new(0);
    if !std::io::stderr().is_terminal() {
        return work(&counter);
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}")
                .expect("template"),
        ),
    };
    bar.set_message(label.to_string());
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while done.load(Ordering::Relaxed) == 0 {
                bar.set_position(counter.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = work(&counter);
        done.store(1, Ordering::Relaxed);
        bar.finish_and_clear();
        out
    })
}
