//! The MPI transport (rsmpi over the system's MPI): the host-memory all-reduce of gradients,
//! counts and losses, and the bootstrap channel of NCCL.
//!
//! Every sum is a gather to rank 0, a sum in rank order there ([`super::reduce`]) and a
//! broadcast, so that all ranks hold the same bits and reruns are reproducible. A rank that
//! fails calls `MPI_Abort`, which ends every rank; a rank killed from outside makes `mpirun`
//! (or `srun --kill-on-bad-exit`) end the job, so no rank waits forever in a collective.

use super::reduce::{sum_in_rank_order_f32, sum_in_rank_order_f64, sum_in_rank_order_u64};
use super::Collective;
use anyhow::{bail, Result};
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// The world communicator of this process and its node-local rank.
pub struct MpiCollective {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    // Finalizes MPI when the run ends; declared last so the communicators go first.
    _universe: Universe,
}

impl MpiCollective {
    /// `MPI_Init` (once per process), the world and the node-local rank (the rank among the
    /// processes sharing this node's memory).
    pub fn init() -> Result<MpiCollective> {
        let Some(universe) = mpi::initialize() else {
            bail!("MPI was already initialised in this process");
        };
        let world = universe.world();
        let local = world.split_shared(world.rank());
        Ok(MpiCollective {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: local.rank() as usize,
            world,
            _universe: universe,
        })
    }

    /// Waits until every rank is here (benchmarks).
    pub fn barrier(&self) {
        self.world.barrier();
    }

    /// Broadcasts `buf` from rank 0 to every rank.
    pub fn broadcast_bytes(&self, buf: &mut [u8]) {
        self.world.process_at_rank(0).broadcast_into(buf);
    }

    /// Gathers every rank's `mine` on rank 0, sums there with `sum`, and broadcasts the sum.
    fn reduce_via_root<T: Equivalence + Copy + Default>(
        &self,
        buf: &mut [T],
        sum: fn(&[T], &mut [T]),
    ) {
        if self.size == 1 || buf.is_empty() {
            return;
        }
        let root = self.world.process_at_rank(0);
        if self.rank == 0 {
            let mut all = vec![T::default(); buf.len() * self.size];
            root.gather_into_root(&buf[..], &mut all[..]);
            sum(&all, buf);
        } else {
            root.gather_into(&buf[..]);
        }
        root.broadcast_into(buf);
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.reduce_via_root(buf, sum_in_rank_order_f32);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_via_root(buf, sum_in_rank_order_f64);
        Ok(())
    }
    fn all_reduce_sum_u64(&self, buf: &mut [u64]) -> Result<()> {
        self.reduce_via_root(buf, sum_in_rank_order_u64);
        Ok(())
    }
    fn all_gather_u64(&self, mine: &[u64]) -> Result<Vec<u64>> {
        let mut all = vec![0u64; mine.len() * self.size];
        self.world.all_gather_into(mine, &mut all[..]);
        Ok(all)
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
    fn describe(&self) -> String {
        format!(
            "MPI ({}), {} ranks, gradients all-reduced through host memory",
            mpi::environment::library_version()
                .ok()
                .and_then(|v| v.split(',').next().map(str::to_string))
                .unwrap_or_else(|| "unknown library".into()),
            self.size
        )
    }
}
