//! The data-parallel part of a checkpoint: how many ranks wrote it, the batch they shared, and
//! each rank's dropout stream, so that a resume with the same ranks continues bit-exactly.
//!
//! A different number of ranks is refused: the sampler's global micro-batch (ranks ×
//! per-device batch) fixes the data position and the step count, and the dropout streams
//! belong to the ranks that drew them.

use anyhow::{bail, Result};
use engine::rng::{splitmix64, RngState};
use serde::{Deserialize, Serialize};

/// Stored in `rng_state.json` of a checkpoint written by more than one rank.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataParallelState {
    pub world_size: usize,
    pub per_device_train_batch_size: usize,
    /// Ranks × per-device batch × gradient accumulation.
    pub global_train_batch_size: usize,
    /// Rank `r`'s dropout stream at the checkpoint, for `r = 0..world_size`.
    pub dropout: Vec<RngState>,
}

/// Rank `rank`'s dropout seed: the run's seed on rank 0 (a one-rank run is unchanged), a
/// distinct stream per other rank so that the ranks do not drop the same units.
pub fn rank_seed(seed: u64, rank: usize) -> u64 {
    if rank == 0 {
        seed
    } else {
        splitmix64(seed ^ (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

/// The dropout states of all ranks from the flat all-gather of `[seed, offset]` pairs.
pub fn states_from_gather(flat: &[u64]) -> Vec<RngState> {
    flat.chunks_exact(2)
        .map(|c| RngState {
            seed: c[0],
            offset: c[1],
        })
        .collect()
}

/// Checks a checkpoint against this run's ranks and returns this rank's dropout state (`None`
/// for a one-rank checkpoint resumed by one rank: its state is the checkpoint's own).
pub fn resume_state(
    saved: Option<&DataParallelState>,
    checkpoint: &str,
    world_size: usize,
    rank: usize,
) -> Result<Option<RngState>> {
    let saved_ranks = saved.map_or(1, |d| d.world_size);
    if saved_ranks != world_size {
        let batch = saved
            .map(|d| format!(" (global batch {})", d.global_train_batch_size))
            .unwrap_or_default();
        bail!(
            "{checkpoint} was written by {saved_ranks} rank(s){batch}, this run has \
             {world_size}: the data position and the dropout streams of a checkpoint belong to \
             its number of ranks; resume with {saved_ranks} rank(s) (mpirun -np {saved_ranks})"
        );
    }
    let Some(d) = saved else { return Ok(None) };
    match d.dropout.get(rank) {
        Some(s) if d.dropout.len() == world_size => Ok(Some(*s)),
        _ => bail!(
            "{checkpoint}: rng_state.json holds {} rank dropout states for {} ranks",
            d.dropout.len(),
            world_size
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(n: usize) -> DataParallelState {
        DataParallelState {
            world_size: n,
            per_device_train_batch_size: 2,
            global_train_batch_size: 4 * n,
            dropout: (0..n)
                .map(|r| RngState {
                    seed: rank_seed(5, r),
                    offset: 100 + r as u64,
                })
                .collect(),
        }
    }

    #[test]
    fn same_ranks_resume_each_with_its_own_stream() {
        let d = dp(3);
        for r in 0..3 {
            let s = resume_state(Some(&d), "checkpoint-4", 3, r)
                .unwrap()
                .unwrap();
            assert_eq!(s, d.dropout[r]);
        }
        assert_eq!(resume_state(None, "checkpoint-4", 1, 0).unwrap(), None);
    }

    #[test]
    fn another_number_of_ranks_is_refused_naming_both() {
        let e = resume_state(Some(&dp(2)), "checkpoint-4", 3, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("checkpoint-4") && e.contains("2 rank") && e.contains("has 3"));
        assert!(e.contains("mpirun -np 2"), "{e}");
        let e = resume_state(None, "checkpoint-4", 2, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 rank") && e.contains("has 2"), "{e}");
        let e = resume_state(Some(&dp(2)), "checkpoint-4", 1, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 rank") && e.contains("has 1"), "{e}");
    }

    #[test]
    fn rank_seeds_are_distinct_and_rank_zero_keeps_the_seed() {
        assert_eq!(rank_seed(42, 0), 42);
        let s: std::collections::BTreeSet<u64> = (0..64).map(|r| rank_seed(42, r)).collect();
        assert_eq!(s.len(), 64);
        let flat = [1, 2, 3, 4];
        assert_eq!(
            states_from_gather(&flat),
            vec![
                RngState { seed: 1, offset: 2 },
                RngState { seed: 3, offset: 4 }
            ]
        );
    }
}
