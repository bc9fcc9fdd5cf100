//! The libp2p side: one `Swarm` per node with TCP + Noise + Yamux (the
//! default) and QUIC (`/udp/…/quic-v1` addresses), `identify`, `ping`,
//! optional mDNS, a Kademlia DHT, and `libp2p-stream` for the piece
//! protocol.
//!
//! Why `libp2p-stream` rather than a custom `ConnectionHandler`: the piece
//! protocol is one long-lived, pipelined stream per (peer, torrent), which is
//! exactly what `libp2p-stream` hands out — an `AsyncRead + AsyncWrite` we
//! frame ourselves. All flow control (request windows, upload windows,
//! credits) lives in our sessions, where it can see the storage queue; a
//! handler would have to shuttle the same bytes through `ToBehaviour`
//! events for no gain.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{AbortHandle, AbortRegistration, Abortable};
use libp2p::core::transport::{
    DialOpts, ListenerId, TransportError as CoreTransportError, TransportEvent,
};
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr, multiaddr::Protocol};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm, dummy,
};
use libp2p::{PeerId, Transport};

use crate::admission::{AdmissionConfig, Pending};
use crate::reach::{DirectOnly, RelayLimits, RelayedBytes};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, autonat, dcutr, identify, kad, mdns, noise, ping, relay,
    tcp, upnp, yamux,
};

/// The piece protocol.
pub const PIECES_PROTOCOL: StreamProtocol = StreamProtocol::new("/sluice/pieces/1");
/// sluice's own Kademlia DHT (not the IPFS one): provider records keyed by
/// info-hash.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/sluice/kad/1");

/// Connections to one peer at once, beyond which new ones are refused.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;

/// How long a new TCP connection may take to finish Noise and Yamux.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    mdns: bool,
    idle_timeout: Duration,
    max_connections: u32,
    admission: AdmissionConfig,
    max_established_per_ip: Option<u32>,
    relay_server: Option<RelayLimits>,
    relayed_pieces: bool,
    dht_server: bool,
    relayed_bytes: RelayedBytes,
    upnp: bool,
}

/// Established inbound connections from one remote IP. Default 64.
pub const DEFAULT_MAX_ESTABLISHED_PER_IP: u32 = 64;

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            mdns: true,
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            admission: AdmissionConfig::default(),
            max_established_per_ip: Some(DEFAULT_MAX_ESTABLISHED_PER_IP),
            relay_server: None,
            relayed_pieces: false,
            dht_server: false,
            relayed_bytes: RelayedBytes::default(),
            upnp: false,
        }
    }
}

impl TransportConfig {
    /// Discover peers on the local network with mDNS. Default on.
    pub fn with_mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Close connections idle this long. Default 60 s.
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Established connections, in and out, beyond which new ones are
    /// refused. Default 256.
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Incoming TCP connections still in their Noise handshake at once,
    /// in all and per remote IP (see [`crate::admission`]).
    pub fn with_admission(mut self, admission: AdmissionConfig) -> Self {
        self.admission = admission;
        self
    }

    /// Established inbound connections from one remote IP (`None`: any
    /// number, for a testnet where every node is 127.0.0.1).
    pub fn with_max_established_per_ip(mut self, n: Option<u32>) -> Self {
        self.max_established_per_ip = n.map(|n| n.max(1));
        self
    }

    /// Serve as a circuit relay for unreachable nodes, within these
    /// limits. Default off.
    pub fn with_relay_server(mut self, limits: Option<RelayLimits>) -> Self {
        self.relay_server = limits;
        self
    }

    /// Let piece traffic use relayed connections. Default off: pieces wait
    /// for a direct (or hole-punched) connection.
    pub fn with_relayed_pieces(mut self, on: bool) -> Self {
        self.relayed_pieces = on;
        self
    }

    /// Serve the DHT from the start. Default off: Kademlia runs in client
    /// mode until an external address is confirmed (AutoNAT), so an
    /// unreachable node is never put in others' routing tables. Bootstrap
    /// nodes and loopback or LAN testnets, where nobody confirms an
    /// address, turn it on.
    pub fn with_dht_server(mut self, on: bool) -> Self {
        self.dht_server = on;
        self
    }

    /// Ask the router (UPnP IGD) to map our listen ports. Default off:
    /// it multicasts on the local network, which an embedder (or a
    /// test) may not want.
    pub fn with_upnp(mut self, on: bool) -> Self {
        self.upnp = on;
        self
    }

    /// Where the bytes that cross relays are counted.
    pub fn with_relayed_bytes(mut self, counter: RelayedBytes) -> Self {
        self.relayed_bytes = counter;
        self
    }
}

/// The IP a connection comes from (`/ip4/…` or `/ip6/…` first), as
/// its share is counted ([`crate::admission::share_of`]: an IPv6 /64).
pub fn remote_ip(addr: &Multiaddr) -> Option<IpAddr> {
    let ip: IpAddr = match addr.iter().next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    Some(crate::admission::share_of(ip))
}

/// A transport whose inbound connections go through [`Pending`]: each
/// upgrade holds a handshake slot until it ends, and is aborted when the
/// admission drops it to make room for a newer one.
pub struct Admitted<T> {
    inner: T,
    pending: Handshakes,
}

/// Handshakes under way, shared by whoever accepts connections (this
/// transport, the BitTorrent accept loop) and the futures running them:
/// [`Pending`] with the handles that abort the ones it drops.
#[derive(Debug, Clone)]
pub struct Handshakes(Arc<Mutex<Pending<AbortHandle>>>);

impl Handshakes {
    pub fn new(config: AdmissionConfig) -> Self {
        Self(Arc::new(Mutex::new(Pending::new(config))))
    }

    /// Admits a handshake from `ip`, aborting the ones dropped to make
    /// room: its slot (given back when dropped) and the registration to
    /// make its future abortable with.
    pub fn admit(&self, ip: IpAddr) -> (Slot, AbortRegistration) {
        let (abort, registration) = AbortHandle::new_pair();
        let (id, evicted) = self.lock().admit(ip, abort);
        for e in evicted {
            e.abort();
        }
        let slot = Slot {
            pending: self.clone(),
            id,
        };
        (slot, registration)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending<AbortHandle>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> std::fmt::Debug for Admitted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").finish_non_exhaustive()
    }
}

impl<T> Admitted<T> {
    pub fn new(inner: T, config: AdmissionConfig) -> Self {
        Self {
            inner,
            pending: Handshakes::new(config),
        }
    }
}

/// Why an admitted upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum AdmittedError<E> {
    #[error(transparent)]
    Inner(E),
    #[error("dropped for a newer connection: too many handshakes pending")]
    Evicted,
}

/// A handshake's place in [`Handshakes`], given back when dropped: when
/// the handshake ends, however it ends.
#[derive(Debug)]
pub struct Slot {
    pending: Handshakes,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pending.lock().done(self.id);
    }
}

type AdmittedUpgrade<O, E> = Pin<Box<dyn Future<Output = Result<O, AdmittedError<E>>> + Send>>;

impl<T> Transport for Admitted<T>
where
    T: Transport + Unpin,
    T::ListenerUpgrade: Send + 'static,
    T::Output: Send + 'static,
    T::Error: Send + 'static,
{
    type Output = T::Output;
    type Error = AdmittedError<T::Error>;
    type ListenerUpgrade = AdmittedUpgrade<T::Output, T::Error>;
    type Dial = futures::future::MapErr<T::Dial, fn(T::Error) -> AdmittedError<T::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), CoreTransportError<Self::Error>> {
        self.inner
            .listen_on(id, addr)
            .map_err(|e| e.map(AdmittedError::Inner))
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, CoreTransportError<Self::Error>> {
        use futures::TryFutureExt as _;
        let dial = self
            .inner
            .dial(addr, opts)
            .map_err(|e| e.map(AdmittedError::Inner))?;
        Ok(dial.map_err(AdmittedError::Inner as fn(_) -> _))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let event = match Pin::new(&mut self.inner).poll(cx) {
            Poll::Ready(e) => e,
            Poll::Pending => return Poll::Pending,
        };
        let TransportEvent::Incoming {
            listener_id,
            upgrade,
            local_addr,
            send_back_addr,
        } = event
        else {
            // No upgrade in any other event: the mapping is never called.
            return Poll::Ready(
                event
                    .map_upgrade(|u| {
                        Box::pin(async move { u.await.map_err(AdmittedError::Inner) })
                            as AdmittedUpgrade<T::Output, T::Error>
                    })
                    .map_err(AdmittedError::Inner),
            );
        };
        let upgrade: AdmittedUpgrade<T::Output, T::Error> = match remote_ip(&send_back_addr) {
            None => Box::pin(async move { upgrade.await.map_err(AdmittedError::Inner) }),
            Some(ip) => {
                let (slot, registration) = self.pending.admit(ip);
                Box::pin(async move {
                    let _slot = slot;
                    match Abortable::new(upgrade, registration).await {
                        Ok(r) => r.map_err(AdmittedError::Inner),
                        Err(_) => Err(AdmittedError::Evicted),
                    }
                })
            }
        };
        Poll::Ready(TransportEvent::Incoming {
            listener_id,
            upgrade,
            local_addr,
            send_back_addr,
        })
    }
}

/// Refuses an inbound connection from an IP that has its
/// `max_established_per_ip` already (one host cannot take every slot).
#[derive(Debug, Default)]
pub struct PerIpLimit {
    max: Option<u32>,
    inbound: HashMap<ConnectionId, IpAddr>,
    per_ip: HashMap<IpAddr, u32>,
}

impl PerIpLimit {
    pub fn new(max: Option<u32>) -> Self {
        Self {
            max,
            ..Self::default()
        }
    }
}

impl libp2p::swarm::NetworkBehaviour for PerIpLimit {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let (Some(max), Some(ip)) = (self.max, remote_ip(remote))
            && self.per_ip.get(&ip).copied().unwrap_or(0) >= max
        {
            return Err(ConnectionDenied::new(std::io::Error::other(format!(
                "{ip} has {max} connections already"
            ))));
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: libp2p::core::transport::PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                if let ConnectedPoint::Listener { send_back_addr, .. } = e.endpoint
                    && let Some(ip) = remote_ip(send_back_addr)
                {
                    self.inbound.insert(e.connection_id, ip);
                    *self.per_ip.entry(ip).or_default() += 1;
                }
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(ip) = self.inbound.remove(&e.connection_id)
                    && let Some(n) = self.per_ip.get_mut(&ip)
                {
                    *n -= 1;
                    if *n == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Everything a sluice node speaks besides its own streams.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Refuses connections beyond the configured counts.
    pub limits: connection_limits::Behaviour,
    /// And from one IP beyond its share.
    pub per_ip: PerIpLimit,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// Metadata streams (they may cross relays).
    pub stream: libp2p_stream::Behaviour,
    /// Piece streams, on direct connections only.
    pub pieces: DirectOnly,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Asks peers to dial our candidate addresses back, to confirm them.
    pub autonat: autonat::v2::client::Behaviour,
    /// Dials others' candidates back for them.
    pub autonat_server: autonat::v2::server::Behaviour,
    /// Reservations on relays, and connections through them.
    pub relay_client: relay::client::Behaviour,
    /// Serving as a relay (`--serve-relay`).
    pub relay: Toggle<relay::Behaviour>,
    /// Hole punching: upgrades relayed connections to direct ones.
    pub dcutr: dcutr::Behaviour,
    /// Port mappings on the router (`--no-upnp` turns it off).
    pub upnp: Toggle<upnp::tokio::Behaviour>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour").finish_non_exhaustive()
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("setting up TCP + Noise + Yamux: {0}")]
    Tcp(String),
    #[error("starting mDNS")]
    Mdns(#[source] std::io::Error),
    #[error("building the libp2p behaviour: {0}")]
    Behaviour(String),
}

/// How often mDNS asks the local network who is there. libp2p's default
/// is 5 minutes: a first query that goes unanswered (the other node's
/// responder not up yet) would leave a `sluice get` with no flags waiting
/// that long. One small multicast packet every 10 s costs nothing.
pub const MDNS_QUERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds the node's swarm. Must be called inside a tokio runtime.
pub fn build_swarm(
    keypair: Keypair,
    config: &TransportConfig,
) -> Result<Swarm<Behaviour>, TransportError> {
    let peer_id = keypair.public().to_peer_id();
    let mdns = if config.mdns {
        Some(
            mdns::tokio::Behaviour::new(
                mdns::Config {
                    query_interval: MDNS_QUERY_INTERVAL,
                    ..mdns::Config::default()
                },
                peer_id,
            )
            .map_err(TransportError::Mdns)?,
        )
    } else {
        None
    };
    let mut mdns = Some(mdns);
    let relayed_bytes = config.relayed_bytes.clone();
    let (relay_transport, relay_client) = relay::client::new(peer_id);
    let mut relay_client = Some(relay_client);
    let (dns_config, dns_opts) = match hickory_resolver::system_conf::read_system_conf() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no system DNS configuration; names resolve from the hosts file only");
            Default::default()
        }
    };
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        // QUIC beside TCP: whichever the listen and peer addresses name.
        .with_quic()
        // TCP + Noise + Yamux, built by hand for one thing the builder's
        // `with_tcp` lacks: a deadline on the upgrade. Without it a peer
        // that connects and never speaks holds a pending slot forever.
        // Inbound upgrades go through the admission: a host that
        // connects and never speaks holds at most its share of the slots.
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Admitted::new(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .timeout(UPGRADE_TIMEOUT),
                config.admission,
            ))
        })
        .map_err(|e| TransportError::Tcp(e.to_string()))?
        // Connections through relays (`/p2p-circuit` addresses), their
        // raw bytes counted.
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                relay_transport
                    .map(move |conn, _| relayed_bytes.count(conn))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .timeout(UPGRADE_TIMEOUT),
            )
        })
        .map_err(|e| TransportError::Tcp(e.to_string()))?
        // `/dns4`, `/dns6` and `/dnsaddr` addresses, resolved with the
        // system's configuration (and its hosts file); a host without one
        // (a container with no network, say) resolves from the hosts file.
        .with_dns_config(dns_config, dns_opts)
        .with_behaviour(|key| Behaviour {
            identify: identify::Behaviour::new(identify::Config::new(
                "/sluice/id/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
            stream: libp2p_stream::Behaviour::new(),
            pieces: DirectOnly::new(config.relayed_pieces),
            mdns: mdns.take().flatten().into(),
            kad: {
                let id = key.public().to_peer_id();
                let store = kad::store::MemoryStore::new(id);
                let mut k = kad::Behaviour::with_config(id, store, kad::Config::new(KAD_PROTOCOL));
                // Client mode until an external address is confirmed,
                // unless told to serve from the start.
                k.set_mode(config.dht_server.then_some(kad::Mode::Server));
                k
            },
            autonat: autonat::v2::client::Behaviour::default(),
            autonat_server: autonat::v2::server::Behaviour::default(),
            relay_client: relay_client.take().expect("the behaviour is built once"),
            relay: config
                .relay_server
                .map(|l| {
                    let mut r = relay::Behaviour::new(key.public().to_peer_id(), l.to_config());
                    // Serve at once, as asked: by itself libp2p waits for a
                    // confirmed external address, which a bootstrap node
                    // gets only once a NATed node's dial-back reached it.
                    r.set_status(Some(relay::Status::Enable));
                    r
                })
                .into(),
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            upnp: config.upnp.then(upnp::tokio::Behaviour::default).into(),
            limits: connection_limits::Behaviour::new(
                ConnectionLimits::default()
                    .with_max_established(Some(config.max_connections))
                    // QUIC's handshakes (TCP's go through the admission,
                    // which holds them to half of this).
                    .with_max_pending_incoming(Some(
                        u32::try_from(config.admission.max_pending)
                            .unwrap_or(u32::MAX)
                            .saturating_mul(2),
                    ))
                    // Both sides dialing at once, a relayed connection
                    // beside the direct one DCUtR makes, and an AutoNAT
                    // dial-back (a connection of its own); the piece
                    // protocol keeps one stream either way.
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
            ),
            per_ip: PerIpLimit::new(config.max_established_per_ip),
        })
        .map_err(|e| TransportError::Behaviour(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}
