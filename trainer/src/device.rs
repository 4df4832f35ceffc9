//! Where the training step runs: the CUDA device when one works and the model can run there,
//! otherwise the CPU (`--device auto`, the default), or what `--device` / `--use-cpu` demand.

use crate::args::TrainArgs;
use anyhow::{bail, Context, Result};
use model_falcon::{CudaFalcon, FalconModel};

/// What `--device` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// GPU 0 when it opens and the model runs there, else the CPU.
    Auto,
    Cpu,
    /// This driver ordinal, or an error.
    Cuda(usize),
    /// The CUDA step on the host emulator of the GPU (slow; for testing the GPU path).
    Emulator,
}

impl std::str::FromStr for DeviceRequest {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => DeviceRequest::Auto,
            "cpu" => DeviceRequest::Cpu,
            "cuda" => DeviceRequest::Cuda(0),
            "emulator" => DeviceRequest::Emulator,
            o => match o.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => DeviceRequest::Cuda(n),
                _ => bail!("unknown --device `{o}` (expected auto, cpu, cuda, cuda:N or emulator)"),
            },
        })
    }
}

impl DeviceRequest {
    pub fn from_args(args: &TrainArgs) -> Result<DeviceRequest> {
        let d: DeviceRequest = args.device.parse()?;
        if args.use_cpu {
            if !matches!(d, DeviceRequest::Auto | DeviceRequest::Cpu) {
                bail!("--use-cpu contradicts --device {}", args.device);
            }
            return Ok(DeviceRequest::Cpu);
        }
        Ok(d)
    }
}

/// The device step for `model` (adapters attached, `recompute` set), or `None` for the CPU,
/// with one line saying where training runs and why.
pub fn select(req: DeviceRequest, model: &FalconModel) -> Result<(Option<CudaFalcon>, String)> {
    match req {
        DeviceRequest::Cpu => Ok((None, "training on the CPU (fp32, as requested)".into())),
        DeviceRequest::Auto => {
            let dev = match engine::cuda::open(0) {
                Ok(d) => d,
                Err(engine::Error::DeviceUnavailable { reason, .. }) => {
                    return Ok((
                        None,
                        format!("no CUDA device: {reason}; training on the CPU (fp32)"),
                    ))
                }
                Err(e) => {
                    return Ok((
                        None,
                        format!("no CUDA device: {e}; training on the CPU (fp32)"),
                    ))
                }
            };
            let name = device_name(dev);
            match CudaFalcon::new(model, dev) {
                Ok(c) => Ok((Some(c), format!("training on {name} (bf16 activations)"))),
                Err(e) => Ok((
                    None,
                    format!("CUDA device found ({name}) but this model cannot train there: {e}; training on the CPU (fp32)"),
                )),
            }
        }
        DeviceRequest::Cuda(n) => {
            let dev = engine::cuda::open(n).with_context(|| format!("--device cuda:{n}"))?;
            let name = device_name(dev);
            let c = CudaFalcon::new(model, dev)
                .with_context(|| format!("--device cuda:{n}: cannot train this model on {name}"))?;
            Ok((Some(c), format!("training on {name} (bf16 activations)")))
        }
        DeviceRequest::Emulator => {
            let dev = engine::cuda::open_emulator()?;
            let c = CudaFalcon::new(model, dev)
                .context("--device emulator: cannot train this model with the CUDA step")?;
            Ok((
                Some(c),
                "training with the CUDA step on the host emulator (slow; for testing)".into(),
            ))
        }
    }
}

fn device_name(dev: engine::Device) -> String {
    match engine::cuda::info(dev) {
        Ok(i) => format!("{} ({dev})", i.name),
        Err(_) => dev.to_string(),
    }
}

/// Peak bytes in use on the device's allocator, or of host tensors when training on the CPU.
pub fn peak_bytes(cuda: Option<&CudaFalcon>) -> usize {
    match cuda {
        Some(c) => c.memory().peak_in_use,
        None => engine::memory::global_counter().peak_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceRequest;

    #[test]
    fn device_flags_parse() {
        let p = |s: &str| s.parse::<DeviceRequest>();
        assert_eq!(p("auto").unwrap(), DeviceRequest::Auto);
        assert_eq!(p("cpu").unwrap(), DeviceRequest::Cpu);
        assert_eq!(p("cuda").unwrap(), DeviceRequest::Cuda(0));
        assert_eq!(p("cuda:3").unwrap(), DeviceRequest::Cuda(3));
        assert_eq!(p("emulator").unwrap(), DeviceRequest::Emulator);
        for bad in ["gpu", "cuda:", "cuda:x", ""] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains("--device"), "{bad}: {e}");
        }
    }
}
