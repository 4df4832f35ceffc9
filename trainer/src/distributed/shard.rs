//! Which examples of a global micro-batch a rank reads.
//!
//! The sampler gives every rank the same global micro-batch of `N × b` example indices (same
//! seed, same epoch order); rank `r` of `N` keeps positions `r, r + N, r + 2N, ...`, as torch's
//! `DistributedSampler` strides its index list. The shards are disjoint and together hold
//! every index once; a short last batch of an epoch leaves the high ranks with fewer examples
//! (possibly none), which then contribute no gradient rather than a padded duplicate, so the
//! window's loss stays the exact token mean over the examples the single-rank run would see.

/// The indices of `global` that rank `rank` of `size` reads, in order.
pub fn shard(global: &[usize], rank: usize, size: usize) -> Vec<usize> {
    debug_assert!(size > 0 && rank < size);
    global
        .iter()
        .skip(rank)
        .step_by(size.max(1))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::shard;
    use proptest::prelude::*;

    proptest! {
        /// Disjoint and covering: every index of the global batch is read by exactly one rank,
        /// and each rank reads at most ⌈len/N⌉ examples.
        #[test]
        fn shards_are_disjoint_and_cover_the_batch(
            global in proptest::collection::vec(0usize..10_000, 0..40)
                .prop_map(|mut v| { v.sort_unstable(); v.dedup(); v }),
            size in 1usize..9,
        ) {
            let mut seen = vec![];
            for r in 0..size {
                let s = shard(&global, r, size);
                prop_assert!(s.len() <= global.len().div_ceil(size));
                seen.extend(s);
            }
            seen.sort_unstable();
            prop_assert_eq!(seen, global);
        }
    }

    /// The sampler's real windows over two epochs (shuffled, length-grouped, a short last
    /// batch): the ranks' shards of every global micro-batch are disjoint and cover it, and a
    /// window read by N ranks holds exactly the examples of the one-rank window.
    #[test]
    fn the_sampler_windows_are_split_without_loss_or_overlap() {
        use data_finqa::{Sampler, SamplerConfig};
        let lengths: Vec<usize> = (0..23).map(|i| 5 + (i * 7) % 13).collect();
        for (ranks, b) in [(2, 2), (3, 1), (3, 4)] {
            let mut cfg = SamplerConfig::new(ranks * b, 9);
            cfg.group_by_length = true;
            let mut s = Sampler::new(lengths.clone(), cfg).unwrap();
            let mut seen_in_epoch = vec![0usize; lengths.len()];
            for _ in 0..s.batches_per_epoch() {
                let global = s.next_batch();
                let mut union: Vec<usize> =
                    (0..ranks).flat_map(|r| shard(&global, r, ranks)).collect();
                for r in 0..ranks {
                    assert!(shard(&global, r, ranks).len() <= b);
                }
                union.sort_unstable();
                let mut g = global.clone();
                g.sort_unstable();
                assert_eq!(union, g, "ranks {ranks} × {b}");
                for i in global {
                    seen_in_epoch[i] += 1;
                }
            }
            assert!(
                seen_in_epoch.iter().all(|&c| c == 1),
                "every example once per epoch"
            );
        }
    }

    #[test]
    fn one_rank_reads_the_whole_batch_and_ranks_stride() {
        let g = [7, 3, 9, 1, 4];
        assert_eq!(shard(&g, 0, 1), g);
        assert_eq!(shard(&g, 0, 2), [7, 9, 4]);
        assert_eq!(shard(&g, 1, 2), [3, 1]);
        assert_eq!(shard(&[5], 1, 3), Vec::<usize>::new());
    }
}
