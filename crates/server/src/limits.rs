//! Failed logins: growing delays per user name and per client address, in bounded memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Failures allowed before the first delay.
const FREE_FAILURES: u32 = 3;
/// The longest delay.
const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// A key's failures are forgotten after this long without one.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// The most keys remembered (user names and addresses together).
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// SHA-256 of the user name as typed (it may be a passphrase typed in the wrong field:
    /// never kept in clear).
    User([u8; 32]),
    Addr(IpAddr),
}

struct Failures {
    count: u32,
    last: Instant,
    until: Instant,
}

/// The failed-login record of one server.
#[derive(Default)]
pub struct Limiter {
    keys: Mutex<HashMap<Key, Failures>>,
}

fn user_key(user: &str) -> Key {
    Key::User(Sha256::digest(user.as_bytes()).into())
}

impl Limiter {
    /// Seconds to wait before `user` may try again from `addr`, if either is delayed.
    pub fn delayed(&self, user: &str, addr: IpAddr) -> Option<u64> {
        let now = Instant::now();
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        [user_key(user), Key::Addr(addr)]
            .iter()
            .filter_map(|k| keys.get(k))
            .filter(|f| f.until > now)
            .map(|f| (f.until - now).as_millis().div_ceil(1000) as u64)
            .max()
    }

    /// Records a failure; returns the failures in a row for this user name.
    pub fn failed(&self, user: &str, addr: IpAddr) -> u32 {
        let now = Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, f| f.until > now || now - f.last < Duration::from_secs(60));
            if keys.len() >= MAX_KEYS {
                // A flood from many addresses: forget the addresses (user names keep their
                // delays, and the bound on concurrent unlocks still holds).
                keys.retain(|k, _| matches!(k, Key::User(_)));
            }
        }
        let mut in_a_row = 0;
        for k in [user_key(user), Key::Addr(addr)] {
            let f = keys.entry(k).or_insert(Failures {
                count: 0,
                last: now,
                until: now,
            });
            if now - f.last > FORGET_AFTER {
                f.count = 0;
            }
            f.count += 1;
            f.last = now;
            if f.count > FREE_FAILURES {
                let exp = (f.count - FREE_FAILURES - 1).min(20);
                f.until = now + Duration::from_secs(1u64 << exp).min(MAX_DELAY);
            }
            if matches!(k, Key::User(_)) {
                in_a_row = f.count;
            }
        }
        in_a_row
    }

    /// A successful login forgets the user name's failures (not the address's).
    pub fn succeeded(&self, user: &str) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&user_key(user));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn delays_start_after_three_failures_and_grow() {
        let l = Limiter::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.delayed("bob", a), None);
            l.failed("bob", a);
        }
        assert_eq!(l.delayed("bob", a), None);
        // The fourth failure: 1 s; the fifth: 2 s; the sixth: 4 s (rounded up to seconds).
        l.failed("bob", a);
        assert_eq!(l.delayed("bob", a), Some(1));
        l.failed("bob", a);
        assert_eq!(l.delayed("bob", a), Some(2));
        l.failed("bob", a);
        assert_eq!(l.delayed("bob", a), Some(4));
        // Another address is delayed for bob's name too; another name from elsewhere is not.
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.delayed("bob", b).is_some());
        assert_eq!(l.delayed("carol", b), None);
        l.succeeded("bob");
        assert_eq!(l.delayed("bob", b), None);
        assert!(l.delayed("bob", a).is_some(), "the address stays delayed");
    }
}
