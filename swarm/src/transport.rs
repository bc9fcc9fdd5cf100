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

use std::time::Duration;

use libp2p::Transport as _;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, Swarm, SwarmBuilder, identify, kad, mdns, noise, ping, tcp, yamux};

/// The piece protocol.
pub const PIECES_PROTOCOL: StreamProtocol = StreamProtocol::new("/sluice/pieces/1");
/// sluice's own Kademlia DHT (not the IPFS one): provider records keyed by
/// info-hash.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/sluice/kad/1");

/// How long a new TCP connection may take to finish Noise and Yamux.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    mdns: bool,
    idle_timeout: Duration,
    max_connections: u32,
    max_pending_incoming: u32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            mdns: true,
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            max_pending_incoming: 64,
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

    /// Incoming connections still in their Noise handshake at once.
    /// Default 64.
    pub fn with_max_pending_incoming(mut self, n: u32) -> Self {
        self.max_pending_incoming = n.max(1);
        self
    }
}

/// Everything a sluice node speaks besides its own streams.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub stream: libp2p_stream::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Refuses connections beyond the configured counts.
    pub limits: connection_limits::Behaviour,
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
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        // QUIC beside TCP: whichever the listen and peer addresses name.
        .with_quic()
        // TCP + Noise + Yamux, built by hand for one thing the builder's
        // `with_tcp` lacks: a deadline on the upgrade. Without it a peer
        // that connects and never speaks holds a pending slot forever.
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .timeout(UPGRADE_TIMEOUT),
            )
        })
        .map_err(|e| TransportError::Tcp(e.to_string()))?
        .with_behaviour(|key| Behaviour {
            identify: identify::Behaviour::new(identify::Config::new(
                "/sluice/id/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
            stream: libp2p_stream::Behaviour::new(),
            mdns: mdns.take().flatten().into(),
            kad: {
                let id = key.public().to_peer_id();
                let store = kad::store::MemoryStore::new(id);
                let mut k = kad::Behaviour::with_config(id, store, kad::Config::new(KAD_PROTOCOL));
                // Serve the DHT even without a confirmed external address:
                // on a LAN or loopback testnet nobody confirms one.
                k.set_mode(Some(kad::Mode::Server));
                k
            },
            limits: connection_limits::Behaviour::new(
                ConnectionLimits::default()
                    .with_max_established(Some(config.max_connections))
                    .with_max_pending_incoming(Some(config.max_pending_incoming))
                    // Two: both sides dialing at once is allowed; the
                    // piece protocol keeps one stream either way.
                    .with_max_established_per_peer(Some(2)),
            ),
        })
        .map_err(|e| TransportError::Behaviour(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}
