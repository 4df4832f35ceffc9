//! What a data-parallel run of a configuration looks like before it starts (`trainer info
//! --ranks N`): the global batch and the bytes the gradient all-reduce moves per step.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DataParallelPlan {
    pub ranks: usize,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// ranks × per-device batch × gradient accumulation: examples per optimizer step.
    pub global_batch: usize,
    /// The LoRA gradients summed over the ranks once per optimizer step (f32).
    pub allreduce_bytes_per_step: usize,
    /// Bytes each rank sends and receives in a ring all-reduce (NCCL's): 2·(N−1)/N of the
    /// gradients.
    pub ring_bytes_per_rank: usize,
    /// Bytes through rank 0 in the host-memory path (gather, then broadcast): 2·(N−1) times
    /// the gradients.
    pub host_path_bytes_at_root: usize,
}

impl DataParallelPlan {
    pub fn new(ranks: usize, batch: usize, accumulation: usize, trainable: usize) -> Self {
        let bytes = 4 * trainable;
        let n = ranks.max(1);
        DataParallelPlan {
            ranks: n,
            per_device_train_batch_size: batch,
            gradient_accumulation_steps: accumulation,
            global_batch: n * batch * accumulation,
            allreduce_bytes_per_step: bytes,
            ring_bytes_per_rank: 2 * (n - 1) * bytes / n,
            host_path_bytes_at_root: 2 * (n - 1) * bytes,
        }
    }

    /// The lines `trainer info` prints.
    pub fn lines(&self) -> Vec<String> {
        let mb = |b: usize| format!("{:.2} MB", b as f64 / 1e6);
        vec![
            format!(
                "data parallel: {} rank(s) x {} per device x {} accumulation = global batch {}",
                self.ranks,
                self.per_device_train_batch_size,
                self.gradient_accumulation_steps,
                self.global_batch
            ),
            format!(
                "  gradients all-reduced per optimizer step: {} (NCCL ring: {} in and out per \
                 rank; host path over MPI: {} through rank 0)",
                mb(self.allreduce_bytes_per_step),
                mb(self.ring_bytes_per_rank),
                mb(self.host_path_bytes_at_root)
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::DataParallelPlan;

    #[test]
    fn falcon_7b_r8_qkv_gradients_are_9_4_mb() {
        // 32 layers × r·(in + out) = 32 × 8 × (4544 + 4672).
        let p = DataParallelPlan::new(8, 2, 8, 32 * 8 * (4544 + 4672));
        assert_eq!(p.global_batch, 128);
        assert_eq!(p.allreduce_bytes_per_step, 9_437_184);
        assert_eq!(p.ring_bytes_per_rank, 2 * 7 * 9_437_184 / 8);
        assert_eq!(p.host_path_bytes_at_root, 14 * 9_437_184);
        let one = DataParallelPlan::new(1, 2, 8, 100);
        assert_eq!(
            (one.ring_bytes_per_rank, one.host_path_bytes_at_root),
            (0, 0)
        );
        assert!(p.lines()[0].contains("global batch 128"));
    }
}
