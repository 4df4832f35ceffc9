//! Launch graphs: a sequence of launches captured once and replayed as one unit (CUDA graphs
//! on a GPU), so that a short, repeated sequence such as one decode step pays the driver's
//! launch cost once instead of once per kernel.
//!
//! [`crate::Device::capture`] runs a closure whose launches are captured instead of executed,
//! and returns a [`Graph`] that replays them. What a replay reads must therefore come from
//! device memory, not from kernel scalar arguments: those are frozen at capture. Between
//! capture and the graph's end, buffers the captured code frees are kept (their addresses are
//! baked into the graph); copies between host and device are refused while capturing (on a GPU
//! they would end the capture).
//!
//! Backends: the CUDA driver's stream capture ([`crate::backend::cuda`]); the emulator and the
//! dry run record the launches ([`Recorder`]) and replay them through their own launch, in
//! order, with the arguments as captured: the same semantics as a CUDA graph of kernel nodes
//! on one stream.

use std::sync::{Arc, Mutex};

use crate::device::{ArgValue, Backend, Dim3};
use crate::error::{Error, Result};
use crate::Kernel;

/// One launch as captured.
#[derive(Debug, Clone)]
pub struct CapturedLaunch {
    pub kernel: Kernel,
    pub grid: Dim3,
    pub block: Dim3,
    pub shared_bytes: u32,
    pub args: Vec<ArgValue>,
}

/// A backend's executable graph.
pub trait GraphExec {
    /// Runs the graph once on `backend` (the backend that captured it), stream-ordered after
    /// the work before it.
    ///
    /// # Safety
    /// Every buffer the captured launches address is still allocated ([`Graph`] keeps them).
    unsafe fn replay(&self, backend: &dyn Backend) -> Result<()>;
}

/// Launches recorded in order and replayed through the backend's own launch.
pub struct RecordedGraph(pub Vec<CapturedLaunch>);

impl GraphExec for RecordedGraph {
    unsafe fn replay(&self, backend: &dyn Backend) -> Result<()> {
        for l in &self.0 {
            // SAFETY: the launch was checked when captured and its buffers are alive (this
            // function's contract).
            unsafe { backend.launch(l.kernel, l.grid, l.block, l.shared_bytes, &l.args)? };
        }
        Ok(())
    }
}

/// The capture state of a recording backend: `Some` while capturing.
#[derive(Default)]
pub struct Recorder(Mutex<Option<Vec<CapturedLaunch>>>);

impl Recorder {
    pub fn begin(&self) -> Result<()> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_some() {
            return Err(Error::Capture("a capture is already in progress".into()));
        }
        *s = Some(Vec::new());
        Ok(())
    }

    pub fn end(&self) -> Result<RecordedGraph> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.take()
            .map(RecordedGraph)
            .ok_or_else(|| Error::Capture("no capture in progress".into()))
    }

    /// Records the launch when capturing (true), else leaves it to the caller to run (false).
    pub fn record(
        &self,
        kernel: Kernel,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[ArgValue],
    ) -> bool {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match s.as_mut() {
            Some(list) => {
                list.push(CapturedLaunch {
                    kernel,
                    grid,
                    block,
                    shared_bytes,
                    args: args.to_vec(),
                });
                true
            }
            None => false,
        }
    }
}

/// A captured launch sequence of one [`crate::Device`], replayed by [`Graph::launch`]. Holds
/// the device memory the captured code freed, so that no later allocation reuses an address the
/// graph reads or writes; it is released when the graph is dropped.
pub struct Graph {
    pub(crate) exec: Box<dyn GraphExec>,
    pub(crate) device: Arc<crate::device::DeviceCore>,
    pub(crate) kept: Vec<(u64, usize)>,
    pub(crate) launches: usize,
}

impl Graph {
    /// Runs the captured launches once, in order, on the device's stream.
    ///
    /// # Safety
    /// Every buffer the captured code used and did not free (weights, caches, inputs and
    /// outputs it was given) is still alive, and holds what the kernels' contracts ask for; the
    /// buffers it freed are kept by the graph.
    pub unsafe fn launch(&self) -> Result<()> {
        // SAFETY: this function's contract, plus the kept allocations.
        unsafe { self.exec.replay(self.device.backend()) }
    }

    /// Kernel launches in the graph.
    pub fn nodes(&self) -> usize {
        self.launches
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // Pending replays may still use the kept memory; the backends' free is stream-ordered
        // (the CUDA pool synchronizes before giving memory back to the driver).
        for &(addr, reserved) in &self.kept {
            self.device.free_block(addr, reserved);
        }
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Graph({} launches)", self.nodes())
    }
}
