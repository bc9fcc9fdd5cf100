//! The lower bound on the time to distribute one file to every peer, from
//! Kumar & Ross, "Peer-Assisted File Distribution: The Minimum
//! Distribution Time" (2006):
//!
//! T_min = max(F / u_s, F / d_min, N·F / (u_s + Σ u_i))
//!
//! with F the file size, u_s the server's (here: all seeders') upload,
//! d_min the slowest peer's download, N the number of peers and u_i their
//! uploads. No schedule can beat it; a good swarm comes close.
//!
//! The formula as published, nothing subtracted, so sluice's ratios
//! compare with other clients' measured against it. Rate limits are token
//! buckets that may send a burst before the rate applies; sluice's hold
//! at most 100 ms of their rate (`ratelimit::BURST`), little enough that
//! a run cannot meaningfully beat the bound.

/// What the bound needs, in bytes and bytes per second. `None` rates are
/// unlimited.
#[derive(Debug, Clone)]
pub struct BoundInput {
    pub file_size: u64,
    /// Upload of every seeder together; `None` when any is unlimited.
    pub seeders_up: Option<f64>,
    /// Each downloading peer's upload (0 for a free-rider); `None` for an
    /// unlimited one.
    pub peers_up: Vec<Option<f64>>,
    /// Each downloading peer's download (the smaller of its download
    /// limit and its disk); `None` for unlimited.
    pub peers_down: Vec<Option<f64>>,
}

/// T_min in seconds, or `None` when nothing is limited (no finite bound
/// follows from the rates).
pub fn kumar_ross(input: &BoundInput) -> Option<f64> {
    let f = input.file_size as f64;
    let n = input.peers_up.len() as f64;
    if n == 0.0 {
        return Some(0.0);
    }
    let mut terms = Vec::with_capacity(3);
    if let Some(us) = input.seeders_up {
        terms.push(f / us);
    }
    if let Some(d_min) = input
        .peers_down
        .iter()
        .flatten()
        .copied()
        .min_by(f64::total_cmp)
    {
        terms.push(f / d_min);
    }
    let sum_peers: Option<f64> = input.peers_up.iter().copied().sum();
    if let (Some(us), Some(sum)) = (input.seeders_up, sum_peers) {
        terms.push(n * f / (us + sum));
    }
    terms.into_iter().max_by(f64::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    fn input(us: f64, up: &[f64], down: &[Option<f64>]) -> BoundInput {
        BoundInput {
            file_size: 100_000_000,
            seeders_up: Some(us),
            peers_up: up.iter().map(|&u| Some(u)).collect(),
            peers_down: down.to_vec(),
        }
    }

    #[test]
    fn the_seeder_term_binds_with_few_peers() {
        // 100 MB from a 10 MB/s seeder to one peer: 10 s.
        let b = kumar_ross(&input(10.0 * MB, &[5.0 * MB], &[None])).unwrap();
        assert!((b - 10.0).abs() < 1e-9, "{b}");
    }

    #[test]
    fn the_swarm_term_binds_with_many_peers() {
        // 15 peers at 5 MB/s and a 20 MB/s seeder: 15·100/(20+75) = 15.79 s
        // (> 100/20 = 5 s).
        let b = kumar_ross(&input(20.0 * MB, &[5.0 * MB; 15], &[None; 15])).unwrap();
        assert!((b - 1500.0 / 95.0).abs() < 1e-9, "{b}");
        // Free-riders add peers but no upload: 16·100/95.
        let mut up = vec![5.0 * MB; 15];
        up.push(0.0);
        let b = kumar_ross(&input(20.0 * MB, &up, &[None; 16])).unwrap();
        assert!((b - 1600.0 / 95.0).abs() < 1e-9, "{b}");
    }

    #[test]
    fn the_slowest_download_binds_when_it_is_slowest() {
        // A 2 MB/s disk: 50 s, whatever the uploads.
        let b = kumar_ross(&input(
            20.0 * MB,
            &[5.0 * MB; 3],
            &[None, Some(2.0 * MB), Some(8.0 * MB)],
        ))
        .unwrap();
        assert!((b - 50.0).abs() < 1e-9, "{b}");
    }

    #[test]
    fn unlimited_rates_give_no_bound() {
        let b = BoundInput {
            file_size: 1,
            seeders_up: None,
            peers_up: vec![None],
            peers_down: vec![None],
        };
        assert_eq!(kumar_ross(&b), None);
        assert_eq!(
            kumar_ross(&BoundInput {
                peers_up: vec![],
                peers_down: vec![],
                ..b
            }),
            Some(0.0)
        );
    }
}
