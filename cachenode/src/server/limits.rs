//! The node's load limits: how many requests it works on at once, how
//! many origin fetches run at once, and how fast one client may ask.
//!
//! Without them every GET for a random valid id cost a blocking thread
//! and an origin request, so any client on the AZ network could turn the
//! node into an amplifier against the origin. Requests over a limit are
//! refused at once (503 or 429 with `Retry-After`) rather than queued:
//! a queue would only move the unbounded part elsewhere, and the client
//! fails over to the next node anyway.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::Deserialize;

/// The node's load limits (`[node.limits]` in the tier configuration).
///
/// ```toml
/// max_in_flight = 512
/// max_origin_fetches = 64
/// client_rate = 5000.0
/// client_burst = 10000.0
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeLimits {
    /// Chunk requests worked on at once; one more is answered 503 at
    /// once. At least 1.
    pub max_in_flight: usize,
    /// Origin fetches (and origin lookups of `HEAD`) running at once;
    /// admitted requests past it wait for a turn. At least 1.
    pub max_origin_fetches: usize,
    /// Requests per second one client (an IPv4 address, or an IPv6 /64)
    /// may make on average; past it the answer is 429. 0 turns the
    /// per-client limit off.
    pub client_rate: f64,
    /// How many requests a client may make at once after being idle
    /// (the bucket's size). At least 1 when `client_rate` is on.
    pub client_burst: f64,
    /// Clients whose buckets are remembered; past it the fullest are
    /// forgotten first (a forgotten client starts with a full bucket), so
    /// many addresses cost bounded memory.
    pub max_clients: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        // Sized for a node serving a few hundred instances that each read
        // up to hundreds of chunks a second when they boot.
        Self {
            max_in_flight: 512,
            max_origin_fetches: 64,
            client_rate: 5000.0,
            client_burst: 10_000.0,
            max_clients: 65_536,
        }
    }
}

/// Limits that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// A limit is out of its range.
    #[error("cache node limit `{name}` = {value}: {why}")]
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// Its value, as written.
        value: String,
        /// What it must be.
        why: &'static str,
    },
}

impl NodeLimits {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let bad = |name, value: String, why| Err(LimitsError::OutOfRange { name, value, why });
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "0".into(), "must be at least 1");
        }
        if self.max_origin_fetches == 0 {
            return bad("max_origin_fetches", "0".into(), "must be at least 1");
        }
        if !self.client_rate.is_finite() || self.client_rate < 0.0 {
            return bad(
                "client_rate",
                self.client_rate.to_string(),
                "must be a number of requests per second, 0 or more",
            );
        }
        if self.client_rate > 0.0 && !(self.client_burst.is_finite() && self.client_burst >= 1.0) {
            return bad(
                "client_burst",
                self.client_burst.to_string(),
                "must be at least 1 when client_rate is on",
            );
        }
        if self.max_clients == 0 {
            return bad("max_clients", "0".into(), "must be at least 1");
        }
        Ok(())
    }
}

/// Whom a bucket belongs to: an IPv4 address, or the /64 of an IPv6
/// address (one host usually holds a whole /64, so per-address buckets
/// would let it mint new clients at will).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by client, bounded in number.
#[derive(Debug)]
pub(super) struct RateLimiter {
    rate: f64,
    burst: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub(super) fn new(limits: &NodeLimits) -> Self {
        Self {
            rate: limits.client_rate,
            burst: limits.client_burst,
            max_clients: limits.max_clients,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `ip`'s bucket at `now`: `Ok` if there was one,
    /// else how many whole seconds until there is (at least 1).
    pub(super) fn take(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let key = client_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(&key) && buckets.len() >= self.max_clients {
            self.forget_some(&mut buckets, now);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            // Saturating float-to-int cast: a huge wait is u64::MAX.
            Err((wait.ceil() as u64).max(1))
        }
    }

    /// Makes room for one more client: forgets the clients whose buckets
    /// have refilled (forgetting them changes nothing), and if none has,
    /// the one idle longest.
    fn forget_some(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if buckets.len() >= self.max_clients {
            let oldest = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                buckets.remove(&oldest);
            }
        }
    }

    /// Clients remembered.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(rate: f64, burst: f64, max_clients: usize) -> RateLimiter {
        RateLimiter::new(&NodeLimits {
            client_rate: rate,
            client_burst: burst,
            max_clients,
            ..NodeLimits::default()
        })
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = limiter(2.0, 3.0, 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take(ip, t0), Ok(()));
        }
        assert_eq!(l.take(ip, t0), Err(1));
        // Half a second refills one token at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.take(ip, t1), Ok(()));
        assert!(l.take(ip, t1).is_err());
        // Another client has its own bucket.
        assert_eq!(l.take("10.0.0.2".parse().unwrap(), t1), Ok(()));
    }

    #[test]
    fn rate_zero_is_off() {
        let l = limiter(0.0, 0.0, 1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(l.take(ip, now), Ok(()));
        }
        assert_eq!(l.clients(), 0);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client() {
        let l = limiter(1.0, 1.0, 10);
        let now = Instant::now();
        assert_eq!(l.take("2001:db8::1".parse().unwrap(), now), Ok(()));
        assert!(
            l.take("2001:db8::ffff:1234".parse().unwrap(), now).is_err(),
            "a second address of the same /64 got a bucket of its own"
        );
        assert_eq!(l.take("2001:db8:0:1::1".parse().unwrap(), now), Ok(()));
        // An IPv4-mapped address is its IPv4 address.
        assert_eq!(l.take("10.0.0.9".parse().unwrap(), now), Ok(()));
        assert!(l.take("::ffff:10.0.0.9".parse().unwrap(), now).is_err());
    }

    #[test]
    fn many_clients_cost_bounded_memory() {
        let l = limiter(1.0, 2.0, 16);
        let now = Instant::now();
        for n in 0..10_000u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            assert_eq!(l.take(ip, now), Ok(()));
            assert!(l.clients() <= 16, "{} clients remembered", l.clients());
        }
    }

    #[test]
    fn unusable_limits_are_refused_by_name() {
        for (limits, name) in [
            (
                NodeLimits {
                    max_in_flight: 0,
                    ..NodeLimits::default()
                },
                "max_in_flight",
            ),
            (
                NodeLimits {
                    max_origin_fetches: 0,
                    ..NodeLimits::default()
                },
                "max_origin_fetches",
            ),
            (
                NodeLimits {
                    client_rate: f64::NAN,
                    ..NodeLimits::default()
                },
                "client_rate",
            ),
            (
                NodeLimits {
                    client_burst: 0.5,
                    ..NodeLimits::default()
                },
                "client_burst",
            ),
        ] {
            let e = limits.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
        NodeLimits::default().validate().unwrap();
    }
}
