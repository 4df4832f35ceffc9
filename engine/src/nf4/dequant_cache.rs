//! Dequantized copies of frozen 4-bit weights, kept between products within a byte budget.
//!
//! A training step with activation recompute multiplies by each frozen weight three times
//! (forward, recomputed forward, backward). Dequantizing a weight once and keeping the fp32
//! copy lets every one of those products be a single GEMM over the whole weight, where the
//! tiled path ([`super::linear`]) dequantizes again on every call and multiplies tile by tile
//! (more operand packing, narrower products). Weights larger than the budget, or ones that
//! no longer fit, take the tiled path; nothing depends on which path ran beyond rounding of
//! the summation order (both are checked against the float64 reference).
//!
//! The cache holds at most [`budget_bytes`] of fp32 values (default
//! [`DEFAULT_BUDGET_BYTES`]); the least recently used copy is dropped first. With a budget
//! that holds every linear weight of a model, each weight is dequantized once per run, at the
//! memory cost of an fp32 copy of those weights; a budget of one decoder layer still serves
//! a layer's recompute and backward from one dequantization; 0 turns the cache off.
//! Entries refer to their weight weakly and disappear when it is dropped. The copies are
//! charged to the process-wide host memory counter ([`crate::memory::global_counter`]) while
//! the cache holds them, so the trainer's reported peak includes them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rayon::prelude::*;

use super::error::Nf4Error;
use super::weight::QuantizedWeight;

/// Default budget: 256 MiB of fp32 values.
pub const DEFAULT_BUDGET_BYTES: usize = 256 << 20;

static BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_BUDGET_BYTES);

static GLOBAL: Mutex<DequantCache> = Mutex::new(DequantCache::new());

/// Bytes of dequantized weights the process-wide cache may hold.
pub fn budget_bytes() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// Sets the process-wide budget (0 disables the cache); copies beyond it are dropped now.
pub fn set_budget_bytes(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
    if let Ok(mut c) = GLOBAL.lock() {
        c.evict_to(bytes, 0);
    }
}

/// The weight dequantized (in its stored dtype, widened to fp32, `[out, in]` row-major)
/// from the process-wide cache, dequantizing it now if absent; `None` when the weight does
/// not fit the budget.
pub fn dequantized(w: &Arc<QuantizedWeight>) -> Result<Option<Arc<Vec<f32>>>, Nf4Error> {
    let budget = budget_bytes();
    let bytes = fp32_bytes(w);
    if bytes > budget {
        return Ok(None);
    }
    if let Some(hit) = lock().get(w) {
        return Ok(Some(hit));
    }
    // Dequantize outside the lock: other threads may use the cache meanwhile. Two threads
    // missing on the same weight both dequantize; the values are identical.
    let values = Arc::new(dequantize_stored(w)?);
    lock().insert(w, values.clone(), budget);
    Ok(Some(values))
}

fn lock() -> std::sync::MutexGuard<'static, DequantCache> {
    // A panic while holding the lock leaves the cache consistent (every mutation is a
    // single push/remove), so a poisoned lock is still usable.
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fp32_bytes(w: &QuantizedWeight) -> usize {
    w.numel().saturating_mul(4)
}

/// Whole-weight dequantization, one row per task, rounded through the stored dtype as
/// bitsandbytes' `dequantize_4bit` output is.
fn dequantize_stored(w: &QuantizedWeight) -> Result<Vec<f32>, Nf4Error> {
    let k = w.in_features();
    let mut out = vec![f32::NAN; w.numel()];
    if k == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(k).enumerate().try_for_each(|(r, row)| {
        w.dequantize_rows_into(r..r + 1, row)?;
        w.round_to_stored(row);
        Ok(())
    })?;
    Ok(out)
}

struct Entry {
    weight: Weak<QuantizedWeight>,
    values: Arc<Vec<f32>>,
    last_use: u64,
}

/// Least-recently-used store of dequantized weights keyed by the weight's allocation. A
/// `Weak` keeps the allocation from being reused while its entry exists, so a key can never
/// match a different weight.
pub struct DequantCache {
    entries: Vec<Entry>,
    clock: u64,
    bytes: usize,
}

impl Default for DequantCache {
    fn default() -> Self {
        Self::new()
    }
}

impl DequantCache {
    pub const fn new() -> Self {
        DequantCache {
            entries: Vec::new(),
            clock: 0,
            bytes: 0,
        }
    }

    /// Bytes of fp32 values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of weights held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached copy of `w`, marked as just used.
    pub fn get(&mut self, w: &Arc<QuantizedWeight>) -> Option<Arc<Vec<f32>>> {
        self.drop_dead();
        self.clock += 1;
        let clock = self.clock;
        let key = Arc::downgrade(w);
        self.entries
            .iter_mut()
            .find(|e| Weak::ptr_eq(&e.weight, &key))
            .map(|e| {
                e.last_use = clock;
                e.values.clone()
            })
    }

    /// Stores `values` for `w`, first dropping least recently used copies until it fits
    /// `budget`; does nothing if it can never fit or is already present.
    pub fn insert(&mut self, w: &Arc<QuantizedWeight>, values: Arc<Vec<f32>>, budget: usize) {
        let size = values.len().saturating_mul(4);
        if size > budget {
            return;
        }
        self.drop_dead();
        let key = Arc::downgrade(w);
        if self.entries.iter().any(|e| Weak::ptr_eq(&e.weight, &key)) {
            return;
        }
        self.evict_to(budget, size);
        self.clock += 1;
        self.bytes += size;
        crate::memory::global_counter().alloc(size);
        self.entries.push(Entry {
            weight: key,
            values,
            last_use: self.clock,
        });
    }

    /// Drops least recently used copies until `room` more bytes fit within `budget`.
    pub fn evict_to(&mut self, budget: usize, room: usize) {
        while !self.entries.is_empty() && self.bytes + room > budget {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_use)
                .map(|(i, _)| i)
                .expect("not empty");
            let e = self.entries.swap_remove(oldest);
            self.bytes -= e.values.len() * 4;
            crate::memory::global_counter().free(e.values.len() * 4);
        }
    }

    /// Forgets copies of weights that no longer exist.
    fn drop_dead(&mut self) {
        let mut freed = 0;
        self.entries.retain(|e| {
            let alive = e.weight.strong_count() > 0;
            if !alive {
                freed += e.values.len() * 4;
            }
            alive
        });
        self.bytes -= freed;
        crate::memory::global_counter().free(freed);
    }
}

impl Drop for DequantCache {
    fn drop(&mut self) {
        crate::memory::global_counter().free(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nf4::QuantConfig;
    use crate::testing::Rng;

    fn weight(out: usize, inp: usize, seed: u64) -> Arc<QuantizedWeight> {
        let src = Rng::new(seed).vec_f32(out * inp, -1.0, 1.0);
        Arc::new(QuantizedWeight::quantize(&src, out, inp, QuantConfig::default()).unwrap())
    }

    #[test]
    fn dequantized_copy_is_the_stored_dequantization() {
        let w = weight(6, 128, 1);
        assert_eq!(dequantize_stored(&w).unwrap(), w.dequantize_stored_f32());
    }

    #[test]
    fn hits_evicts_least_recently_used_and_forgets_dropped_weights() {
        let (a, b, c) = (weight(4, 64, 1), weight(4, 64, 2), weight(4, 64, 3));
        let size = 4 * 64 * 4;
        let mut cache = DequantCache::new();
        let va = Arc::new(dequantize_stored(&a).unwrap());
        cache.insert(&a, va.clone(), 2 * size);
        cache.insert(&b, Arc::new(dequantize_stored(&b).unwrap()), 2 * size);
        assert_eq!((cache.len(), cache.bytes()), (2, 2 * size));
        // a becomes the most recent; inserting c must evict b.
        assert!(Arc::ptr_eq(&cache.get(&a).unwrap(), &va));
        cache.insert(&c, Arc::new(dequantize_stored(&c).unwrap()), 2 * size);
        assert!(cache.get(&b).is_none());
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some());
        assert_eq!(cache.bytes(), 2 * size);
        // A copy larger than the budget is not kept.
        let big = weight(8, 64, 4);
        cache.insert(
            &big,
            Arc::new(dequantize_stored(&big).unwrap()),
            2 * size - 1,
        );
        assert!(cache.get(&big).is_none());
        // Dropping a weight releases its copy.
        drop(a);
        assert!(cache.get(&c).is_some());
        assert_eq!((cache.len(), cache.bytes()), (1, size));
        cache.evict_to(0, 0);
        assert!(cache.is_empty() && cache.bytes() == 0);
    }

    #[test]
    fn an_equal_weight_elsewhere_is_a_different_key() {
        let a = weight(4, 64, 5);
        let twin = Arc::new((*a).clone());
        let mut cache = DequantCache::new();
        cache.insert(&a, Arc::new(dequantize_stored(&a).unwrap()), 1 << 20);
        assert!(cache.get(&twin).is_none());
    }
}
