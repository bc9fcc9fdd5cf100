//! PropShare: Levin, LaCurts, Spring, Bhattacharjee, "BitTorrent is an
//! Auction: Analyzing and Improving BitTorrent's Incentives" (SIGCOMM 2008).
//!
//! Each round, every peer that uploaded to us gets a share of our upload in
//! proportion to what it gave (its `down_rate`); a fixed fraction goes to an
//! optimistic unchoke so newcomers can bootstrap. Seeding has nothing to
//! reciprocate, so a seeding PropShare behaves as tit-for-tat's seed mode.

use std::time::{Duration, Instant};

use rand::RngCore;

use crate::titfortat::{TitForTat, TitForTatConfig};
use crate::{Choker, Decision, Mode, PeerKey, PeerSnapshot, Reason, weighted_pick};

/// PropShare settings.
#[derive(Debug, Clone)]
pub struct PropShareConfig {
    optimistic_share: f64,
    tit_for_tat: TitForTatConfig,
}

impl Default for PropShareConfig {
    fn default() -> Self {
        Self {
            optimistic_share: 0.2,
            tit_for_tat: TitForTatConfig::default(),
        }
    }
}

impl PropShareConfig {
    /// Fraction of upload kept for the optimistic unchoke. Default 0.2
    /// (the paper's choice).
    pub fn with_optimistic_share(mut self, share: f64) -> Self {
        self.optimistic_share = share.clamp(0.0, 1.0);
        self
    }

    /// The tit-for-tat settings it shares (see [`Self::with_tit_for_tat`]).
    pub fn tit_for_tat(&self) -> &TitForTatConfig {
        &self.tit_for_tat
    }

    /// Slots, rechoke timing, optimistic rotation and seeding behaviour are
    /// shared with tit-for-tat: at most `slots − 1` contributors are paid
    /// (the largest), plus the optimistic peer, so PropShare never unchokes
    /// more peers than tit-for-tat would.
    pub fn with_tit_for_tat(mut self, config: TitForTatConfig) -> Self {
        self.tit_for_tat = config;
        self
    }
}

/// The PropShare choker.
#[derive(Debug)]
pub struct PropShare {
    config: PropShareConfig,
    seeding: TitForTat,
    optimistic: Option<PeerKey>,
    rounds: u64,
    next_due: Option<Instant>,
    last: Vec<Decision>,
}

impl PropShare {
    pub fn new(config: PropShareConfig) -> Self {
        Self {
            seeding: TitForTat::new(config.tit_for_tat.clone()),
            config,
            optimistic: None,
            rounds: 0,
            next_due: None,
            last: Vec::new(),
        }
    }

    fn interval(&self) -> Duration {
        self.config.tit_for_tat.rechoke_interval()
    }
}

impl Choker for PropShare {
    fn name(&self) -> &'static str {
        "propshare"
    }

    fn set_slots(&mut self, slots: u32, now: Instant) {
        self.config.tit_for_tat = self.config.tit_for_tat.clone().with_slots(slots);
        self.seeding.set_slots(slots, now);
        self.next_due = Some(now);
    }

    fn next_rechoke(&self) -> Option<Instant> {
        self.next_due
    }

    fn rechoke(
        &mut self,
        now: Instant,
        mode: Mode,
        peers: &[PeerSnapshot],
        rng: &mut dyn RngCore,
    ) -> Vec<Decision> {
        self.next_due = Some(now + self.interval());
        if mode == Mode::Seeding {
            self.last = self.seeding.rechoke(now, mode, peers, rng);
            return self.last.clone();
        }
        let mut contributors: Vec<&PeerSnapshot> = peers
            .iter()
            .filter(|p| p.interested && p.down_rate > 0.0)
            .collect();
        contributors.sort_by(|a, b| b.down_rate.total_cmp(&a.down_rate).then(a.key.cmp(&b.key)));
        contributors.truncate(self.config.tit_for_tat.slots().saturating_sub(1) as usize);
        let given: f64 = contributors.iter().map(|p| p.down_rate).sum();

        let tft = &self.config.tit_for_tat;
        let rotate = self
            .rounds
            .is_multiple_of(u64::from(tft.optimistic_every_n()));
        let paid = |k: PeerKey| contributors.iter().any(|p| p.key == k);
        let still_valid = self
            .optimistic
            .filter(|&k| !paid(k) && peers.iter().any(|p| p.key == k && p.interested));
        if rotate || still_valid.is_none() {
            let others = peers.iter().filter(|p| p.interested && !paid(p.key));
            self.optimistic = weighted_pick(
                others,
                now,
                tft.new_peer_window(),
                tft.new_peer_weight(),
                rng,
            );
        }
        let opt_share = match (self.optimistic, contributors.is_empty()) {
            (None, _) => 0.0,
            (Some(_), true) => 1.0,
            (Some(_), false) => self.config.optimistic_share,
        };
        self.rounds += 1;
        self.last = peers
            .iter()
            .map(|p| {
                if let Some(c) = contributors.iter().find(|c| c.key == p.key) {
                    let share = (1.0 - opt_share) * c.down_rate / given;
                    let reason = Reason::ProportionalShare {
                        share,
                        rate: c.down_rate,
                    };
                    Decision {
                        peer: p.key,
                        unchoke: true,
                        weight: share,
                        cap: None,
                        reason,
                    }
                } else if Some(p.key) == self.optimistic {
                    Decision {
                        peer: p.key,
                        unchoke: true,
                        weight: opt_share,
                        cap: None,
                        reason: Reason::Optimistic,
                    }
                } else if !p.interested {
                    Decision::choke(p.key, Reason::NotInterested)
                } else {
                    Decision::choke(p.key, Reason::NoContribution)
                }
            })
            .collect();
        self.last.clone()
    }

    fn on_peers_changed(
        &mut self,
        now: Instant,
        mode: Mode,
        peers: &[PeerSnapshot],
        rng: &mut dyn RngCore,
    ) -> Vec<Decision> {
        if mode == Mode::Seeding {
            return self.seeding.on_peers_changed(now, mode, peers, rng);
        }
        // Shares only change at a round; between rounds, departed or
        // uninterested peers lose theirs and an empty optimistic slot is
        // filled.
        let before: Vec<Decision> = std::mem::take(&mut self.last);
        let mut out: Vec<Decision> = peers
            .iter()
            .map(|p| match before.iter().find(|d| d.peer == p.key) {
                Some(d) if d.unchoke && p.interested => d.clone(),
                _ if !p.interested => Decision::choke(p.key, Reason::NotInterested),
                _ => Decision::choke(p.key, Reason::NoContribution),
            })
            .collect();
        if self
            .optimistic
            .is_some_and(|k| !out.iter().any(|d| d.peer == k && d.unchoke))
        {
            self.optimistic = None;
        }
        if self.optimistic.is_none() {
            let tft = &self.config.tit_for_tat;
            let choked = peers
                .iter()
                .filter(|p| p.interested && out.iter().any(|d| d.peer == p.key && !d.unchoke));
            self.optimistic = weighted_pick(
                choked,
                now,
                tft.new_peer_window(),
                tft.new_peer_weight(),
                rng,
            );
            let any_paid = out.iter().any(|d| d.unchoke);
            if let Some(d) = out.iter_mut().find(|d| Some(d.peer) == self.optimistic) {
                let weight = if any_paid {
                    self.config.optimistic_share
                } else {
                    1.0
                };
                *d = Decision {
                    peer: d.peer,
                    unchoke: true,
                    weight,
                    cap: None,
                    reason: Reason::Optimistic,
                };
            }
        }
        self.last = out.clone();
        out
    }
}
