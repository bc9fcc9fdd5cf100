//! Who may hold a handshake slot: inbound connections that have not
//! finished their handshake (Noise + Yamux for libp2p, the 68-byte
//! handshake for BitTorrent), bounded in all and per remote IP.
//!
//! A host that opens connections and never speaks must not lock honest
//! peers out. So a new connection is always admitted, and room is made by
//! dropping the oldest pending one: of the same IP when that IP is at its
//! share, else of anyone. An honest handshake takes milliseconds, so the
//! oldest pending connections are the idle ones; a flood from one address
//! can only ever hold its own share of the slots, and churns through it.
//!
//! Pure: the transports hand it each connection with a handle to abort
//! it, and carry out the evictions it returns.

use std::collections::VecDeque;
use std::net::IpAddr;

/// The address a share is counted by: an IPv4 address (an IPv4-mapped
/// IPv6 one too), or an IPv6 address's /64, which one host is usually
/// given whole.
pub fn share_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

/// Handshake slots: in all and per remote IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    pub max_pending: usize,
    /// `None`: no share per IP (a testnet, where every node is 127.0.0.1).
    pub max_pending_per_ip: Option<usize>,
}

/// Incoming connections still in their handshake at once. Default 64.
pub const DEFAULT_MAX_PENDING: usize = 64;
/// Of them, from one remote IP. Default 8.
pub const DEFAULT_MAX_PENDING_PER_IP: usize = 8;

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_pending: DEFAULT_MAX_PENDING,
            max_pending_per_ip: Some(DEFAULT_MAX_PENDING_PER_IP),
        }
    }
}

/// The pending connections, oldest first, each with the handle its
/// transport aborts it by.
#[derive(Debug)]
pub struct Pending<H> {
    config: AdmissionConfig,
    next_id: u64,
    queue: VecDeque<(u64, IpAddr, H)>,
}

impl<H> Pending<H> {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config: AdmissionConfig {
                max_pending: config.max_pending.max(1),
                max_pending_per_ip: config.max_pending_per_ip.map(|n| n.max(1)),
            },
            next_id: 0,
            queue: VecDeque::new(),
        }
    }

    /// Admits a connection from `ip`: its id (for [`Self::done`]) and the
    /// handles of the connections dropped to make room, to abort.
    pub fn admit(&mut self, ip: IpAddr, handle: H) -> (u64, Vec<H>) {
        let ip = share_of(ip);
        let mut evicted = Vec::new();
        if let Some(share) = self.config.max_pending_per_ip {
            let mut same: usize = self.queue.iter().filter(|(_, i, _)| *i == ip).count();
            while same >= share {
                let at = self
                    .queue
                    .iter()
                    .position(|(_, i, _)| *i == ip)
                    .expect("counted");
                evicted.extend(self.queue.remove(at).map(|(_, _, h)| h));
                same -= 1;
            }
        }
        while self.queue.len() >= self.config.max_pending {
            evicted.extend(self.queue.pop_front().map(|(_, _, h)| h));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back((id, ip, handle));
        (id, evicted)
    }

    /// Connection `id` finished its handshake, failed, or was dropped.
    pub fn done(&mut self, id: u64) {
        if let Some(at) = self.queue.iter().position(|(i, _, _)| *i == id) {
            self.queue.remove(at);
        }
    }

    /// Connections pending now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Of them, from `ip` (its share: an IPv6 address's /64).
    pub fn from(&self, ip: IpAddr) -> usize {
        let ip = share_of(ip);
        self.queue.iter().filter(|(_, i, _)| *i == ip).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_flood_from_one_address_churns_through_its_own_share() {
        let mut p = Pending::new(AdmissionConfig {
            max_pending: 10,
            max_pending_per_ip: Some(3),
        });
        let honest = p.admit(ip(1), 1000).0;
        let mut dropped = Vec::new();
        for i in 0..100 {
            let (_, evicted) = p.admit(ip(2), i);
            dropped.extend(evicted);
        }
        // The flood holds 3 slots, its newest; the honest one keeps its.
        assert_eq!(p.from(ip(2)), 3);
        assert_eq!(p.from(ip(1)), 1);
        assert_eq!(dropped, (0..97).collect::<Vec<_>>());
        p.done(honest);
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn an_ipv6_host_has_one_share_for_its_64() {
        let mut p = Pending::new(AdmissionConfig {
            max_pending: 10,
            max_pending_per_ip: Some(2),
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        p.admit(a, 'a');
        p.admit(b, 'b');
        assert_eq!(p.admit(a, 'c').1, vec!['a'], "the same /64");
        assert!(p.admit(other, 'd').1.is_empty(), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(share_of(mapped), ip(1));
    }

    #[test]
    fn when_full_the_oldest_of_anyone_goes_first() {
        let mut p = Pending::new(AdmissionConfig {
            max_pending: 3,
            max_pending_per_ip: None,
        });
        let a = p.admit(ip(1), 'a').0;
        p.admit(ip(2), 'b');
        p.admit(ip(3), 'c');
        assert_eq!(p.admit(ip(4), 'd').1, vec!['a']);
        // A finished one frees its slot: nobody is dropped.
        p.done(a); // gone already: nothing happens
        let (_, none) = p.admit(ip(5), 'e');
        assert_eq!(none, vec!['b']);
        assert_eq!(p.len(), 3);
    }

    proptest::proptest! {
        /// Never more pending than the bounds, in all and per IP; every
        /// connection admitted is either pending, done or evicted once.
        #[test]
        fn the_bounds_hold(ops in proptest::collection::vec((0u8..4, proptest::bool::ANY), 1..300)) {
            let config = AdmissionConfig { max_pending: 5, max_pending_per_ip: Some(2) };
            let mut p = Pending::new(config);
            let mut live: Vec<u64> = Vec::new();
            let mut evicted = 0usize;
            let mut done = 0usize;
            let mut admitted = 0usize;
            for (who, finish) in ops {
                if finish && !live.is_empty() {
                    let id = live.remove(0);
                    let before = p.len();
                    p.done(id);
                    done += before - p.len();
                } else {
                    let (id, out) = p.admit(ip(who), ());
                    admitted += 1;
                    evicted += out.len();
                    live.push(id);
                }
                proptest::prop_assert!(p.len() <= 5);
                for i in 0..4 {
                    proptest::prop_assert!(p.from(ip(i)) <= 2);
                }
                proptest::prop_assert_eq!(admitted, p.len() + evicted + done);
            }
        }
    }
}
