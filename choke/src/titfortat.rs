//! BitTorrent's tit-for-tat choker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::RngCore;
use rand::seq::SliceRandom;

use crate::{Choker, Decision, Mode, PeerKey, PeerSnapshot, Reason, weighted_pick};

/// How slots are given while seeding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SeedMode {
    /// To the peers we upload to fastest.
    FastestUpload,
    /// In turn: a peer keeps its slot until it has received `quota` bytes
    /// or held it for `max_time`, then the peers that waited longest go
    /// first.
    RoundRobin { quota: u64, max_time: Duration },
    /// To the peers we have uploaded the least to so far: every
    /// interested peer ends up with the same bytes from us, however fast
    /// it can take them (a fast free-rider gets no more than its share).
    LeastServed,
}

/// Tit-for-tat settings. Defaults follow BitTorrent.
#[derive(Debug, Clone)]
pub struct TitForTatConfig {
    slots: u32,
    rechoke_interval: Duration,
    optimistic_every: u32,
    new_peer_window: Duration,
    new_peer_weight: u32,
    snub_timeout: Duration,
    seed_mode: SeedMode,
    hoard_after: u32,
}

impl Default for TitForTatConfig {
    fn default() -> Self {
        Self {
            slots: 4,
            rechoke_interval: Duration::from_secs(10),
            optimistic_every: 3,
            new_peer_window: Duration::from_secs(60),
            new_peer_weight: 3,
            snub_timeout: Duration::from_secs(60),
            seed_mode: SeedMode::FastestUpload,
            hoard_after: 8,
        }
    }
}

impl TitForTatConfig {
    /// Upload slots in all, one of them optimistic. Default 4.
    pub fn with_slots(mut self, slots: u32) -> Self {
        self.slots = slots.max(1);
        self
    }

    /// Time between rechokes. Default 10 s.
    pub fn with_rechoke_interval(mut self, d: Duration) -> Self {
        self.rechoke_interval = d;
        self
    }

    /// The optimistic slot rotates every this many rechokes. Default 3.
    pub fn with_optimistic_every(mut self, n: u32) -> Self {
        self.optimistic_every = n.max(1);
        self
    }

    /// Peers connected within this window are `new_peer_weight`× as likely
    /// to win the optimistic slot. Default 60 s, 3×.
    pub fn with_new_peers(mut self, window: Duration, weight: u32) -> Self {
        self.new_peer_window = window;
        self.new_peer_weight = weight.max(1);
        self
    }

    /// An unchoked peer that sent no block for this long is snubbed.
    /// Default 60 s.
    pub fn with_snub_timeout(mut self, d: Duration) -> Self {
        self.snub_timeout = d;
        self
    }

    /// Slot policy while seeding. Default fastest upload.
    pub fn with_seed_mode(mut self, mode: SeedMode) -> Self {
        self.seed_mode = mode;
        self
    }

    /// A peer we sent this many pieces nobody else had from us, none of
    /// which reached another peer (judged two rechokes after the first),
    /// gave nothing back — provided some other peer does pass pieces on.
    /// This is how a seeder, which has nothing to reciprocate, tells a
    /// free-rider from a contributor (the idea behind BEP 16's
    /// super-seeding). Default 8.
    pub fn with_hoard_after(mut self, pieces: u32) -> Self {
        self.hoard_after = pieces.max(1);
        self
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn rechoke_interval(&self) -> Duration {
        self.rechoke_interval
    }

    pub(crate) fn optimistic_every_n(&self) -> u32 {
        self.optimistic_every
    }

    pub(crate) fn new_peer_window(&self) -> Duration {
        self.new_peer_window
    }

    pub(crate) fn new_peer_weight(&self) -> u32 {
        self.new_peer_weight
    }
}

#[derive(Debug, Clone)]
struct Held {
    since: Instant,
    uploaded_at_start: u64,
    /// A regular slot (not the optimistic one): only these keep their turn
    /// in round-robin seeding.
    regular: bool,
}

/// The tit-for-tat choker. See the crate docs for the calling order.
#[derive(Debug)]
pub struct TitForTat {
    config: TitForTatConfig,
    /// Peers holding a slot (regular or optimistic) and since when.
    held: HashMap<PeerKey, Held>,
    optimistic: Option<PeerKey>,
    /// Snubbed peers and when they were snubbed.
    snubbed: HashMap<PeerKey, Instant>,
    /// When each peer last lost its slot (round-robin seeding order).
    last_turn: HashMap<PeerKey, Instant>,
    /// When we first unchoked each peer (any slot) while leeching: one
    /// that sent us nothing since did not reciprocate. Kept after we
    /// complete, so our seeding favours the peers that gave.
    optimistic_turn: HashMap<PeerKey, Instant>,
    /// Peers judged not to reciprocate, until they send a block.
    judged: std::collections::HashSet<PeerKey>,
    /// Some peer passed on a piece only we had sent it (so pieces do
    /// travel between our peers, and one that keeps them is telling).
    others_pass_on: bool,
    last: HashMap<PeerKey, Decision>,
    rechokes: u64,
    /// The rechoke at which a peer that gave nothing back last got the
    /// optimistic slot.
    ungrateful_turn: Option<u64>,
    next_due: Option<Instant>,
}

impl TitForTat {
    pub fn new(config: TitForTatConfig) -> Self {
        Self {
            config,
            held: HashMap::new(),
            optimistic: None,
            snubbed: HashMap::new(),
            last_turn: HashMap::new(),
            optimistic_turn: HashMap::new(),
            judged: std::collections::HashSet::new(),
            others_pass_on: false,
            last: HashMap::new(),
            rechokes: 0,
            ungrateful_turn: None,
            next_due: None,
        }
    }

    pub fn config(&self) -> &TitForTatConfig {
        &self.config
    }

    fn regular_slots(&self) -> u32 {
        self.config.slots.saturating_sub(1)
    }

    /// It gave nothing back, in one of two ways:
    /// - we first unchoked it while leeching at least two rechokes ago
    ///   (time to see our upload and rank us) and, though it had pieces we
    ///   wanted, it has sent us nothing since (still true once we seed);
    /// - it hoards: of the pieces only we had sent it (`hoard_after` or
    ///   more, the first two rechokes ago), no other peer announced one.
    fn ungrateful(&self, now: Instant, mode: Mode, p: &PeerSnapshot) -> bool {
        self.unreciprocated(now, mode, p) || self.hoards(now, p)
    }

    /// Of the pieces only we had sent it (`hoard_after` or more, the first
    /// two rechokes ago), no other peer announced one, and it sent us no
    /// block since: strong evidence of a free-rider, where a silent peer in
    /// a large swarm may simply have its slots full. Judged only while some
    /// other peer of ours does pass pieces on: a lone downloader, or
    /// downloaders that cannot reach each other, have no one to pass to.
    fn hoards(&self, now: Instant, p: &PeerSnapshot) -> bool {
        self.others_pass_on
            && p.sole_pieces >= self.config.hoard_after
            && p.spread_pieces == 0
            && p.first_sole_at.is_some_and(|at| {
                now.saturating_duration_since(at) >= self.config.rechoke_interval * 2
                    && p.last_block_at.is_none_or(|b| b < at)
            })
    }

    /// The first way above: judged now, or earlier and not forgiven since
    /// (a block from it after its turn). Once judged it stays so while we
    /// want nothing of its: late in a download a free-rider has little we
    /// lack, and that must not clear it.
    fn unreciprocated(&self, now: Instant, mode: Mode, p: &PeerSnapshot) -> bool {
        self.judged.contains(&p.key) || self.unreciprocated_now(now, mode, p)
    }

    fn unreciprocated_now(&self, now: Instant, mode: Mode, p: &PeerSnapshot) -> bool {
        let period = self.config.rechoke_interval * 2;
        // While leeching, a peer with nothing we want cannot give back.
        (mode == Mode::Seeding || p.we_are_interested)
            && self.optimistic_turn.get(&p.key).is_some_and(|&turn| {
                now.saturating_duration_since(turn) >= period
                    && p.last_block_at.is_none_or(|b| b < turn)
            })
    }

    /// The optimistic pick among `candidates`: peers that gave nothing
    /// back only when nobody else is left, and then only one rechoke in
    /// `slots × optimistic_every` (an optimistic turn is a bet that a peer
    /// will reciprocate; these already lost it). Meanwhile the slot stays
    /// empty and our upload goes to the peers in regular slots.
    fn pick_optimistic<'a>(
        &mut self,
        now: Instant,
        mode: Mode,
        candidates: impl Iterator<Item = &'a PeerSnapshot>,
        rng: &mut dyn RngCore,
    ) -> Option<PeerKey> {
        let (fair, ungrateful): (Vec<&PeerSnapshot>, Vec<&PeerSnapshot>) =
            candidates.partition(|p| !self.ungrateful(now, mode, p));
        let cfg = &self.config;
        let pick = |pool: Vec<&PeerSnapshot>, rng: &mut dyn RngCore| {
            weighted_pick(
                pool.into_iter(),
                now,
                cfg.new_peer_window,
                cfg.new_peer_weight,
                rng,
            )
        };
        if !fair.is_empty() {
            return pick(fair, rng);
        }
        let cycle = u64::from(cfg.slots) * u64::from(cfg.optimistic_every);
        if self
            .ungrateful_turn
            .is_some_and(|at| self.rechokes < at + cycle)
        {
            return None;
        }
        let key = pick(ungrateful, rng)?;
        self.ungrateful_turn = Some(self.rechokes);
        Some(key)
    }

    /// Drops state of peers that are gone; updates snub flags.
    fn observe(&mut self, now: Instant, mode: Mode, peers: &[PeerSnapshot]) {
        self.others_pass_on = peers.iter().any(|p| p.spread_pieces > 0);
        let present: HashMap<PeerKey, &PeerSnapshot> = peers.iter().map(|p| (p.key, p)).collect();
        self.held.retain(|k, _| present.contains_key(k));
        self.snubbed.retain(|k, _| present.contains_key(k));
        self.last_turn.retain(|k, _| present.contains_key(k));
        self.optimistic_turn.retain(|k, _| present.contains_key(k));
        self.last.retain(|k, _| present.contains_key(k));
        let judged: Vec<PeerKey> = peers
            .iter()
            .filter(|p| self.unreciprocated_now(now, mode, p))
            .map(|p| p.key)
            .collect();
        self.judged.extend(judged);
        let turns = &self.optimistic_turn;
        self.judged.retain(|k| {
            present
                .get(k)
                .is_some_and(|p| match (turns.get(k), p.last_block_at) {
                    (Some(turn), Some(block)) => block < *turn,
                    _ => true,
                })
        });
        if self.optimistic.is_some_and(|k| !present.contains_key(&k)) {
            self.optimistic = None;
        }
        if mode == Mode::Seeding {
            // Nobody owes a seeder anything.
            self.snubbed.clear();
            return;
        }
        // A snubbed peer that sent a block since is forgiven.
        self.snubbed
            .retain(|k, at| present[k].last_block_at.is_none_or(|b| b <= *at));
        for (k, held) in &self.held {
            let p = present[k];
            if !p.we_are_interested {
                // It cannot owe us blocks we do not want.
                continue;
            }
            let quiet_since = p.last_block_at.map_or(held.since, |b| b.max(held.since));
            if now.saturating_duration_since(quiet_since) >= self.config.snub_timeout {
                self.snubbed.entry(*k).or_insert(now);
            }
        }
    }

    /// Interested, unsnubbed peers best first, ties broken by the RNG.
    fn ranking<'a>(
        &self,
        now: Instant,
        mode: Mode,
        peers: &'a [PeerSnapshot],
        rng: &mut dyn RngCore,
    ) -> Vec<&'a PeerSnapshot> {
        let mut ranked: Vec<&PeerSnapshot> = peers
            .iter()
            .filter(|p| p.interested && !self.snubbed.contains_key(&p.key))
            .collect();
        // Shuffle first so the stable sorts below break ties at random.
        ranked.shuffle(rng);
        match (mode, self.config.seed_mode) {
            (Mode::Leeching, _) => ranked.sort_by(|a, b| b.down_rate.total_cmp(&a.down_rate)),
            (Mode::Seeding, SeedMode::FastestUpload) => {
                ranked.sort_by(|a, b| b.up_rate.total_cmp(&a.up_rate));
            }
            (Mode::Seeding, SeedMode::LeastServed) => ranked.sort_by_key(|p| p.uploaded),
            (Mode::Seeding, SeedMode::RoundRobin { quota, max_time }) => {
                let key = |p: &PeerSnapshot| match self.held.get(&p.key) {
                    Some(h)
                        if h.regular
                            && p.uploaded.saturating_sub(h.uploaded_at_start) < quota
                            && now.saturating_duration_since(h.since) < max_time =>
                    {
                        (0, Some(h.since))
                    }
                    Some(h) if h.regular => (2, None),
                    Some(_) => (1, self.last_turn.get(&p.key).copied()),
                    // Never had a turn sorts before any instant.
                    None => (1, self.last_turn.get(&p.key).copied()),
                };
                ranked.sort_by_key(|p| key(p));
            }
        }
        // Peers that gave nothing back: while we leech, no regular slot
        // (our upload buys reciprocation, and the peers in slots take
        // it); while we seed, after everyone else, so they get a slot
        // only when nobody else wants it (no slot is left empty).
        match mode {
            Mode::Leeching => ranked.retain(|p| !self.ungrateful(now, mode, p)),
            Mode::Seeding => ranked.sort_by_key(|p| self.ungrateful(now, mode, p)),
        }
        ranked
    }

    fn turn_used(&self, now: Instant, p: &PeerSnapshot) -> bool {
        match (self.config.seed_mode, self.held.get(&p.key)) {
            (SeedMode::RoundRobin { quota, max_time }, Some(h)) if h.regular => {
                p.uploaded.saturating_sub(h.uploaded_at_start) >= quota
                    || now.saturating_duration_since(h.since) >= max_time
            }
            _ => false,
        }
    }

    fn slot_reason(&self, mode: Mode, rank: u32, p: &PeerSnapshot) -> Reason {
        let slots = self.regular_slots();
        match (mode, self.config.seed_mode) {
            (Mode::Leeching, _) => Reason::RegularSlot {
                rank,
                slots,
                rate: p.down_rate,
            },
            (Mode::Seeding, SeedMode::FastestUpload | SeedMode::LeastServed) => {
                Reason::SeedingSlot {
                    rank,
                    slots,
                    rate: p.up_rate,
                }
            }
            (Mode::Seeding, SeedMode::RoundRobin { .. }) => Reason::SeedingTurn { rank, slots },
        }
    }

    fn choked_reason(
        &self,
        now: Instant,
        mode: Mode,
        p: &PeerSnapshot,
        rank: Option<u32>,
    ) -> Reason {
        if !p.interested {
            Reason::NotInterested
        } else if self.ungrateful(now, mode, p) {
            Reason::NoReciprocation
        } else if self.snubbed.contains_key(&p.key) {
            Reason::Snubbed
        } else if mode == Mode::Seeding && self.turn_used(now, p) {
            Reason::SeedingTurnUsed {
                rank: rank.unwrap_or(0),
            }
        } else {
            Reason::SlotsFull {
                rank: rank.unwrap_or(0),
            }
        }
    }

    /// Records who now holds a slot and returns the decisions in `peers`
    /// order.
    fn commit(
        &mut self,
        now: Instant,
        mode: Mode,
        peers: &[PeerSnapshot],
        decided: HashMap<PeerKey, Decision>,
    ) -> Vec<Decision> {
        let mut out = Vec::with_capacity(peers.len());
        let share = 1.0 / f64::from(self.config.slots);
        for p in peers {
            let mut d = decided[&p.key].clone();
            // A hoarder holds a slot only when nobody else wanted it: it
            // gets what an optimistic turn would give it, no more.
            d.cap = (d.unchoke && self.hoards(now, p)).then_some(share);
            if d.unchoke {
                let regular = !d.is_optimistic();
                if mode == Mode::Leeching {
                    self.optimistic_turn.entry(p.key).or_insert(now);
                }
                let held = self.held.entry(p.key).or_insert(Held {
                    since: now,
                    uploaded_at_start: p.uploaded,
                    regular,
                });
                if regular && !held.regular {
                    // Promoted from optimistic: its regular turn starts now.
                    *held = Held {
                        since: now,
                        uploaded_at_start: p.uploaded,
                        regular,
                    };
                }
                held.regular = regular;
            } else if self.held.remove(&p.key).is_some() {
                self.last_turn.insert(p.key, now);
            }
            self.last.insert(p.key, d.clone());
            out.push(d);
        }
        out
    }
}

impl Choker for TitForTat {
    fn name(&self) -> &'static str {
        "tit-for-tat"
    }

    fn set_slots(&mut self, slots: u32, now: Instant) {
        self.config.slots = slots.max(1);
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
        self.observe(now, mode, peers);
        let ranked = self.ranking(now, mode, peers, rng);
        let regular: Vec<PeerKey> = ranked
            .iter()
            .take(self.regular_slots() as usize)
            .map(|p| p.key)
            .collect();

        // The optimistic slot: kept between rotations while its holder is
        // still a valid pick; otherwise drawn again.
        let rotate = self
            .rechokes
            .is_multiple_of(u64::from(self.config.optimistic_every));
        let valid =
            |k: PeerKey| peers.iter().any(|p| p.key == k && p.interested) && !regular.contains(&k);
        // A holder that has not reciprocated loses the rest of its turn.
        let current = self.optimistic.filter(|&k| {
            valid(k)
                && !peers
                    .iter()
                    .any(|p| p.key == k && self.ungrateful(now, mode, p))
        });
        self.optimistic = match current {
            Some(k) if !rotate => Some(k),
            _ => {
                let others: Vec<&PeerSnapshot> = peers
                    .iter()
                    .filter(|p| p.interested && !regular.contains(&p.key) && Some(p.key) != current)
                    .collect();
                // The turn passes to someone else, but not to a peer that
                // gave nothing back while the holder still may keep it.
                let any_fair = others.iter().any(|p| !self.ungrateful(now, mode, p));
                if current.is_some() && !any_fair {
                    current
                } else {
                    self.pick_optimistic(now, mode, others.into_iter(), rng)
                        .or(current)
                }
            }
        };

        let mut decided = HashMap::with_capacity(peers.len());
        for (i, p) in ranked.iter().enumerate() {
            let rank = i as u32 + 1;
            let d = if i < regular.len() {
                Decision::unchoke(p.key, self.slot_reason(mode, rank, p))
            } else if Some(p.key) == self.optimistic {
                Decision::unchoke(p.key, Reason::Optimistic)
            } else {
                Decision::choke(p.key, self.choked_reason(now, mode, p, Some(rank)))
            };
            decided.insert(p.key, d);
        }
        for p in peers {
            if decided.contains_key(&p.key) {
                continue;
            }
            let d = if Some(p.key) == self.optimistic {
                Decision::unchoke(p.key, Reason::Optimistic)
            } else {
                Decision::choke(p.key, self.choked_reason(now, mode, p, None))
            };
            decided.insert(p.key, d);
        }
        self.rechokes += 1;
        self.next_due = Some(now + self.config.rechoke_interval);
        self.commit(now, mode, peers, decided)
    }

    fn on_peers_changed(
        &mut self,
        now: Instant,
        mode: Mode,
        peers: &[PeerSnapshot],
        rng: &mut dyn RngCore,
    ) -> Vec<Decision> {
        self.observe(now, mode, peers);
        let mut decided: HashMap<PeerKey, Decision> = HashMap::with_capacity(peers.len());
        // Keep what still holds: an unchoked peer that is still interested.
        for p in peers {
            // A peer snubbed since the last rechoke keeps only an
            // optimistic slot.
            let kept = self
                .last
                .get(&p.key)
                .filter(|d| {
                    d.unchoke
                        && p.interested
                        && (d.is_optimistic() || !self.snubbed.contains_key(&p.key))
                })
                .cloned();
            let d = kept
                .unwrap_or_else(|| Decision::choke(p.key, self.choked_reason(now, mode, p, None)));
            decided.insert(p.key, d);
        }
        if self.optimistic.is_some_and(|k| !decided[&k].unchoke) {
            self.optimistic = None;
        }
        // Fill empty slots at once: regular ones by rank, then the
        // optimistic one.
        let ranked = self.ranking(now, mode, peers, rng);
        let mut regular_held = decided
            .values()
            .filter(|d| d.unchoke && !d.is_optimistic())
            .count() as u32;
        for p in ranked {
            if regular_held >= self.regular_slots() {
                break;
            }
            if !decided[&p.key].unchoke {
                regular_held += 1;
                let reason = self.slot_reason(mode, regular_held, p);
                decided.insert(p.key, Decision::unchoke(p.key, reason));
            }
        }
        if self.optimistic.is_none() && self.config.slots > self.regular_slots() {
            let choked = peers
                .iter()
                .filter(|p| p.interested && !decided[&p.key].unchoke);
            self.optimistic = self.pick_optimistic(now, mode, choked, rng);
            if let Some(k) = self.optimistic {
                decided.insert(k, Decision::unchoke(k, Reason::Optimistic));
            }
        }
        self.commit(now, mode, peers, decided)
    }
}
