//! Time as an input: the coordinator's logic takes `now` (Unix milliseconds) from a
//! [`Clock`] handed down, so tests can drive it.

use std::sync::Arc;

/// Current time in Unix milliseconds.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system's wall clock.
pub fn system() -> Clock {
    Arc::new(|| {
        let now = time::OffsetDateTime::now_utc();
        (now.unix_timestamp_nanos() / 1_000_000) as i64
    })
}
