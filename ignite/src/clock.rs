//! The time schedules are planned by: the system clock — or, for tests that must see a
//! nightly schedule fire without waiting a night, the Unix time written in the file named by
//! `IGNITE_TEST_CLOCK` (read at every call, so a test moves time by rewriting it).

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    if let Some(path) = std::env::var_os("IGNITE_TEST_CLOCK") {
        if let Some(t) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return t;
        }
    }
    crate::state::now()
}
