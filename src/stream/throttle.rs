//! Failed logins slow down the source that makes them, not the account they aim at (RFC 6120
//! §6.4.5 asks for limits on retries). A source is an IPv4 address or an IPv6 /64, the
//! smallest network one subscriber is usually given. Failures are counted per account and
//! source, and per source across accounts; the account's owner, logging in from elsewhere,
//! never meets a stranger's count.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Where a connection comes from, for limits per address: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    /// The first 64 bits of the address.
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        // An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d.
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => Source::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

/// The limits, from `[auth]`; a limit of 0 is off.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Failures for one account from one source.
    pub per_account: u32,
    /// Failures from one source, whatever the accounts.
    pub per_source: u32,
    pub window: Duration,
}

impl Limits {
    pub fn of(auth: &crate::config::AuthConfig) -> Limits {
        Limits {
            per_account: auth.max_failures,
            per_source: auth.max_failures_per_source,
            window: Duration::from_secs(auth.throttle_window_secs),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Source(Source),
    /// The account is kept as a keyed hash: a name can be a kilobyte long, and only equality
    /// matters here.
    Account(Source, u64),
}

/// Counted failures; past `MAX_ENTRIES` the expired ones go, then the oldest half.
pub struct Throttle {
    failures: HashMap<Key, (u32, Instant)>,
    hasher: std::collections::hash_map::RandomState,
    max_entries: usize,
}

/// About 5 MB at most: a source that cycles through addresses can make only this many.
const MAX_ENTRIES: usize = 100_000;

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::with_capacity(MAX_ENTRIES)
    }
}

impl Throttle {
    fn with_capacity(max_entries: usize) -> Throttle {
        Throttle {
            failures: HashMap::new(),
            hasher: Default::default(),
            max_entries,
        }
    }

    fn account(&self, source: Source, user: &str) -> Key {
        Key::Account(source, self.hasher.hash_one(user))
    }

    /// Whether `key` has `max` failures in its window; forgets a window that has passed.
    fn over(&mut self, key: Key, max: u32, window: Duration, now: Instant) -> bool {
        if max == 0 {
            return false;
        }
        match self.failures.get(&key) {
            Some((_, since)) if now.saturating_duration_since(*since) > window => {
                self.failures.remove(&key);
                false
            }
            Some((n, _)) => *n >= max,
            None => false,
        }
    }

    /// Whether `source` may not try at all for now.
    pub fn source_blocked(&mut self, source: Source, limits: &Limits, now: Instant) -> bool {
        self.over(Key::Source(source), limits.per_source, limits.window, now)
    }

    /// Whether `source` may not log in as `user` for now (whether `user` exists or not).
    pub fn blocked(&mut self, source: Source, user: &str, limits: &Limits, now: Instant) -> bool {
        let key = self.account(source, user);
        self.source_blocked(source, limits, now)
            || self.over(key, limits.per_account, limits.window, now)
    }

    /// Counts a failed or aborted attempt of `source`, as `user` when the attempt named one.
    pub fn fail(&mut self, source: Source, user: Option<&str>, limits: &Limits, now: Instant) {
        if limits.per_source > 0 {
            self.count(Key::Source(source), limits.window, now);
        }
        if let Some(user) = user
            && limits.per_account > 0
        {
            let key = self.account(source, user);
            self.count(key, limits.window, now);
        }
    }

    fn count(&mut self, key: Key, window: Duration, now: Instant) {
        if self.failures.len() >= self.max_entries && !self.failures.contains_key(&key) {
            self.make_room(window, now);
        }
        let e = self.failures.entry(key).or_insert((0, now));
        if now.saturating_duration_since(e.1) > window {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
    }

    /// Drops the expired windows, and if that is not enough, the older half of the rest: a
    /// flood of sources must not grow this without end, and the newest counts matter most.
    fn make_room(&mut self, window: Duration, now: Instant) {
        self.failures
            .retain(|_, (_, since)| now.saturating_duration_since(*since) <= window);
        let keep = self.max_entries / 2;
        if self.failures.len() <= keep {
            return;
        }
        let mut starts: Vec<Instant> = self.failures.values().map(|(_, s)| *s).collect();
        let cut = starts.len() - keep;
        let (_, &mut oldest_kept, _) = starts.select_nth_unstable(cut);
        // Many windows can start at the same instant: of those, only as many as fit stay.
        let mut ties = keep
            - starts[cut + 1..]
                .iter()
                .filter(|s| **s > oldest_kept)
                .count();
        self.failures
            .retain(|_, (_, since)| match (*since).cmp(&oldest_kept) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal if ties > 0 => {
                    ties -= 1;
                    true
                }
                _ => false,
            });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_account: 3,
        per_source: 5,
        window: Duration::from_secs(300),
    };

    fn src(ip: &str) -> Source {
        Source::from(ip.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        assert_eq!(
            src("2001:db8:1:2::1"),
            src("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_ne!(src("192.0.2.1"), src("192.0.2.2"));
        assert_eq!(src("::ffff:192.0.2.1"), src("192.0.2.1"));
        // ::1 and the IPv4 address 0.0.0.1 are different sources.
        assert_ne!(src("::1"), src("0.0.0.1"));
    }

    #[test]
    fn a_strangers_failures_do_not_block_the_owner() {
        let mut t = Throttle::default();
        let now = Instant::now();
        let (stranger, owner) = (src("192.0.2.66"), src("198.51.100.7"));
        for _ in 0..LIMITS.per_account {
            assert!(!t.blocked(stranger, "alice", &LIMITS, now));
            t.fail(stranger, Some("alice"), &LIMITS, now);
        }
        assert!(t.blocked(stranger, "alice", &LIMITS, now));
        assert!(!t.blocked(owner, "alice", &LIMITS, now));
        // Other accounts from the same source are not blocked until the source's own limit.
        assert!(!t.blocked(stranger, "bob", &LIMITS, now));
        // Ten addresses failing once each block nobody (the shape of the finding).
        for i in 0..10 {
            let s = src(&format!("203.0.113.{i}"));
            t.fail(s, Some("alice"), &LIMITS, now);
            assert!(!t.blocked(s, "alice", &LIMITS, now));
        }
        assert!(!t.blocked(owner, "alice", &LIMITS, now));
    }

    #[test]
    fn one_64_is_one_source() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for i in 0..LIMITS.per_source {
            let s = src(&format!("2001:db8:0:1::{:x}", i + 1));
            assert!(!t.source_blocked(s, &LIMITS, now));
            t.fail(s, Some(&format!("user{i}")), &LIMITS, now);
        }
        assert!(t.source_blocked(src("2001:db8:0:1::beef"), &LIMITS, now));
        assert!(t.blocked(src("2001:db8:0:1::beef"), "anyone", &LIMITS, now));
        assert!(!t.source_blocked(src("2001:db8:0:2::1"), &LIMITS, now));
    }

    #[test]
    fn failures_without_an_account_count_for_the_source() {
        let mut t = Throttle::default();
        let now = Instant::now();
        let s = src("192.0.2.9");
        for _ in 0..LIMITS.per_source {
            t.fail(s, None, &LIMITS, now);
        }
        assert!(t.source_blocked(s, &LIMITS, now));
        assert!(t.blocked(s, "alice", &LIMITS, now));
    }

    #[test]
    fn the_window_passes() {
        let mut t = Throttle::default();
        let now = Instant::now();
        let s = src("192.0.2.9");
        for _ in 0..LIMITS.per_source {
            t.fail(s, Some("alice"), &LIMITS, now);
        }
        assert!(t.blocked(s, "alice", &LIMITS, now + LIMITS.window));
        let later = now + LIMITS.window + Duration::from_secs(1);
        assert!(!t.blocked(s, "alice", &LIMITS, later));
        // A failure after the window starts a new count.
        t.fail(s, Some("alice"), &LIMITS, later);
        assert!(!t.blocked(s, "alice", &LIMITS, later));
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let mut t = Throttle::default();
        let now = Instant::now();
        let off = Limits {
            per_account: 0,
            per_source: 0,
            ..LIMITS
        };
        let s = src("192.0.2.9");
        for _ in 0..100 {
            t.fail(s, Some("alice"), &off, now);
        }
        assert!(!t.blocked(s, "alice", &off, now));
        assert_eq!(t.len(), 0, "nothing is counted for limits that are off");
    }

    #[test]
    fn memory_is_bounded_and_recent_counts_survive() {
        let mut t = Throttle::with_capacity(1000);
        let start = Instant::now();
        let limits = Limits {
            per_account: 1,
            per_source: 1,
            window: Duration::from_secs(3600),
        };
        // A flood from ever new /64s, one a millisecond, all within the window.
        for i in 0..10_000u64 {
            let now = start + Duration::from_millis(i);
            t.fail(Source::V6(i), Some("alice"), &limits, now);
            assert!(t.len() <= 1000, "{} entries", t.len());
        }
        let now = start + Duration::from_millis(10_000);
        assert!(t.blocked(Source::V6(9_999), "alice", &limits, now));
        // Expired entries go first.
        let much_later = now + Duration::from_secs(7200);
        t.fail(Source::V4([192, 0, 2, 1]), None, &limits, much_later);
        for i in 0..998u64 {
            t.fail(Source::V6(100_000 + i), None, &limits, much_later);
        }
        assert_eq!(t.len(), 999);
        assert!(t.source_blocked(Source::V4([192, 0, 2, 1]), &limits, much_later));
        // A flood within one instant still keeps the table bounded, and half of it.
        for i in 0..5000u64 {
            t.fail(Source::V6(200_000 + i), None, &limits, much_later);
            assert!(t.len() <= 1000, "{} entries", t.len());
        }
        assert!(t.len() >= 500);
    }
}
