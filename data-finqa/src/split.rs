//! Deterministic train/validation split.
//!
//! Like `datasets.Dataset.train_test_split(test_size=f, seed=s)`: `n_val = ceil(f * n)`, a
//! seeded permutation of `0..n`, the first `n_val` indices go to validation and the rest to
//! training. The permutation is [`SplitMix64`] Fisher-Yates (not numpy's), so the membership
//! differs from Hugging Face's, but is fixed for a given `(n, f, seed)`. Both lists are
//! returned in ascending order.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rng::SplitMix64;

/// Indices of the two parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainValSplit {
    /// Training indices, ascending.
    pub train: Vec<usize>,
    /// Validation indices, ascending.
    pub val: Vec<usize>,
}

impl TrainValSplit {
    /// The items of each part, in index order: `(train, val)`.
    pub fn apply<T: Clone>(&self, items: &[T]) -> (Vec<T>, Vec<T>) {
        let pick = |idx: &[usize]| idx.iter().filter_map(|&i| items.get(i).cloned()).collect();
        (pick(&self.train), pick(&self.val))
    }
}

/// Splits `0..n` into train and validation; `val_fraction` in `[0, 1)`. `n_val` is computed in
/// f64 exactly as Hugging Face does (so 0.1 x 30 rounds up to 4), and capped at `n - 1` so that
/// training keeps at least one example.
pub fn split_train_val(n: usize, val_fraction: f64, seed: u64) -> Result<TrainValSplit> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(DataError::InvalidOption {
            name: "val_fraction",
            message: format!("must be in [0, 1), got {val_fraction}"),
        });
    }
    let n_val = (val_fraction * n as f64).ceil() as usize;
    let n_val = n_val.min(n.saturating_sub(1));
    let mut perm: Vec<usize> = (0..n).collect();
    SplitMix64::for_stream(seed, 0x5b1f_7a11).shuffle(&mut perm);
    let mut val = perm[..n_val].to_vec();
    let mut train = perm[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok(TrainValSplit { train, val })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_disjoint_and_sized() {
        let a = split_train_val(6251, 0.1, 42).unwrap();
        let b = split_train_val(6251, 0.1, 42).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.val.len(), 626); // ceil(625.1)
        assert_eq!(a.train.len(), 6251 - 626);
        let mut all: Vec<usize> = a.train.iter().chain(&a.val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..6251).collect::<Vec<_>>());
        let c = split_train_val(6251, 0.1, 43).unwrap();
        assert_ne!(a.val, c.val);
        // Not a contiguous block.
        assert!(a.val.windows(2).any(|w| w[1] - w[0] > 1));
    }

    #[test]
    fn split_edges() {
        assert!(split_train_val(10, 1.0, 0).is_err());
        assert!(split_train_val(10, -0.1, 0).is_err());
        assert!(split_train_val(10, f64::NAN, 0).is_err());
        let s = split_train_val(10, 0.0, 0).unwrap();
        assert!(s.val.is_empty());
        assert_eq!(s.train.len(), 10);
        let one = split_train_val(1, 0.5, 0).unwrap();
        assert_eq!(one.train, vec![0]);
        let items: Vec<char> = "abcdefghij".chars().collect();
        let s = split_train_val(10, 0.3, 5).unwrap();
        let (train, val) = s.apply(&items);
        assert_eq!(val, s.val.iter().map(|&i| items[i]).collect::<Vec<_>>());
        assert_eq!(train.len() + val.len(), 10);
    }
}
