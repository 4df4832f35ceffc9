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

    #[test]
    fn one_rank_reads_the_whole_batch_and_ranks_stride() {
        let g = [7, 3, 9, 1, 4];
        assert_eq!(shard(&g, 0, 1), g);
        assert_eq!(shard(&g, 0, 2), [7, 9, 4]);
        assert_eq!(shard(&g, 1, 2), [3, 1]);
        assert_eq!(shard(&[5], 1, 3), Vec::<usize>::new());
    }
}
