//! Reachability: how a node behind NAT is reached, and what may cross a
//! relay.
//!
//! libp2p does the protocol work (AutoNAT v2 confirms external
//! addresses, circuit relay v2 gives an unreachable node a `/p2p-circuit`
//! address on a public one, DCUtR turns a relayed connection into a
//! direct one by hole punching). What sluice adds here:
//!
//! - [`DirectOnly`]: the piece protocol's streams are opened only on
//!   direct connections (unless the user allows relayed ones), so piece
//!   traffic never crosses a relay by accident; metadata and control do.
//! - [`Counted`]: the bytes that crossed relays, for `/metrics`, the API
//!   and the testnet report.
//! - [`Path`] and [`Reachability`]: what `sluice peers`, the API and the
//!   report say about each connection and about the node.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr, multiaddr::Protocol};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use serde::{Deserialize, Serialize};

/// Limits of a node that serves as a relay (`--serve-relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Nodes holding a reservation at once.
    pub max_reservations: usize,
    /// Relayed connections at once.
    pub max_circuits: usize,
    /// Bytes one relayed connection may carry, both ways together, before
    /// the relay closes it.
    pub circuit_bytes: u64,
    /// How long one relayed connection may last.
    pub circuit_duration: Duration,
}

/// Reservations a relay holds by default.
pub const DEFAULT_RELAY_RESERVATIONS: usize = 128;
/// Circuits a relay carries at once by default.
pub const DEFAULT_RELAY_CIRCUITS: usize = 16;
/// Bytes per circuit by default: room for a torrent's metadata (a 4 GiB
/// v1 torrent of 256 KiB pieces has 320 KiB of piece hashes) and the
/// hole-punching exchange, not for its pieces.
pub const DEFAULT_RELAY_CIRCUIT_BYTES: u64 = 1 << 20;
/// How long a circuit lasts by default (libp2p's).
pub const DEFAULT_RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(120);

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: DEFAULT_RELAY_RESERVATIONS,
            max_circuits: DEFAULT_RELAY_CIRCUITS,
            circuit_bytes: DEFAULT_RELAY_CIRCUIT_BYTES,
            circuit_duration: DEFAULT_RELAY_CIRCUIT_DURATION,
        }
    }
}

impl RelayLimits {
    /// libp2p's relay configuration with these limits (its rate limiters
    /// kept: reservations and circuits per peer and per IP per minute).
    pub fn to_config(self) -> libp2p::relay::Config {
        libp2p::relay::Config {
            max_reservations: self.max_reservations,
            max_circuits: self.max_circuits,
            max_circuit_bytes: self.circuit_bytes,
            max_circuit_duration: self.circuit_duration,
            ..libp2p::relay::Config::default()
        }
    }
}

/// Whether an address goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// How a connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// One side dialed the other's address.
    Direct,
    /// Through a relay (metadata and control only, by default).
    Relayed,
    /// Direct, made by hole punching after meeting through a relay.
    HolePunched,
    /// Direct and inbound, through a port our router mapped for us
    /// (UPnP).
    Upnp,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
            Self::HolePunched => "hole-punched",
            Self::Upnp => "upnp",
        }
    }

    /// Whether piece traffic may use it by default.
    pub fn is_direct(self) -> bool {
        !matches!(self, Self::Relayed)
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether others can dial this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reachability {
    /// Nothing tested yet.
    #[default]
    Unknown,
    /// A peer dialed one of our addresses back (AutoNAT).
    Public,
    /// Dial-backs failed: behind NAT or a firewall. Reached through
    /// relays, then hole punching.
    Private,
}

impl Reachability {
    /// From what the node knows: its confirmed external addresses, and
    /// whether any dial-back has failed. A relayed address is ours but
    /// does not make us reachable.
    pub fn from_facts<'a>(
        external: impl IntoIterator<Item = &'a Multiaddr>,
        dial_back_failed: bool,
    ) -> Self {
        if external.into_iter().any(|a| !is_relayed(a)) {
            Self::Public
        } else if dial_back_failed {
            Self::Private
        } else {
            Self::Unknown
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Public => "public",
            Self::Private => "private",
        }
    }
}

impl std::fmt::Display for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The addresses to give others (magnet hints): the confirmed external
/// ones (relayed included) when there are any; else what we listen on,
/// which is all a LAN or loopback swarm has (loopback only when there is
/// nothing else).
pub fn advertised(external: &[Multiaddr], listening: &[Multiaddr]) -> Vec<Multiaddr> {
    if !external.is_empty() {
        return external.to_vec();
    }
    let direct: Vec<Multiaddr> = listening
        .iter()
        .filter(|a| !is_relayed(a))
        .cloned()
        .collect();
    let off_host: Vec<Multiaddr> = direct.iter().filter(|a| !is_loopback(a)).cloned().collect();
    if off_host.is_empty() {
        direct
    } else {
        off_host
    }
}

/// Whether an address looks reachable from the internet: not loopback,
/// private (RFC 1918, IPv6 unique-local), link-local, shared (CGNAT) or
/// unspecified.
pub fn is_global(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || (a == 100 && (64..128).contains(&b)))
        }
        Some(Protocol::Ip6(ip)) => {
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
        _ => false,
    }
}

/// Whether a node listening on these addresses is probably behind NAT,
/// before any peer has said: it has an address off the host, and none of
/// them global (a home network's 192.168.x). Such a node takes relay
/// reservations at once instead of waiting for AutoNAT's verdict, which
/// takes a dial-back timeout to come. A loopback-only node is reached by
/// nobody off the host, relay or not.
pub fn likely_behind_nat(listening: &[Multiaddr]) -> bool {
    let off_host: Vec<&Multiaddr> = listening
        .iter()
        .filter(|a| !is_relayed(a) && !is_loopback(a))
        .collect();
    !off_host.is_empty() && !off_host.iter().any(|a| is_global(a))
}

fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h)) => h == "localhost",
        _ => false,
    }
}

/// Bytes that crossed relays, counted on the relayed connections' raw
/// streams (Noise and Yamux framing included: what the relay carried).
#[derive(Debug, Clone, Default)]
pub struct RelayedBytes(Arc<[AtomicU64; 2]>);

impl RelayedBytes {
    /// Received through relays.
    pub fn received(&self) -> u64 {
        self.0[0].load(Ordering::Relaxed)
    }

    /// Sent through relays.
    pub fn sent(&self) -> u64 {
        self.0[1].load(Ordering::Relaxed)
    }

    /// Wraps a relayed connection's stream so that its bytes count.
    pub fn count<S>(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            bytes: self.clone(),
        }
    }
}

/// A stream whose bytes add to a [`RelayedBytes`].
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    bytes: RelayedBytes,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = read {
            self.bytes.0[0].fetch_add(n as u64, Ordering::Relaxed);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.bytes.0[1].fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// `libp2p-stream` for the piece protocol, on direct connections only
/// (unless `allow_relayed`).
///
/// `libp2p-stream` opens a stream on any of a peer's connections, picked
/// at random, so a relayed connection beside a direct one would carry
/// piece traffic half the time. Here a relayed connection gets a handler
/// that speaks nothing, and the inner behaviour never hears of it: to it
/// the peer is connected only once a direct connection is up.
pub struct DirectOnly {
    inner: libp2p_stream::Behaviour,
    allow_relayed: bool,
    relayed: HashSet<ConnectionId>,
}

impl DirectOnly {
    pub fn new(allow_relayed: bool) -> Self {
        Self {
            inner: libp2p_stream::Behaviour::new(),
            allow_relayed,
            relayed: HashSet::new(),
        }
    }

    pub fn new_control(&self) -> libp2p_stream::Control {
        self.inner.new_control()
    }

    fn skips(&mut self, id: ConnectionId, addrs: &[&Multiaddr]) -> bool {
        let skip = !self.allow_relayed && addrs.iter().any(|a| is_relayed(a));
        if skip {
            self.relayed.insert(id);
        }
        skip
    }
}

impl std::fmt::Debug for DirectOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectOnly")
            .field("allow_relayed", &self.allow_relayed)
            .field("relayed", &self.relayed.len())
            .finish_non_exhaustive()
    }
}

type Inner = libp2p_stream::Behaviour;

impl NetworkBehaviour for DirectOnly {
    type ConnectionHandler = either::Either<THandler<Inner>, dummy::ConnectionHandler>;
    type ToSwarm = <Inner as NetworkBehaviour>::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.skips(id, &[local, remote]) {
            return Ok(either::Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
            .map(either::Either::Left)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.skips(id, &[addr]) {
            return Ok(either::Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
            .map(either::Either::Left)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        let skipped = match &event {
            FromSwarm::ConnectionEstablished(e) => self.relayed.contains(&e.connection_id),
            FromSwarm::AddressChange(e) => self.relayed.contains(&e.connection_id),
            FromSwarm::ConnectionClosed(e) => self.relayed.remove(&e.connection_id),
            _ => false,
        };
        if !skipped {
            self.inner.on_swarm_event(event);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            either::Either::Left(e) => self.inner.on_connection_handler_event(peer, id, e),
            either::Either::Right(never) => match never {},
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx).map(|e| e.map_in(either::Either::Left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_relayed_address_alone_does_not_make_a_node_public() {
        let relayed = addr(
            "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        let direct = addr("/ip4/203.0.113.7/tcp/4001");
        assert_eq!(
            Reachability::from_facts([&relayed], false),
            Reachability::Unknown
        );
        assert_eq!(
            Reachability::from_facts([&relayed], true),
            Reachability::Private
        );
        assert_eq!(
            Reachability::from_facts([&relayed, &direct], true),
            Reachability::Public
        );
        assert_eq!(Reachability::from_facts([], false), Reachability::Unknown);
    }

    #[test]
    fn only_internet_addresses_are_global() {
        for a in [
            "/ip4/198.51.100.1/tcp/1",
            "/ip4/8.8.8.8/udp/1/quic-v1",
            "/ip6/2001:db8::1/tcp/1",
        ] {
            assert!(is_global(&addr(a)), "{a}");
        }
        for a in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.0.2/tcp/1",
            "/ip4/192.168.1.5/tcp/1",
            "/ip4/172.20.0.1/tcp/1",
            "/ip4/100.100.0.1/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip4/0.0.0.0/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/dns4/example.org/tcp/1",
        ] {
            assert!(!is_global(&addr(a)), "{a}");
        }
    }

    #[test]
    fn private_addresses_alone_suggest_nat() {
        let home = addr("/ip4/192.168.1.5/tcp/4001");
        let lo = addr("/ip4/127.0.0.1/tcp/4001");
        let public = addr("/ip4/11.0.0.3/tcp/4001");
        assert!(likely_behind_nat(&[home.clone(), lo.clone()]));
        assert!(!likely_behind_nat(&[home, public]));
        assert!(
            !likely_behind_nat(&[lo]),
            "loopback only: nobody to relay for"
        );
        assert!(!likely_behind_nat(&[]));
    }

    #[test]
    fn hints_are_the_external_addresses_once_there_are_any() {
        let listening = [
            addr("/ip4/10.0.0.2/tcp/4001"),
            addr("/ip4/127.0.0.1/tcp/4001"),
        ];
        assert_eq!(advertised(&[], &listening), vec![listening[0].clone()]);
        // Loopback alone is what a loopback swarm has.
        assert_eq!(advertised(&[], &listening[1..]), listening[1..].to_vec());
        let relayed = addr(
            "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        assert_eq!(
            advertised(std::slice::from_ref(&relayed), &listening),
            vec![relayed.clone()]
        );
        // A relay listener's address is not one we listen on directly.
        assert_eq!(advertised(&[], &[relayed]), Vec::<Multiaddr>::new());
    }
}
