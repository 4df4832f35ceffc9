//! `--device` and `--use-cpu`: which device the training step asks for. Opening it, and the
//! fallback to the CPU, are [`model_falcon::Backend::open`]'s.

use crate::args::TrainArgs;
use anyhow::{bail, Result};
use model_falcon::DeviceRequest;

/// The device the flags ask for: `--device` (auto, cpu, cuda, cuda:N, emulator), or the CPU
/// with HF's `--use-cpu`, which contradicts any other explicit device.
pub fn device_request(args: &TrainArgs) -> Result<DeviceRequest> {
    let d: DeviceRequest = args.device.parse()?;
    if args.use_cpu {
        if !matches!(d, DeviceRequest::Auto | DeviceRequest::Cpu) {
            bail!("--use-cpu contradicts --device {}", args.device);
        }
        return Ok(DeviceRequest::Cpu);
    }
    Ok(d)
}
