//! Per-client and per-port request rate limits (token buckets) and the knobs that bound what
//! a hostile segment can make the DHCP engine hold.
//!
//! A bucket holds up to `burst` tokens, refills `per_minute` tokens a minute, and each
//! request takes one; a request finding the bucket empty is dropped. Buckets are kept for at
//! most `max_tracked` keys: full buckets are forgotten (they are the same as a new one), and
//! when the table is still full a new key passes untracked rather than shutting out a
//! client the limit knows nothing about.

use std::collections::HashMap;
use std::hash::Hash;

use dhcproto::v4::{relay, DhcpOption, Message, OptionCode};

use crate::error::{Error, Result};
use crate::MacAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests accepted at once.
    pub burst: u32,
    /// Sustained requests a minute.
    pub per_minute: u32,
}

/// What a client on the segment may make the engine do; see the crate README's threat
/// model for what these limits do and do not stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpLimits {
    /// Requests per client MAC (chaddr). Stops one client (or a stuck one) from flooding;
    /// an attacker who forges a new MAC per packet is not slowed by it.
    pub per_mac: Option<RateLimit>,
    /// Requests per switch port, for requests a relay agent forwards with option 82
    /// (giaddr + circuit id + remote id): forged MACs behind one port share one budget.
    pub per_port: Option<RateLimit>,
    /// How long an offer keeps its address for the client while other addresses are free.
    pub offer_hold_secs: u64,
    /// Once no address is free, an offer at least this old (and not yet REQUESTed) is
    /// given to the next new client; forged DISCOVERs then cannot keep the pool locked.
    pub offer_hold_short_secs: u64,
    /// Most keys (MACs, ports) each rate limit tracks.
    pub max_tracked: usize,
}

impl Default for DhcpLimits {
    fn default() -> Self {
        DhcpLimits {
            // A PXE boot is three DORAs (firmware, iPXE, installer) plus renewals; a DHCP
            // client retries DISCOVER every few seconds. 20 at once, then one a second.
            per_mac: Some(RateLimit {
                burst: 20,
                per_minute: 60,
            }),
            // A port may have a hypervisor with many guests behind it.
            per_port: Some(RateLimit {
                burst: 200,
                per_minute: 1200,
            }),
            offer_hold_secs: 30,
            offer_hold_short_secs: 2,
            max_tracked: 65536,
        }
    }
}

impl DhcpLimits {
    pub fn validate(&self) -> Result<()> {
        for (name, l) in [("per-MAC", self.per_mac), ("per-port", self.per_port)] {
            if let Some(l) = l {
                if l.burst == 0 || l.per_minute == 0 {
                    return Err(Error::Config(format!(
                        "DHCP {name} rate limit {}/{} per minute would refuse every request; \
                         give a burst and a rate of at least 1, or turn the limit off",
                        l.burst, l.per_minute
                    )));
                }
            }
        }
        if self.offer_hold_short_secs > self.offer_hold_secs {
            return Err(Error::Config(format!(
                "DHCP offer hold when the pool is short ({} s) is longer than the normal hold ({} s); \
                 make it shorter",
                self.offer_hold_short_secs, self.offer_hold_secs
            )));
        }
        if self.max_tracked == 0 {
            return Err(Error::Config(
                "DHCP rate limits must track at least one client".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: u64,
}

impl Bucket {
    fn refilled(&self, l: RateLimit, now: u64) -> f64 {
        let gained = now.saturating_sub(self.at) as f64 * f64::from(l.per_minute) / 60.0;
        (self.tokens + gained).min(f64::from(l.burst))
    }
}

/// Token buckets by key, at most `cap` of them.
pub(crate) struct Buckets<K> {
    map: HashMap<K, Bucket>,
    cap: usize,
    /// When the table was last swept of full buckets (at most once a second).
    swept: Option<u64>,
}

impl<K: Hash + Eq> Buckets<K> {
    pub(crate) fn new(cap: usize) -> Buckets<K> {
        Buckets {
            map: HashMap::new(),
            cap,
            swept: None,
        }
    }

    /// Takes one token for `key`; `false` if it has none left.
    pub(crate) fn take(&mut self, key: K, l: RateLimit, now: u64) -> bool {
        if let Some(b) = self.map.get_mut(&key) {
            let t = b.refilled(l, now);
            *b = Bucket {
                tokens: if t >= 1.0 { t - 1.0 } else { t },
                at: now,
            };
            return t >= 1.0;
        }
        if self.map.len() >= self.cap && self.swept != Some(now) {
            self.swept = Some(now);
            self.map
                .retain(|_, b| b.refilled(l, now) < f64::from(l.burst));
        }
        if self.map.len() < self.cap {
            self.map.insert(
                key,
                Bucket {
                    tokens: f64::from(l.burst) - 1.0,
                    at: now,
                },
            );
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// The switch port a relayed request names: giaddr, circuit id and remote id of option 82.
/// `None` for requests not relayed, or relayed without option 82.
pub(crate) fn relay_port(req: &Message) -> Option<Vec<u8>> {
    if req.giaddr().is_unspecified() {
        return None;
    }
    let Some(DhcpOption::RelayAgentInformation(info)) =
        req.opts().get(OptionCode::RelayAgentInformation)
    else {
        return None;
    };
    let mut key = req.giaddr().octets().to_vec();
    for code in [
        relay::RelayCode::AgentCircuitId,
        relay::RelayCode::AgentRemoteId,
    ] {
        match info.get(code) {
            Some(relay::RelayInfo::AgentCircuitId(v) | relay::RelayInfo::AgentRemoteId(v)) => {
                key.push(v.len().min(255) as u8);
                key.extend_from_slice(v);
            }
            _ => key.push(0),
        }
    }
    Some(key)
}

/// Both rate limits of one engine.
pub(crate) struct Limiter {
    macs: Buckets<MacAddr>,
    ports: Buckets<Vec<u8>>,
}

impl Limiter {
    pub(crate) fn new(limits: &DhcpLimits) -> Limiter {
        Limiter {
            macs: Buckets::new(limits.max_tracked),
            ports: Buckets::new(limits.max_tracked),
        }
    }

    /// Whether `req` from `mac` is within the limits; `Err` names the limit it broke.
    pub(crate) fn admit(
        &mut self,
        limits: &DhcpLimits,
        req: &Message,
        mac: MacAddr,
        now: u64,
    ) -> std::result::Result<(), &'static str> {
        if let (Some(l), Some(port)) = (limits.per_port, relay_port(req)) {
            if !self.ports.take(port, l, now) {
                return Err("per-port");
            }
        }
        if let Some(l) = limits.per_mac {
            if !self.macs.take(mac, l, now) {
                return Err("per-MAC");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: RateLimit = RateLimit {
        burst: 3,
        per_minute: 60,
    };

    #[test]
    fn burst_then_refill() {
        let mut b = Buckets::new(10);
        let took: Vec<bool> = (0..5).map(|_| b.take(1u8, L, 100)).collect();
        assert_eq!(took, [true, true, true, false, false]);
        assert!(b.take(1, L, 101), "one token a second");
        assert!(!b.take(1, L, 101));
        assert!(b.take(2, L, 101), "keys are apart");
        let took: Vec<bool> = (0..5).map(|_| b.take(1, L, 200)).collect();
        assert_eq!(
            took,
            [true, true, true, false, false],
            "refill stops at burst"
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut b = Buckets::new(100);
        for k in 0..10_000u32 {
            assert!(b.take(k, L, 100), "new keys are never refused");
            assert!(b.len() <= 100);
        }
        // Once their buckets are full again the old keys are swept out for new ones.
        for k in 10_000..10_050u32 {
            b.take(k, L, 200);
        }
        assert!(b.len() <= 100);
        for _ in 0..3 {
            b.take(10_000, L, 200);
        }
        assert!(!b.take(10_000, L, 200), "tracked again, so limited again");
    }
}
