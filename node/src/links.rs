//! Each connected peer's connections and how they were made, and the
//! node's reachability: kept by the swarm task, read by the API.
//!
//! A peer may have a relayed connection and, once hole punching works,
//! a direct one beside it. Piece streams go only over direct ones
//! ([`sluice_swarm::reach::DirectOnly`]), so the swarm task opens them
//! when a peer's first direct connection comes up, not its first
//! connection.

use std::collections::HashMap;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::swarm::ConnectionId;
use sluice_swarm::reach::{Path, Reachability, is_relayed};

/// A connection's address and path, as the API shows a peer's best one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    pub addr: Multiaddr,
    pub path: Path,
}

struct Link {
    id: ConnectionId,
    addr: Multiaddr,
    path: Path,
}

/// Connections by peer. Bounded by the swarm's connection limit.
#[derive(Default)]
pub(crate) struct Links {
    by_peer: HashMap<PeerId, Vec<Link>>,
}

/// What a new connection means for the piece streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Established {
    /// The peer's first direct connection: piece streams may open now.
    pub first_direct: bool,
    /// The peer's first connection of any kind (with `--relayed-pieces`,
    /// piece streams may open on a relayed one).
    pub first: bool,
    /// We are the dialing side (after any role override: in a hole
    /// punch both sides dial, and one of them acts as listener).
    pub dialer: bool,
    pub path: Path,
}

impl Links {
    /// `upnp`: the router maps a port for us now, so an inbound direct
    /// connection from outside our network came through it.
    pub(crate) fn established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
        upnp: bool,
    ) -> Established {
        let addr = endpoint.get_remote_address().clone();
        let links = self.by_peer.entry(peer).or_default();
        let had_direct = links.iter().any(|l| l.path.is_direct());
        let path = if is_relayed(&addr)
            || matches!(endpoint, ConnectedPoint::Listener { local_addr, .. } if is_relayed(local_addr))
        {
            Path::Relayed
        } else if links.iter().any(|l| l.path == Path::Relayed)
            && match endpoint {
                ConnectedPoint::Dialer { port_use, .. } => *port_use == PortUse::Reuse,
                ConnectedPoint::Listener { .. } => !had_direct,
            }
        {
            // Beside a relayed connection: DCUtR's. In a hole punch both
            // sides dial from their listening ports (TCP's simultaneous
            // open and QUIC's alike) and either dial may be the one that
            // connects, arriving at the other side as an inbound
            // connection; DCUtR itself tells only the side whose dial won.
            // Not an AutoNAT dial-back: it comes from a fresh port, or in
            // over a peer we already reach directly.
            Path::HolePunched
        } else if upnp
            && matches!(endpoint, ConnectedPoint::Listener { .. })
            && sluice_swarm::reach::is_global(&addr)
        {
            Path::Upnp
        } else {
            Path::Direct
        };
        links.push(Link { id, addr, path });
        Established {
            first: links.len() == 1,
            path,
            first_direct: path.is_direct() && !had_direct,
            dialer: matches!(
                endpoint,
                ConnectedPoint::Dialer {
                    role_override: Endpoint::Dialer,
                    ..
                }
            ),
        }
    }

    pub(crate) fn closed(&mut self, peer: PeerId, id: ConnectionId) {
        if let Some(links) = self.by_peer.get_mut(&peer) {
            links.retain(|l| l.id != id);
            if links.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// DCUtR made connection `id` (it says so after the swarm reported
    /// the connection). Whether that changed what we knew of it (taken
    /// for a plain direct one: the relayed connection closed first).
    pub(crate) fn hole_punched(&mut self, peer: PeerId, id: ConnectionId) -> bool {
        self.by_peer
            .get_mut(&peer)
            .and_then(|ls| ls.iter_mut().find(|l| l.id == id))
            .is_some_and(|link| {
                std::mem::replace(&mut link.path, Path::HolePunched) != Path::HolePunched
            })
    }

    /// Whether piece streams may go to `peer` now: over a direct
    /// connection, or any with `relayed_ok`.
    pub(crate) fn can_carry_pieces(&self, peer: &PeerId, relayed_ok: bool) -> bool {
        self.by_peer
            .get(peer)
            .is_some_and(|ls| ls.iter().any(|l| relayed_ok || l.path.is_direct()))
    }

    /// The connection the API shows for `peer`: a direct one first, and
    /// among those the one that says most about how the two met (a hole
    /// punch, a port the router mapped) over a plain one (an AutoNAT
    /// dial-back beside a hole-punched connection, say).
    pub(crate) fn best(&self, peer: &PeerId) -> Option<PeerLink> {
        let rank = |p: Path| match p {
            Path::HolePunched => 0,
            Path::Upnp => 1,
            Path::Direct => 2,
            Path::Relayed => 3,
        };
        let best = self
            .by_peer
            .get(peer)?
            .iter()
            .min_by_key(|l| rank(l.path))?;
        Some(PeerLink {
            addr: best.addr.clone(),
            path: best.path,
        })
    }

    /// Connections by path, for the report and `/api/v1/node`.
    pub(crate) fn count_by_path(&self) -> PathCounts {
        let mut counts = PathCounts::default();
        for link in self.by_peer.values().flatten() {
            match link.path {
                Path::Direct => counts.direct += 1,
                Path::Relayed => counts.relayed += 1,
                Path::HolePunched => counts.hole_punched += 1,
                Path::Upnp => counts.upnp += 1,
            }
        }
        counts
    }
}

/// Open connections by how they were made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathCounts {
    pub direct: usize,
    pub relayed: usize,
    pub hole_punched: usize,
    /// Inbound through a port the router mapped (UPnP).
    #[serde(default)]
    pub upnp: usize,
}

/// What the node knows of its own reachability, published by the swarm
/// task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReachView {
    pub reachability: Reachability,
    /// Confirmed external addresses: by AutoNAT, or relayed ones from
    /// reservations.
    pub external: Vec<Multiaddr>,
    /// Connections by path.
    pub paths: PathCounts,
    /// Relayed connections (each one DCUtR tries to upgrade), and
    /// hole-punched connections made.
    pub hole_punch_attempts: u64,
    pub hole_punch_successes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(addr: &str) -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address: addr.parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    const RELAYED: &str = "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit";

    #[test]
    fn pieces_wait_for_the_first_direct_connection() {
        let mut links = Links::default();
        let peer = PeerId::random();
        let (relayed, punched) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        let e = links.established(peer, relayed, &dialer(RELAYED), false);
        assert!(!e.first_direct);
        assert!(!links.can_carry_pieces(&peer, false));
        assert!(links.can_carry_pieces(&peer, true), "with --relayed-pieces");
        assert_eq!(links.best(&peer).unwrap().path, Path::Relayed);
        // A direct connection beside a relayed one is DCUtR's.
        let e = links.established(peer, punched, &dialer("/ip4/203.0.113.9/tcp/4001"), false);
        assert!(e.first_direct && e.dialer);
        assert_eq!(links.best(&peer).unwrap().path, Path::HolePunched);
        assert_eq!(
            links.count_by_path(),
            PathCounts {
                direct: 0,
                relayed: 1,
                hole_punched: 1,
                upnp: 0,
            }
        );
        links.closed(peer, relayed);
        links.closed(peer, punched);
        assert!(links.best(&peer).is_none());
    }

    #[test]
    fn only_our_own_dial_beside_a_relayed_connection_is_a_hole_punch() {
        let mut links = Links::default();
        let peer = PeerId::random();
        let id = ConnectionId::new_unchecked;
        links.established(peer, id(1), &dialer(RELAYED), false);
        // An AutoNAT dial-back from a fresh port, an inbound connection.
        let fresh = ConnectedPoint::Dialer {
            address: "/ip4/203.0.113.9/tcp/4001".parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::New,
        };
        let inbound = ConnectedPoint::Listener {
            local_addr: "/ip4/10.0.0.2/tcp/4001".parse().unwrap(),
            send_back_addr: "/ip4/11.0.0.9/tcp/51000".parse().unwrap(),
        };
        assert_eq!(
            links.established(peer, id(2), &fresh, false).path,
            Path::Direct
        );
        assert_eq!(
            links.established(peer, id(3), &inbound, true).path,
            Path::Upnp
        );
        // DCUtR's dial as the overridden side: a hole punch, not ours to
        // open pieces on.
        let overridden = ConnectedPoint::Dialer {
            address: "/ip4/203.0.113.9/udp/4001/quic-v1".parse().unwrap(),
            role_override: Endpoint::Listener,
            port_use: PortUse::Reuse,
        };
        let e = links.established(peer, id(4), &overridden, false);
        assert_eq!(e.path, Path::HolePunched);
        assert!(
            !e.dialer,
            "the side whose role is overridden acts as listener"
        );
        // DCUtR telling us about a connection taken for a plain one.
        links.closed(peer, id(1));
        let late = id(5);
        assert_eq!(
            links
                .established(peer, late, &dialer("/ip4/203.0.113.9/tcp/4001"), false)
                .path,
            Path::Direct
        );
        assert!(links.hole_punched(peer, late));
        assert!(!links.hole_punched(peer, late), "counted once");
    }
}
