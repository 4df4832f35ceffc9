//! Data-parallel training: N ranks, each with a full copy of the model and the adapters, each
//! reading a disjoint shard of every accumulation window (Hugging Face Trainer + accelerate
//! semantics).
//!
//! - Global batch = ranks × per-device batch × gradient accumulation. The sampler hands out
//!   *global* micro-batches of `ranks × per-device batch` examples, the same on every rank (same
//!   seed); rank `r` keeps elements `r, r + N, r + 2N, ...` of each ([`shard`], as torch's
//!   `DistributedSampler` assigns them).
//! - The loss stays the exact token-level mean over the whole global window: the window's
//!   target-token count is summed over the ranks before the first forward, and every rank
//!   divides its summed cross-entropy by that global count.
//! - After the window's backward passes, the LoRA gradients are summed over the ranks in rank
//!   order ([`Collective::all_reduce_sum_f32`]) before clipping; AdamW then runs replicated and
//!   gives the same adapters on every rank.
//! - Rank 0 alone logs, evaluates and writes checkpoints and the adapter; each rank's dropout
//!   stream goes into the checkpoint ([`ranks`]).
//!
//! A [`Collective`] is the one seam: [`SingleRank`] does nothing (the plain build), the `mpi`
//! feature adds MPI (host memory) and NCCL (device memory) implementations.

pub mod launch;
pub mod plan;
pub mod ranks;
pub mod reduce;
pub mod shard;

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "mpi")]
pub mod nccl;

use anyhow::Result;
use model_falcon::DeviceRequest;

/// Collective operations over the ranks of a data-parallel run. Every rank must call the same
/// operations in the same order with buffers of the same length.
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Rank among the processes of this node (picks the GPU).
    fn local_rank(&self) -> usize;
    /// Element-wise sum over the ranks, in place. Every rank ends with the same bits, and the
    /// same inputs give the same result on every run (a fixed summation order).
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// As [`Collective::all_reduce_sum_f32`], for losses and other f64 sums.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// As [`Collective::all_reduce_sum_f32`], for token counts (exact).
    fn all_reduce_sum_u64(&self, buf: &mut [u64]) -> Result<()>;
    /// Every rank's `mine` (all of the same length), concatenated in rank order.
    fn all_gather_u64(&self, mine: &[u64]) -> Result<Vec<u64>>;
    /// Ends every rank of the job with `code` (after an error on this rank, so that no other
    /// rank waits forever in a collective).
    fn abort(&self, code: i32) -> !;
    /// What the transport is, for the log: "1 rank", "MPI (host memory), 2 ranks".
    fn describe(&self) -> String;
    /// True on the rank that logs, evaluates and saves.
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
}

/// One process, no communication: every operation leaves its buffer as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_u64(&self, _: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn all_gather_u64(&self, mine: &[u64]) -> Result<Vec<u64>> {
        Ok(mine.to_vec())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "1 rank".into()
    }
}

/// The collective this process runs under and the device it trains on.
///
/// Under an MPI launcher (with `--features mpi`): MPI, and NCCL on top when the rank's device
/// is a GPU and libnccl loads on every rank (else the gradients go through host memory, with a
/// note). Otherwise [`SingleRank`] and the device as requested. A multi-rank launch of a
/// binary built without MPI is an error, since every rank would train alone on all the data.
pub fn init(req: DeviceRequest) -> Result<(Box<dyn Collective>, DeviceRequest)> {
    let launched = launch::launcher_world_size();
    #[cfg(feature = "mpi")]
    {
        if launched.is_some() {
            return init_mpi(req);
        }
    }
    #[cfg(not(feature = "mpi"))]
    {
        if let Some((n, var)) = launched.filter(|(n, _)| *n > 1) {
            anyhow::bail!(
                "started by a launcher as one of {n} ranks ({var}), but this trainer was built \
                 without MPI, so every rank would train alone on all of the data; rebuild with \
                 `cargo build --release -p trainer --features mpi`"
            );
        }
    }
    Ok((Box::new(SingleRank), req))
}

#[cfg(feature = "mpi")]
fn init_mpi(req: DeviceRequest) -> Result<(Box<dyn Collective>, DeviceRequest)> {
    let host = mpi::MpiCollective::init()?;
    let device = launch::device_for_rank(req, host.local_rank(), host.size(), |n| {
        kernels_cu::Device::cuda(n).is_ok()
    })?;
    // Every rank must pick the same transport: NCCL only when all ranks train on a GPU and
    // all of them load libnccl.
    let mut on_gpu = [u64::from(matches!(device, DeviceRequest::Cuda(_)))];
    host.all_reduce_sum_u64(&mut on_gpu)?;
    if let (true, DeviceRequest::Cuda(ordinal)) =
        (host.size() > 1 && on_gpu[0] as usize == host.size(), device)
    {
        if nccl::available_on_all_ranks(&host)? {
            return Ok((Box::new(nccl::NcclCollective::new(host, ordinal)?), device));
        }
        if host.is_main() {
            eprintln!(
                "note: libnccl not found on every rank; the gradients go through host memory \
                 over MPI"
            );
        }
    }
    Ok((Box::new(host), device))
}
