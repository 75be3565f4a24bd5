//! Admission of new TCP connections before their TLS handshake.
//!
//! A connection that never starts TLS costs the master a socket and a
//! handshake slot until [`crate::tls::HANDSHAKE_TIMEOUT`]. So that one
//! client holding thousands of idle connections cannot make the master
//! unreachable for everyone else:
//! - each source address may have at most [`MAX_PER_SOURCE`] handshakes in
//!   progress; further connections from it are closed at once;
//! - under pressure (more than [`PRESSURE`] handshakes in progress) the
//!   pre-handshake timeout drops to [`PRESSURED_TIMEOUT`];
//! - the last [`RESERVE`] handshake slots are kept for sources that have
//!   no handshake in progress, so a new client (an established agent
//!   reconnecting, a host asking the CA) still gets one.
//!
//! Established connections are not counted: they are past this point.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Handshakes in progress from one source address.
pub const MAX_PER_SOURCE: usize = 64;
/// Handshakes in progress (all sources) above which timeouts shorten.
pub const PRESSURE: usize = 256;
/// The pre-handshake timeout under pressure.
pub const PRESSURED_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshake slots kept for sources with none in progress.
pub const RESERVE: usize = 64;

/// Counts handshakes in progress, per source and in total.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Mutex<Counts>>,
    capacity: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// A handshake slot; released when dropped.
pub struct Slot {
    inner: Arc<Mutex<Counts>>,
    ip: IpAddr,
    /// The timeout this handshake gets.
    pub timeout: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its source already has [`MAX_PER_SOURCE`] handshakes in progress.
    PerSource,
    /// Only the reserve is left and its source already has handshakes.
    Reserve,
    /// No slot at all.
    Full,
}

impl Admission {
    /// `capacity`: handshakes in progress at most (all sources).
    pub fn new(capacity: usize) -> Admission {
        Admission {
            inner: Arc::new(Mutex::new(Counts::default())),
            capacity,
        }
    }

    /// Admits a connection from `ip` whose normal timeout is `normal`.
    pub fn admit(&self, ip: IpAddr, normal: Duration) -> Result<Slot, Refused> {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mine = c.per_source.get(&ip).copied().unwrap_or(0);
        if c.total >= self.capacity {
            return Err(Refused::Full);
        }
        if mine >= MAX_PER_SOURCE {
            return Err(Refused::PerSource);
        }
        if mine > 0 && c.total >= self.capacity.saturating_sub(RESERVE) {
            return Err(Refused::Reserve);
        }
        c.total += 1;
        *c.per_source.entry(ip).or_default() += 1;
        let timeout = if c.total > PRESSURE {
            PRESSURED_TIMEOUT.min(normal)
        } else {
            normal
        };
        Ok(Slot {
            inner: self.inner.clone(),
            ip,
            timeout,
        })
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// Logs refused connections at most once every 10 s, with how many were
/// refused since the last line (a flood must not flood the log too).
pub struct RefusalLog {
    /// Which listener (in the log line): "" for the gRPC one.
    what: &'static str,
    logged: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    pub fn new(what: &'static str) -> RefusalLog {
        RefusalLog {
            what,
            logged: None,
            since: 0,
        }
    }

    /// Counts a connection from `peer` closed for `why`.
    pub fn refused(&mut self, peer: SocketAddr, why: Refused, admission: &Admission) {
        self.since += 1;
        if self
            .logged
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        tracing::warn!(
            peer = %peer,
            refused = self.since,
            in_progress = admission.in_progress(),
            "{}connections closed before their TLS handshake ({why:?}): too many in progress",
            self.what
        );
        self.logged = Some(Instant::now());
        self.since = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_every_slot() {
        let a = Admission::new(400);
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        let normal = Duration::from_secs(10);
        let mut held = Vec::new();
        for _ in 0..MAX_PER_SOURCE {
            held.push(a.admit(flood, normal).unwrap());
        }
        assert_eq!(a.admit(flood, normal).err(), Some(Refused::PerSource));
        // Many sources fill up to the reserve; then only new sources get in.
        for i in 0..(400 - RESERVE - MAX_PER_SOURCE) {
            let ip: IpAddr = format!("10.1.{}.{}", i / 200, i % 200).parse().unwrap();
            held.push(a.admit(ip, normal).unwrap());
        }
        assert_eq!(
            a.admit("10.1.0.0".parse().unwrap(), normal).err(),
            Some(Refused::Reserve)
        );
        let fresh = a.admit("10.9.9.9".parse().unwrap(), normal).unwrap();
        // Under pressure the timeout is short.
        assert_eq!(fresh.timeout, PRESSURED_TIMEOUT);
        drop(fresh);
        let n = a.in_progress();
        held.clear();
        assert_eq!(a.in_progress(), 0, "{n}");
        assert_eq!(a.admit(flood, normal).unwrap().timeout, normal);
    }
}
