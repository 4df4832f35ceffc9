//! What the launcher tells a rank through its environment, and the device each rank trains
//! on.

use anyhow::{bail, Result};
use model_falcon::DeviceRequest;

/// Variables by which MPI launchers (Open MPI's `mpirun`, MPICH's hydra, Slurm's `srun` with
/// PMI or PMIx) mark the processes they start, with the world size where the variable holds
/// it (PMIx's rank variable does not; 0 then).
const LAUNCHER_VARS: &[(&str, bool)] = &[
    ("OMPI_COMM_WORLD_SIZE", true),
    ("PMI_SIZE", true),
    ("PMIX_RANK", false),
];

/// `Some((world size or 0 when unknown, variable))` when an MPI launcher started this process.
pub fn launcher_world_size() -> Option<(usize, &'static str)> {
    launcher_world_size_from(|k| std::env::var(k).ok())
}

/// [`launcher_world_size`] over any environment (for tests).
pub fn launcher_world_size_from(
    get: impl Fn(&str) -> Option<String>,
) -> Option<(usize, &'static str)> {
    LAUNCHER_VARS.iter().find_map(|&(var, is_size)| {
        let v = get(var)?;
        let n = if is_size {
            v.trim().parse().unwrap_or(0)
        } else {
            0
        };
        Some((n, var))
    })
}

/// The device of rank `local_rank` on its node: with several ranks, `auto` and `cuda` (GPU 0)
/// mean the node's GPU number `local_rank`, as torchrun and llm.c assign them (restrict the
/// GPUs a job sees with `CUDA_VISIBLE_DEVICES`); `auto` falls back to the CPU when that GPU does
/// not open. The CPU and the emulator are shared by all ranks.
pub fn device_for_rank(
    req: DeviceRequest,
    local_rank: usize,
    size: usize,
    gpu_opens: impl Fn(usize) -> bool,
) -> Result<DeviceRequest> {
    if size <= 1 {
        return Ok(req);
    }
    Ok(match req {
        DeviceRequest::Auto => {
            if gpu_opens(local_rank) {
                DeviceRequest::Cuda(local_rank)
            } else {
                DeviceRequest::Cpu
            }
        }
        DeviceRequest::Cuda(0) => DeviceRequest::Cuda(local_rank),
        DeviceRequest::Cuda(n) => bail!(
            "--device cuda:{n} with {size} ranks: each rank takes the GPU of its local rank; \
             give --device cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        ),
        other => other,
    })
}

/// Sends this process's standard output to /dev/null: the ranks other than 0 would print
/// every line of rank 0 again. Errors and warnings (stderr) still show, naming the rank.
pub fn silence_stdout() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: plain POSIX calls on a path literal and the process's own descriptor 1; on any
    // failure stdout simply stays as it was.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::dup2(fd, libc::STDOUT_FILENO);
            libc::close(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launchers_are_recognised_by_their_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(launcher_world_size_from(env(&[])), None);
        assert_eq!(
            launcher_world_size_from(env(&[("OMPI_COMM_WORLD_SIZE", "3")])),
            Some((3, "OMPI_COMM_WORLD_SIZE"))
        );
        assert_eq!(
            launcher_world_size_from(env(&[("PMIX_RANK", "1")])),
            Some((0, "PMIX_RANK"))
        );
    }

    #[test]
    fn each_rank_takes_the_gpu_of_its_local_rank() {
        let yes = |_| true;
        let no = |_| false;
        assert_eq!(
            device_for_rank(DeviceRequest::Auto, 1, 2, yes).unwrap(),
            DeviceRequest::Cuda(1)
        );
        assert_eq!(
            device_for_rank(DeviceRequest::Auto, 1, 2, no).unwrap(),
            DeviceRequest::Cpu
        );
        assert_eq!(
            device_for_rank(DeviceRequest::Cuda(0), 3, 4, no).unwrap(),
            DeviceRequest::Cuda(3)
        );
        assert_eq!(
            device_for_rank(DeviceRequest::Emulator, 1, 2, yes).unwrap(),
            DeviceRequest::Emulator
        );
        // One rank: the request as given.
        assert_eq!(
            device_for_rank(DeviceRequest::Cuda(2), 0, 1, no).unwrap(),
            DeviceRequest::Cuda(2)
        );
        let e = device_for_rank(DeviceRequest::Cuda(2), 0, 2, yes).unwrap_err();
        assert!(e.to_string().contains("CUDA_VISIBLE_DEVICES"), "{e}");
    }
}
