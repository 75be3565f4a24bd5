//! Handing freed heap memory back to the system after bursts of compiles.
//!
//! A burst of compiles (many nodes enrolling, a code change that compiles
//! every catalog again) allocates and frees far more than the master keeps.
//! glibc's malloc gives back only the top of each arena by itself: the
//! pages freed below it stay resident, and after the enrolment of 2,000
//! nodes about a fifth of the master's anonymous memory was such free
//! pages (issue 20: `malloc_trim(0)` from a debugger took 62 MB to 51 MB).
//!
//! The daemon's once-a-second task calls [`Releaser::tick`]: when the
//! catalog cache was used (a check-in, a compile) since the last release
//! and [`MIN_INTERVAL`] has passed, it runs the release function the
//! binary installed ([`install`]; the
//! `troupe` binary installs `malloc_trim(0)` on glibc). This library has
//! no unsafe code, so the function comes from the binary; without one
//! (tests, other allocators) nothing runs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shortest time between two releases.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

static RELEASE: OnceLock<fn()> = OnceLock::new();
static USES: AtomicU64 = AtomicU64::new(0);

/// Installs the function that gives free heap pages back to the system
/// (once; later calls are ignored).
pub fn install(release: fn()) {
    let _ = RELEASE.set(release);
}

/// A check-in used the catalog cache (a lookup or a compile: memory was
/// allocated and freed).
pub fn note_use() {
    USES.fetch_add(1, Ordering::Relaxed);
}

/// Decides when to release (owned by the daemon's periodic task).
pub struct Releaser {
    seen: u64,
    last: Option<Instant>,
}

impl Default for Releaser {
    fn default() -> Self {
        Releaser::new()
    }
}

impl Releaser {
    pub fn new() -> Releaser {
        Releaser {
            seen: USES.load(Ordering::Relaxed),
            last: None,
        }
    }

    /// Whether a release is due at `now` with `uses` counted so far (then
    /// it counts as done).
    fn due(&mut self, uses: u64, now: Instant) -> bool {
        if uses == self.seen || self.last.is_some_and(|l| now - l < MIN_INTERVAL) {
            return false;
        }
        self.seen = uses;
        self.last = Some(now);
        true
    }

    /// Releases free heap pages when the cache was used since the last
    /// release, at most every [`MIN_INTERVAL`]. Blocking (a few
    /// milliseconds): call it off the async workers.
    pub fn tick(&mut self) {
        if self.due(USES.load(Ordering::Relaxed), Instant::now())
            && let Some(release) = RELEASE.get()
        {
            release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_after_use_at_most_every_interval() {
        let mut r = Releaser {
            seen: 0,
            last: None,
        };
        let t0 = Instant::now();
        assert!(!r.due(0, t0), "nothing happened");
        assert!(r.due(3, t0));
        assert!(!r.due(3, t0 + MIN_INTERVAL), "nothing new");
        assert!(!r.due(5, t0 + Duration::from_secs(1)), "too soon");
        assert!(r.due(5, t0 + MIN_INTERVAL));
        assert!(!r.due(5, t0 + 3 * MIN_INTERVAL));
    }
}
