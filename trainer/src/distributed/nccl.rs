//! NCCL for the gradients when every rank trains on a GPU, bootstrapped over MPI as llm.c does:
//! rank 0 creates the NCCL unique id, MPI broadcasts its 128 bytes, and every rank joins the
//! communicator with its rank and the world size. libnccl is loaded at run time (cudarc's
//! dynamic loading): from the system, or from the `nvidia-nccl-cu12` wheel through
//! `LD_LIBRARY_PATH`.
//!
//! The gradients all-reduced here are staged through a device buffer of this communicator's
//! own stream (host → device, `ncclAllReduce` sum, device → host): NCCL's ring and tree
//! all-reduce give every rank the same bits, deterministically for a fixed number of ranks and
//! topology. Counts and losses stay on MPI.

use super::mpi::MpiCollective;
use super::Collective;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
use std::cell::RefCell;
use std::sync::Arc;

/// Bytes of an NCCL unique id (`ncclUniqueId`).
pub const ID_BYTES: usize = 128;

/// True when libnccl can be loaded on this rank.
pub fn nccl_available() -> bool {
    // SAFETY: only probes whether the shared library opens; no NCCL symbol is called.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// True on every rank when NCCL loads on all of them (one MPI sum, so that all ranks choose
/// the same transport).
pub fn available_on_all_ranks(host: &MpiCollective) -> Result<bool> {
    let mut n = [u64::from(nccl_available())];
    host.all_reduce_sum_u64(&mut n)?;
    Ok(n[0] as usize == host.size())
}

/// The unique id of a communicator: `make` runs on rank 0 only, and its result (or its
/// failure) reaches every rank through one MPI broadcast, so that no rank waits for an id that
/// will never come.
pub fn bootstrap_id(
    host: &MpiCollective,
    make: impl FnOnce() -> Result<[u8; ID_BYTES]>,
) -> Result<[u8; ID_BYTES]> {
    // Byte 0: 1 when rank 0 has an id; the id follows.
    let mut buf = [0u8; ID_BYTES + 1];
    let mut rank0_error = None;
    if host.rank() == 0 {
        match make() {
            Ok(id) => {
                buf[0] = 1;
                buf[1..].copy_from_slice(&id);
            }
            Err(e) => rank0_error = Some(e),
        }
    }
    host.broadcast_bytes(&mut buf);
    if buf[0] != 1 {
        return Err(rank0_error.unwrap_or_else(|| {
            anyhow!("rank 0 could not create the NCCL unique id (its error says why)")
        }));
    }
    let mut id = [0u8; ID_BYTES];
    id.copy_from_slice(&buf[1..]);
    Ok(id)
}

fn new_unique_id() -> Result<[u8; ID_BYTES]> {
    let id = Id::new().map_err(|e| anyhow!("ncclGetUniqueId failed: {e:?}"))?;
    Ok(id.internal().map(|c| c as u8))
}

/// MPI for the small sums, NCCL on GPU `ordinal` for the gradients.
pub struct NcclCollective {
    host: MpiCollective,
    comm: Comm,
    stream: Arc<CudaStream>,
    /// The device buffer gradients pass through, kept between steps.
    staging: RefCell<Option<CudaSlice<f32>>>,
}

impl NcclCollective {
    /// Joins the NCCL communicator of all ranks on GPU `ordinal` (a collective call).
    pub fn new(host: MpiCollective, ordinal: usize) -> Result<NcclCollective> {
        let id = bootstrap_id(&host, new_unique_id)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("rank {}: open GPU {ordinal} for NCCL: {e}", host.rank()))?;
        let stream = ctx.default_stream();
        let comm = Comm::from_rank(
            stream.clone(),
            host.rank(),
            host.size(),
            Id::uninit(id.map(|b| b as std::ffi::c_char)),
        )
        .map_err(|e| anyhow!("rank {}: ncclCommInitRank failed: {e:?}", host.rank()))?;
        Ok(NcclCollective {
            host,
            comm,
            stream,
            staging: RefCell::new(None),
        })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn size(&self) -> usize {
        self.host.size()
    }
    fn local_rank(&self) -> usize {
        self.host.local_rank()
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let err = |what: &str, e: String| anyhow!("rank {}: NCCL {what}: {e}", self.rank());
        let mut staging = self.staging.borrow_mut();
        if staging.as_ref().is_none_or(|s| s.len() != buf.len()) {
            *staging = Some(
                self.stream
                    .alloc_zeros::<f32>(buf.len())
                    .map_err(|e| err("allocate", e.to_string()))?,
            );
        }
        let Some(dev) = staging.as_mut() else {
            bail!("NCCL staging buffer missing");
        };
        self.stream
            .memcpy_htod(buf, dev)
            .map_err(|e| err("upload", e.to_string()))?;
        self.comm
            .all_reduce_in_place(dev, &ReduceOp::Sum)
            .map_err(|e| err("all-reduce", format!("{e:?}")))?;
        self.stream
            .memcpy_dtoh(dev, buf)
            .map_err(|e| err("download", e.to_string()))?;
        self.stream
            .synchronize()
            .map_err(|e| err("synchronize", e.to_string()))
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.host.all_reduce_sum_f64(buf)
    }
    fn all_reduce_sum_u64(&self, buf: &mut [u64]) -> Result<()> {
        self.host.all_reduce_sum_u64(buf)
    }
    fn all_gather_u64(&self, mine: &[u64]) -> Result<Vec<u64>> {
        self.host.all_gather_u64(mine)
    }
    fn abort(&self, code: i32) -> ! {
        self.host.abort(code)
    }
    fn describe(&self) -> String {
        format!(
            "NCCL over MPI, {} ranks, gradients all-reduced in GPU memory",
            self.size()
        )
    }
}
