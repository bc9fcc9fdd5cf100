//! `sluice-choke`: who gets our upload slots, and why.
//!
//! A sans-IO core: the driver hands in a snapshot of its peers, the current
//! instant and a seeded RNG; the choker hands back one [`Decision`] per peer
//! — unchoke or not, an upload weight, and a [`Reason`] a person can read and
//! a program can match on. No clock is read, no task spawned, no socket
//! touched here, so the same inputs and seed always give the same decisions
//! (the testnet and the tests rely on that).
//!
//! - [`TitForTat`]: BitTorrent's scheduler — regular slots by reciprocation,
//!   a rotating optimistic slot (new peers 3× as likely), anti-snubbing;
//!   when seeding, fastest-upload or round-robin slots.
//! - [`PropShare`]: Levin et al., "BitTorrent is an Auction" (2008) — upload
//!   split in proportion to what each peer gave, plus an optimistic share.
//! - [`RateMeter`]: rolling-window byte rates, used by the chokers' inputs
//!   and by request-window sizing in the swarm.
//!
//! Calling order (see [`Choker`]): `rechoke` whenever `now ≥ next_rechoke()`;
//! `on_peers_changed` when a peer joins, leaves or changes interest between
//! rechokes. Diff the decisions against what each peer was last told.
//!
//! The piece picker, the other pure core of issue 3, lives in
//! `sluice-swarm` (`swarm::picker`): it works in storage's validated
//! `PieceIndex`/`BlockRef` types and is driven only by the swarm's sessions,
//! while this crate stays free of any dependency on storage.

mod propshare;
mod rate;
mod titfortat;

use std::fmt;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::Serialize;

pub use propshare::{PropShare, PropShareConfig};
pub use rate::RateMeter;
pub use titfortat::{SeedMode, TitForTat, TitForTatConfig};

/// A peer as the driver names it (a session id). Stable for the life of
/// a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PeerKey(pub u64);

/// Whether we still download (reciprocation matters) or only seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    Leeching,
    Seeding,
}

/// What the choker knows of one peer at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSnapshot {
    pub key: PeerKey,
    /// The peer wants pieces we have.
    pub interested: bool,
    /// We want pieces it has (only then can it snub us).
    pub we_are_interested: bool,
    pub connected_at: Instant,
    /// Bytes/s it sent us over the rate window.
    pub down_rate: f64,
    /// Bytes/s we sent it over the rate window.
    pub up_rate: f64,
    /// When it last sent us a block.
    pub last_block_at: Option<Instant>,
    /// Bytes we have sent it in all (round-robin seeding quotas).
    pub uploaded: u64,
    /// Pieces we sent it before anyone else (a seeder's fresh pieces:
    /// only it can pass them on).
    pub sole_pieces: u32,
    /// Of those, how many another peer announced afterwards: it passed
    /// them on.
    pub spread_pieces: u32,
    /// When we sent it the first such piece.
    pub first_sole_at: Option<Instant>,
}

impl PeerSnapshot {
    /// An interested peer that has sent and received nothing yet.
    pub fn new(key: PeerKey, connected_at: Instant) -> Self {
        Self {
            key,
            interested: true,
            we_are_interested: true,
            connected_at,
            down_rate: 0.0,
            up_rate: 0.0,
            last_block_at: None,
            uploaded: 0,
            sole_pieces: 0,
            spread_pieces: 0,
            first_sole_at: None,
        }
    }
}

/// Why a peer is choked or unchoked. `Display` is for people;
/// [`Reason::code`] is a stable name for programs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// Leeching: among the fastest uploaders to us.
    RegularSlot { rank: u32, slots: u32, rate: f64 },
    /// The rotating optimistic slot.
    Optimistic,
    /// We unchoked it, it sent nothing for the snub timeout: only an
    /// optimistic slot can serve it until it sends again.
    Snubbed,
    /// It wants nothing from us; it never holds a slot.
    NotInterested,
    /// Interested, ranked below the slots (rank 0: not ranked yet, it
    /// arrived after the last rechoke).
    SlotsFull { rank: u32 },
    /// Seeding: among the peers we upload to fastest.
    SeedingSlot { rank: u32, slots: u32, rate: f64 },
    /// Seeding, round-robin: its turn in the rotation.
    SeedingTurn { rank: u32, slots: u32 },
    /// Seeding, round-robin: it had its turn (quota or time used up).
    SeedingTurnUsed { rank: u32 },
    /// PropShare: this fraction of our upload, in proportion to what it gave.
    ProportionalShare { share: f64, rate: f64 },
    /// PropShare: it gave nothing in the last round.
    NoContribution,
    /// Tit-for-tat: it gave nothing back — it had a turn and sent us
    /// nothing since though it had pieces we wanted, or it passed on none
    /// of the pieces only we had sent it. While we leech it gets no regular
    /// slot; while we seed, one only when nobody else wants it; the
    /// optimistic slot rarely, when no other candidate is left (free-riders
    /// end up here). One that passed nothing on and holds a slot gets at
    /// most one slot's share of our upload limit.
    NoReciprocation,
}

impl Reason {
    /// A stable machine-readable name.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::RegularSlot { .. } => "regular_slot",
            Reason::Optimistic => "optimistic",
            Reason::Snubbed => "snubbed",
            Reason::NotInterested => "not_interested",
            Reason::SlotsFull { .. } => "slots_full",
            Reason::SeedingSlot { .. } => "seeding_slot",
            Reason::SeedingTurn { .. } => "seeding_turn",
            Reason::SeedingTurnUsed { .. } => "seeding_turn_used",
            Reason::ProportionalShare { .. } => "proportional_share",
            Reason::NoContribution => "no_contribution",
            Reason::NoReciprocation => "no_reciprocation",
        }
    }
}

/// `4.1 MB/s`, `512 kB/s`, `0 B/s`.
fn fmt_rate(f: &mut fmt::Formatter<'_>, bytes_per_sec: f64) -> fmt::Result {
    match bytes_per_sec {
        r if r >= 1e6 => write!(f, "{:.1} MB/s", r / 1e6),
        r if r >= 1e3 => write!(f, "{:.0} kB/s", r / 1e3),
        r => write!(f, "{r:.0} B/s"),
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::RegularSlot { rank, slots, rate } => {
                write!(f, "regular slot {rank} of {slots}, ")?;
                fmt_rate(f, *rate)
            }
            Reason::Optimistic => f.write_str("optimistic"),
            Reason::Snubbed => f.write_str("snubbed"),
            Reason::NotInterested => f.write_str("not interested"),
            // Rank 0: it arrived after the last ranking.
            Reason::SlotsFull { rank: 0 } => f.write_str("slots full, not yet ranked"),
            Reason::SlotsFull { rank } => write!(f, "rank {rank}, slots full"),
            Reason::SeedingSlot { rank, slots, rate } => {
                write!(f, "seeding slot {rank} of {slots}, ")?;
                fmt_rate(f, *rate)
            }
            Reason::SeedingTurn { rank, slots } => write!(f, "seeding turn {rank} of {slots}"),
            Reason::SeedingTurnUsed { rank } => write!(f, "rank {rank}, turn used"),
            Reason::ProportionalShare { share, rate } => {
                write!(f, "{:.0}% of upload for ", share * 100.0)?;
                fmt_rate(f, *rate)
            }
            Reason::NoContribution => f.write_str("gave nothing last round"),
            Reason::NoReciprocation => f.write_str("gave nothing back"),
        }
    }
}

/// The choker's verdict on one peer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub peer: PeerKey,
    pub unchoke: bool,
    /// Share of our upload this peer should get relative to the other
    /// unchoked peers (equal for tit-for-tat; proportional for PropShare);
    /// 0 when choked.
    pub weight: f64,
    /// At most this fraction of our upload limit, even when nobody else
    /// wants it (`None`: no cap; a node without an upload limit caps
    /// nobody). Tit-for-tat caps peers that passed on none of the pieces
    /// only we had sent them at one slot's share.
    pub cap: Option<f64>,
    pub reason: Reason,
}

impl Decision {
    fn choke(peer: PeerKey, reason: Reason) -> Self {
        Self {
            peer,
            unchoke: false,
            weight: 0.0,
            cap: None,
            reason,
        }
    }

    fn unchoke(peer: PeerKey, reason: Reason) -> Self {
        Self {
            peer,
            unchoke: true,
            weight: 1.0,
            cap: None,
            reason,
        }
    }

    /// Whether this is the optimistic slot.
    pub fn is_optimistic(&self) -> bool {
        self.reason == Reason::Optimistic
    }
}

/// A choking strategy. Implementations are deterministic given their
/// inputs and the RNG.
pub trait Choker: Send + fmt::Debug {
    /// A short name (`tit-for-tat`, `propshare`).
    fn name(&self) -> &'static str;

    /// When the next rechoke is due (`None`: at once).
    fn next_rechoke(&self) -> Option<Instant>;

    /// The periodic rechoke: one decision per peer in `peers`, in order.
    fn rechoke(
        &mut self,
        now: Instant,
        mode: Mode,
        peers: &[PeerSnapshot],
        rng: &mut dyn RngCore,
    ) -> Vec<Decision>;

    /// Between rechokes: peers that left or lost interest give up their
    /// slots, empty slots are filled at once, and everyone else keeps the
    /// last decision. One decision per peer in `peers`, in order.
    fn on_peers_changed(
        &mut self,
        now: Instant,
        mode: Mode,
        peers: &[PeerSnapshot],
        rng: &mut dyn RngCore,
    ) -> Vec<Decision>;

    /// Changes the upload slots (at least 1) while running: the next
    /// rechoke is due at `now`, so the change shows at once.
    fn set_slots(&mut self, slots: u32, now: Instant);
}

/// Picks one peer at random, new peers (connected within `new_window`)
/// weighted `new_weight`× — the optimistic unchoke lottery.
fn weighted_pick<'a>(
    candidates: impl Iterator<Item = &'a PeerSnapshot>,
    now: Instant,
    new_window: Duration,
    new_weight: u32,
    rng: &mut dyn RngCore,
) -> Option<PeerKey> {
    let weighted: Vec<(PeerKey, u32)> = candidates
        .map(|p| {
            let new = now.saturating_duration_since(p.connected_at) < new_window;
            (p.key, if new { new_weight.max(1) } else { 1 })
        })
        .collect();
    let total: u32 = weighted.iter().map(|&(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rand::Rng::gen_range(rng, 0..total);
    for (key, w) in weighted {
        if ticket < w {
            return Some(key);
        }
        ticket -= w;
    }
    None
}

#[cfg(test)]
mod tests;
