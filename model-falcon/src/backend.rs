//! Where the training step runs: the one place where host and device part ways.
//!
//! A [`Backend`] is a model with LoRA adapters attached, ready to train, on one device. It offers
//! the operations a training loop needs (forward-backward of a micro-batch, the optimizer
//! step, the evaluation loss, adapter and optimizer sync to the host for checkpoints and
//! generation), each implemented for the two devices, as candle's `Storage` enum does:
//!
//! - [`Backend::Host`]: the engine's CPU autograd on the [`FalconModel`] itself (f32), with the
//!   host AdamW and gradient clipping;
//! - [`Backend::Cuda`]: the explicit CUDA step ([`CudaFalcon`], bf16 activations) on a GPU or on
//!   the kernels-cu emulator, with clipping and AdamW on the device.
//!
//! Checkpoints hold the host form of everything (the model's LoRA parameters and an
//! [`AdamW`]'s state), so a run saved on one device resumes bit-exactly on the same device,
//! and can move between devices.

use crate::cuda::CudaFalcon;
use crate::{FalconError, FalconModel, Result};
use engine::optim::{clip_grad_norm, AdamW, AdamWConfig};
use engine::{GradStore, Tensor, Var};

/// Which device to train on (`--device`).
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
    type Err = FalconError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => DeviceRequest::Auto,
            "cpu" => DeviceRequest::Cpu,
            "cuda" => DeviceRequest::Cuda(0),
            "emulator" => DeviceRequest::Emulator,
            o => match o.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => DeviceRequest::Cuda(n),
                _ => {
                    return Err(FalconError::InvalidArgument(format!(
                        "unknown --device `{o}` (expected auto, cpu, cuda, cuda:N or emulator)"
                    )))
                }
            },
        })
    }
}

/// The CPU step: the model's own autograd, gradients accumulated across micro-batches.
pub struct HostStep<'m> {
    model: &'m FalconModel,
    params: Vec<Var>,
    grads: GradStore,
}

/// The CUDA step and the host model it mirrors.
pub struct CudaStep<'m> {
    model: &'m FalconModel,
    step: CudaFalcon,
    /// What kind of device it is, for messages: "NVIDIA H200 (cuda:0)", "the host emulator".
    name: String,
}

/// The step's device.
pub enum StepDevice<'m> {
    Host(HostStep<'m>),
    Cuda(Box<CudaStep<'m>>),
}

/// A model with adapters on the device it trains on, plus the host optimizer: the optimizer
/// itself on the CPU, the checkpoint form of the device optimizer on a GPU.
pub struct Backend<'m> {
    device: StepDevice<'m>,
    opt: AdamW,
    /// Whether `opt` holds the device optimizer's latest state (always on the CPU).
    opt_in_sync: bool,
    /// PEFT keys of the LoRA parameters, in optimizer order.
    names: Vec<String>,
}

impl<'m> Backend<'m> {
    /// The CPU backend for `model` (adapters attached).
    pub fn host(model: &'m FalconModel, adamw: AdamWConfig) -> Result<Backend<'m>> {
        let (names, params): (Vec<String>, Vec<Var>) = model.lora_parameters().into_iter().unzip();
        let opt = AdamW::new(params.clone(), adamw)?;
        Ok(Backend {
            device: StepDevice::Host(HostStep {
                model,
                params,
                grads: GradStore::default(),
            }),
            opt,
            opt_in_sync: true,
            names,
        })
    }

    /// The CUDA backend for `model` on `dev` (`name` says what the device is).
    pub fn cuda(
        model: &'m FalconModel,
        dev: kernels_cu::Device,
        name: String,
        adamw: AdamWConfig,
    ) -> Result<Backend<'m>> {
        let mut host = Backend::host(model, adamw)?;
        let step = CudaFalcon::new(model, dev)?;
        host.device = StepDevice::Cuda(Box::new(CudaStep { model, step, name }));
        Ok(host)
    }

    /// The backend `req` asks for, with one line saying where training runs and why. `Auto`
    /// falls back to the CPU (saying why) when no GPU opens or the model cannot run there;
    /// an explicit `Cuda(n)` or `Emulator` that cannot be honoured is an error.
    pub fn open(
        req: DeviceRequest,
        model: &'m FalconModel,
        adamw: AdamWConfig,
    ) -> Result<(Backend<'m>, String)> {
        let on_cpu = |why: String| -> Result<(Backend<'m>, String)> {
            Ok((Backend::host(model, adamw)?, why))
        };
        match req {
            DeviceRequest::Cpu => on_cpu("training on the CPU (fp32, as requested)".into()),
            DeviceRequest::Auto => {
                let dev = match kernels_cu::Device::cuda(0) {
                    Ok(d) => d,
                    Err(e) => {
                        return on_cpu(format!("no CUDA device: {e}; training on the CPU (fp32)"))
                    }
                };
                let name = device_name(&dev, 0);
                match Backend::cuda(model, dev, name.clone(), adamw) {
                    Ok(b) => Ok((b, format!("training on {name} (bf16 activations)"))),
                    Err(e) => on_cpu(format!(
                        "CUDA device found ({name}) but this model cannot train there: {e}; \
                         training on the CPU (fp32)"
                    )),
                }
            }
            DeviceRequest::Cuda(n) => {
                let dev = kernels_cu::Device::cuda(n).map_err(|source| FalconError::Cuda {
                    what: format!("--device cuda:{n}: open the GPU"),
                    source,
                })?;
                let name = device_name(&dev, n);
                let b = Backend::cuda(model, dev, name.clone(), adamw).map_err(|e| {
                    FalconError::InvalidArgument(format!(
                        "--device cuda:{n}: cannot train this model on {name}: {e}"
                    ))
                })?;
                Ok((b, format!("training on {name} (bf16 activations)")))
            }
            DeviceRequest::Emulator => {
                let dev = kernels_cu::Device::emulator().map_err(|source| FalconError::Cuda {
                    what: "--device emulator: start the emulator".into(),
                    source,
                })?;
                let b =
                    Backend::cuda(model, dev, "the CUDA emulator".into(), adamw).map_err(|e| {
                        FalconError::InvalidArgument(format!(
                            "--device emulator: cannot train this model with the CUDA step: {e}"
                        ))
                    })?;
                Ok((
                    b,
                    "training with the CUDA step on the host emulator (slow; for testing)".into(),
                ))
            }
        }
    }

    /// True when the step runs on a CUDA device (GPU or emulator).
    pub fn is_cuda(&self) -> bool {
        matches!(self.device, StepDevice::Cuda(_))
    }

    /// The host model (whose adapters [`Backend::sync_adapters_to_host`] brings up to date).
    pub fn model(&self) -> &'m FalconModel {
        match &self.device {
            StepDevice::Host(h) => h.model,
            StepDevice::Cuda(c) => c.model,
        }
    }

    /// The CUDA step, when training runs there.
    pub fn cuda_step(&self) -> Option<&CudaFalcon> {
        match &self.device {
            StepDevice::Host(_) => None,
            StepDevice::Cuda(c) => Some(&c.step),
        }
    }

    /// PEFT keys of the LoRA parameters, in the optimizer's (and checkpoint's) order.
    pub fn parameter_names(&self) -> &[String] {
        &self.names
    }

    /// The AdamW hyper-parameters.
    pub fn adamw_config(&self) -> &AdamWConfig {
        self.opt.config()
    }

    /// One micro-batch: forward with dropout, the loss `Σ CE / count`, and backward, adding
    /// the adapter gradients to those of earlier micro-batches. Returns the loss.
    pub fn forward_backward(
        &mut self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        labels: &[i32],
        count: f64,
    ) -> Result<f64> {
        match &mut self.device {
            StepDevice::Host(h) => {
                let loss = h.model.loss(ids, mask, labels, count, true)?;
                h.grads.merge(loss.backward()?)?;
                Ok(loss.value().to_scalar()?)
            }
            StepDevice::Cuda(c) => c.step.forward_backward(ids, mask, labels, count),
        }
    }

    /// Clips the accumulated gradients to global norm `max_grad_norm` (none when ≤ 0), applies
    /// one AdamW update at learning rate `lr` and clears the gradients. A step whose loss
    /// (`loss_finite` false) or gradient norm is NaN or infinite applies nothing: adapters and
    /// optimizer moments keep their values, the gradients are dropped.
    pub fn optimizer_step(
        &mut self,
        lr: f64,
        max_grad_norm: f64,
        loss_finite: bool,
    ) -> Result<Update> {
        match &mut self.device {
            StepDevice::Host(h) => {
                let mut grads = std::mem::take(&mut h.grads);
                guarded_update(
                    &mut grads,
                    &h.params,
                    &self.names,
                    &mut self.opt,
                    lr,
                    max_grad_norm,
                    loss_finite,
                )
            }
            StepDevice::Cuda(c) => {
                self.opt_in_sync = false;
                // The device step reads the norm before its update and applies nothing when
                // it is not finite.
                let grad_norm = if loss_finite {
                    c.step
                        .optimizer_step(lr, self.opt.config(), max_grad_norm)?
                } else {
                    c.step.zero_grads()?;
                    f64::NAN
                };
                Ok(Update {
                    grad_norm,
                    applied: loss_finite && grad_norm.is_finite(),
                    first_nonfinite_grad: None,
                })
            }
        }
    }

    /// The summed cross-entropy of a batch (forward only, no dropout, no gradients).
    pub fn eval_loss_sum(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        labels: &[i32],
    ) -> Result<f64> {
        match &self.device {
            StepDevice::Host(h) => {
                let loss = engine::no_grad(|| h.model.loss(ids, mask, labels, 1.0, false))?;
                Ok(loss.value().to_scalar()?)
            }
            StepDevice::Cuda(c) => c.step.loss(ids, mask, labels, 1.0),
        }
    }

    /// Brings the host model's LoRA parameters up to date (a no-op on the CPU), before they
    /// are saved, merged or used for generation.
    pub fn sync_adapters_to_host(&self) -> Result<()> {
        match &self.device {
            StepDevice::Host(_) => Ok(()),
            StepDevice::Cuda(c) => c.step.store_adapters_to_host(),
        }
    }

    /// The host model with current adapters, for generation. Generation runs on the host
    /// model on every device for now: the device step has no decode kernels yet.
    pub fn generation_model(&self) -> Result<&'m FalconModel> {
        self.sync_adapters_to_host()?;
        Ok(self.model())
    }

    /// The host optimizer holding the current state, for a checkpoint (the adapters are
    /// synced to the host model too).
    pub fn checkpoint_state(&mut self) -> Result<&AdamW> {
        self.sync_adapters_to_host()?;
        if !self.opt_in_sync {
            if let StepDevice::Cuda(c) = &self.device {
                self.opt.set_state(c.step.optimizer_state()?)?;
            }
            self.opt_in_sync = true;
        }
        Ok(&self.opt)
    }

    /// Restores the optimizer state (resume): `load` fills the host optimizer, which then goes
    /// to the device.
    pub fn restore_optimizer<E>(
        &mut self,
        load: impl FnOnce(&mut AdamW) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E>
    where
        E: From<FalconError>,
    {
        load(&mut self.opt)?;
        if let StepDevice::Cuda(c) = &mut self.device {
            c.step.set_optimizer_state(self.opt.state())?;
        }
        self.opt_in_sync = true;
        Ok(())
    }

    /// Peak bytes in use on the device's allocator, or of host tensors on the CPU.
    pub fn peak_bytes(&self) -> usize {
        match &self.device {
            StepDevice::Host(_) => engine::memory::global_counter().peak_bytes(),
            StepDevice::Cuda(c) => c.step.memory().peak_in_use,
        }
    }

    /// Peak device bytes, when training runs on a CUDA device.
    pub fn peak_device_bytes(&self) -> Option<usize> {
        self.cuda_step().map(|c| c.memory().peak_in_use)
    }

    /// What the device is, for messages.
    pub fn device_name(&self) -> &str {
        match &self.device {
            StepDevice::Host(_) => "the CPU",
            StepDevice::Cuda(c) => &c.name,
        }
    }
}

/// What an optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The global gradient norm before clipping (NaN when the loss was not finite on a
    /// device, where no norm is computed then).
    pub grad_norm: f64,
    /// Whether AdamW ran.
    pub applied: bool,
    /// The first parameter (PEFT key) whose gradient holds a NaN or infinity, where known
    /// (the CPU step; the device only knows the norm).
    pub first_nonfinite_grad: Option<String>,
}

/// The host update: clip, then AdamW only when the loss and the norm are finite.
pub fn guarded_update(
    grads: &mut GradStore,
    params: &[Var],
    names: &[String],
    opt: &mut AdamW,
    lr: f64,
    max_grad_norm: f64,
    loss_finite: bool,
) -> Result<Update> {
    let grad_norm = clip_grad_norm(grads, params, max_grad_norm)?;
    let applied = loss_finite && grad_norm.is_finite();
    if applied {
        opt.step(grads, lr)?;
    }
    let first_nonfinite_grad = if grad_norm.is_finite() {
        None
    } else {
        names.iter().zip(params).find_map(|(n, p)| {
            let g = grads.get(p)?.to_f64_vec().ok()?;
            g.iter().any(|x| !x.is_finite()).then(|| n.clone())
        })
    };
    Ok(Update {
        grad_norm,
        applied,
        first_nonfinite_grad,
    })
}

fn device_name(dev: &kernels_cu::Device, ordinal: usize) -> String {
    format!("{} (cuda:{ordinal})", dev.info().name)
}

#[cfg(test)]
mod tests {
    use super::{guarded_update, DeviceRequest};
    use engine::optim::{AdamW, AdamWConfig};
    use engine::{GradStore, Tensor, Var};

    fn param(v: Vec<f32>) -> Var {
        let n = v.len();
        Var::parameter(Tensor::from_vec(v, [n]).unwrap())
    }

    #[test]
    fn a_nan_gradient_changes_neither_the_parameters_nor_the_optimizer() {
        let good = param(vec![0.3, -1.2, 0.7]);
        let bad = param(vec![2.0, 0.5]);
        let params = vec![good.clone(), bad.clone()];
        let names = vec!["layer.lora_A".to_string(), "layer.lora_B".to_string()];
        let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
        let mut grads = GradStore::default();
        grads.insert(
            &good,
            Tensor::from_vec(vec![0.1f32, 0.2, -0.3], [3]).unwrap(),
        );
        grads.insert(&bad, Tensor::from_vec(vec![f32::NAN, 1.0], [2]).unwrap());
        let u = guarded_update(&mut grads, &params, &names, &mut opt, 1e-2, 1.0, true).unwrap();
        assert!(u.grad_norm.is_nan());
        assert!(!u.applied);
        assert_eq!(u.first_nonfinite_grad.as_deref(), Some("layer.lora_B"));
        assert_eq!(good.value().to_f32_vec().unwrap(), vec![0.3, -1.2, 0.7]);
        assert_eq!(bad.value().to_f32_vec().unwrap(), vec![2.0, 0.5]);
        assert!(
            opt.state().iter().all(|s| s.is_none()),
            "moments were created"
        );
        // A finite norm after a non-finite loss applies nothing either.
        let mut grads = GradStore::default();
        grads.insert(
            &good,
            Tensor::from_vec(vec![0.1f32, 0.2, 0.3], [3]).unwrap(),
        );
        let u = guarded_update(&mut grads, &params, &names, &mut opt, 1e-2, 1.0, false).unwrap();
        assert!(u.grad_norm.is_finite() && !u.applied);
        assert_eq!(good.value().to_f32_vec().unwrap(), vec![0.3, -1.2, 0.7]);
        // And a finite step applies.
        let u = guarded_update(&mut grads, &params, &names, &mut opt, 1e-2, 1.0, true).unwrap();
        assert!(u.applied);
        assert_ne!(good.value().to_f32_vec().unwrap(), vec![0.3, -1.2, 0.7]);
    }

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
            assert!(e.contains("--device") && e.contains(bad), "{bad}: {e}");
        }
    }
}
