//! The device step's memory, computed from the config before anything is allocated, as llm.c's
//! `fill_in_activation_sizes` does for GPT-2.
//!
//! [`MemoryPlan::for_step`] walks one training step in the order [`super::CudaFalcon`]
//! allocates and frees its buffers (`mod.rs`'s `run_step`, `layer.rs`, `adapters.rs` and the
//! kernels-cu launchers' scratch), keeping a running total, and reports the resident parts
//! and the peak. It mirrors the code: a change to the step's buffers changes this file too,
//! and `tests/memory_plan.rs` holds the plan against the emulator allocator's measured peak
//! (the emulator allocates exactly the bytes asked for) and against
//! [`super::CudaFalcon::base_bytes`].
//!
//! Resident for the whole run:
//! ```text
//! base        4-bit linears: n·k/2 codes + n·k/64 absmax codes + 4·⌈n·k/64/256⌉ nested
//!             absmax + 4·256 code map + 4·16 code table (bf16 linears: 2·n·k);
//!             embedding (tied lm_head) 2·V·h; LayerNorms 4·h each (bf16 γ, β)
//! adapters    12·P   f32 weights and gradients, bf16 weights and transposed B   (P trainable)
//! optimizer    8·P   AdamW exp_avg, exp_avg_sq (f32)
//! ```
//! Per micro-batch (M = b·t rows): the inputs (ids, labels, mask, RoPE table), each layer's
//! bf16 input `2·M·h` kept for the recompute (with `recompute` off: the whole forward of every
//! layer), and the working set on top: one layer's recomputed forward plus its backward
//! temporaries, or the cross-entropy's vocab chunk (`rows × 8192` f32 logits and their bf16
//! gradient). The peak is the largest total over the step.

use crate::checkpoint::{linear_modules, LinearKind};
use crate::config::NormLayout;
use crate::peft::LoraConfig;
use crate::{FalconConfig, FalconError, Result};
use kernels_cu::ops::attention::{dkdv_splits, AttnShape};
use kernels_cu::ops::cross_entropy::{BWD_CHUNK, FWD_CHUNK};
use kernels_cu::ops::{adamw, gemm, layernorm};
use serde::Serialize;

/// How the frozen linears are stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseStorage {
    /// Double-quantized 4-bit (NF4 or FP4), blocksize 64: what the 4-bit GEMM reads.
    FourBit,
    /// bf16 (`--quant none`).
    Bf16,
}

/// The shape of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    pub batch: usize,
    pub seq: usize,
    /// Per-layer recompute (gradient checkpointing).
    pub recompute: bool,
}

/// Bytes of the device step, by part (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    pub batch: usize,
    pub seq: usize,
    pub base_weights: usize,
    pub adapters: usize,
    pub optimizer: usize,
    /// ids, labels, key mask, RoPE table.
    pub batch_inputs: usize,
    /// What the forward keeps for the backward at its largest (all layers' inputs, or with
    /// recompute off all layers' activations).
    pub saved_activations: usize,
    /// The largest working set on top of the resident and saved parts, and where it occurs.
    pub working_set: usize,
    pub working_set_phase: String,
    /// Largest bytes in use during the step.
    pub peak: usize,
}

/// A running total of live bytes, with the peak and the phase it occurred in.
struct Ledger {
    live: usize,
    peak: usize,
    phase: &'static str,
    peak_phase: &'static str,
}

impl Ledger {
    fn alloc(&mut self, bytes: usize) {
        self.live += bytes;
        if self.live > self.peak {
            self.peak = self.live;
            self.peak_phase = self.phase;
        }
    }
    fn free(&mut self, bytes: usize) {
        self.live -= bytes;
    }
    /// A scratch buffer that lives only inside one call.
    fn scratch(&mut self, bytes: usize) {
        self.alloc(bytes);
        self.free(bytes);
    }
}

/// One of a layer's four linears: `[out, in]`, and the adapter rank when adapted.
#[derive(Clone, Copy)]
struct Linear {
    in_f: usize,
    out_f: usize,
    lora_r: Option<usize>,
}

/// Sizes shared by every layer of the step.
struct Dims {
    m: usize,
    hidden: usize,
    ffn: usize,
    q: usize,
    kv: usize,
    qkv_out: usize,
    /// Rows of attention statistics (`b · q_heads · t`).
    attn_rows: usize,
    /// Splits of each KV group's query heads in the dK/dV kernel (partial sums when above 1).
    dkdv_splits: usize,
    norms: usize,
    dropout: bool,
    /// The linears are 4-bit: their products run the NF4 GEMM, whose split-K scratch depends
    /// on the device's SM count `sms` (0: unknown, never split).
    four_bit: bool,
    sms: usize,
}

const BF16: usize = 2;
const F32: usize = 4;

/// LayerNorm forward: output + mean and rstd.
fn norm_forward_bytes(d: &Dims) -> usize {
    BF16 * d.m * d.hidden + 2 * F32 * d.m
}

/// LayerNorm backward scratch: per-block partial dγ, dβ and their sums.
fn norm_backward_scratch(d: &Dims) -> usize {
    2 * F32 * layernorm::bwd_blocks(d.m) * d.hidden + 2 * F32 * d.hidden
}

/// The LoRA activations a linear keeps for its backward: the dropout copy of its input (when
/// dropout is on) and `u = x·Aᵀ`.
fn lora_acts(d: &Dims, l: &Linear) -> usize {
    match l.lora_r {
        Some(r) => BF16 * d.m * r + if d.dropout { BF16 * d.m * l.in_f } else { 0 },
        None => 0,
    }
}

/// Scratch of the frozen product `out = x·Wᵀ` (`m × n_out`, reduction `red`).
fn base_product_scratch(led: &mut Ledger, d: &Dims, n_out: usize, red: usize) {
    if d.four_bit {
        // At the kernels' design occupancy (the GPUs of 160 KB or more of shared memory per
        // SM; on those of 100 KB the launcher schedules for one block per SM).
        let slots = d.sms * gemm::NF4_BLOCKS_PER_SM;
        led.scratch(gemm::nf4_scratch_bytes(d.m, n_out, red, slots));
    }
}

/// A linear's forward: its output (returned, not counted here), the base product's scratch
/// and its LoRA activations.
fn linear_forward(led: &mut Ledger, d: &Dims, l: &Linear) -> usize {
    led.alloc(BF16 * d.m * l.out_f);
    base_product_scratch(led, d, l.out_f, l.in_f);
    let acts = lora_acts(d, l);
    led.alloc(acts);
    acts
}

/// A linear's backward scratch: the base product's, then the adapter's `du` (and with dropout
/// its own `dx` before the mask is applied).
fn linear_backward(led: &mut Ledger, d: &Dims, l: &Linear) {
    base_product_scratch(led, d, l.in_f, l.out_f);
    if let Some(r) = l.lora_r {
        let du = BF16 * d.m * r;
        let t = if d.dropout { BF16 * d.m * l.in_f } else { 0 };
        led.scratch(du + t);
    }
}

/// A linear whose output is not computed (`layer::recompute`'s dense and 4h_to_h): only its
/// LoRA activations.
fn linear_unread(led: &mut Ledger, d: &Dims, l: &Linear) -> usize {
    let acts = lora_acts(d, l);
    led.alloc(acts);
    acts
}

/// One layer's forward as `layer::forward` runs it (`recompute`: as `layer::recompute` does,
/// without the branch outputs and the layer output). Returns the bytes of the activations it
/// keeps for the backward (the forward's output stays allocated too, as the next layer's
/// input).
fn layer_forward(led: &mut Ledger, d: &Dims, lin: &[Linear; 4], recompute: bool) -> usize {
    let branch = |led: &mut Ledger, l: &Linear| {
        if recompute {
            linear_unread(led, d, l)
        } else {
            linear_forward(led, d, l)
        }
    };
    let [qkv, dense, h4h, fhh] = lin;
    let mut kept = 0;
    for _ in 0..d.norms {
        led.alloc(norm_forward_bytes(d));
        kept += norm_forward_bytes(d);
    }
    kept += linear_forward(led, d, qkv);
    let (q, kv) = (BF16 * d.q, BF16 * d.kv);
    led.alloc(q + 2 * kv);
    led.free(BF16 * d.m * qkv.out_f); // the fused qkv, split into q, k, v
    kept += q + 2 * kv;
    led.alloc(q + F32 * d.attn_rows); // o (as [b, t, hq·d]) and its logsumexp
    led.scratch(1); // the placeholder key mask
    kept += q + F32 * d.attn_rows;
    kept += branch(led, dense); // attention branch output
    kept += linear_forward(led, d, h4h) + BF16 * d.m * h4h.out_f; // pre-GELU
    led.alloc(BF16 * d.m * d.ffn);
    kept += BF16 * d.m * d.ffn; // GELU output
    kept += branch(led, fhh); // MLP branch output
    if !recompute {
        led.alloc(BF16 * d.m * d.hidden); // the layer output
        led.free(2 * BF16 * d.m * d.hidden); // both branch outputs
    }
    kept
}

/// One layer's backward as `layer::backward` runs it, on top of its saved activations and
/// `dout`. Its `dx` (allocated here) stays allocated.
fn layer_backward(led: &mut Ledger, d: &Dims, lin: &[Linear; 4]) {
    let [qkv, dense, h4h, fhh] = lin;
    let h = BF16 * d.m * d.hidden;
    let f = BF16 * d.m * d.ffn;
    let q = BF16 * d.q;
    led.alloc(f); // dact
    linear_backward(led, d, fhh);
    led.alloc(f); // dpre
    led.free(f);
    led.alloc(h); // dh_mlp
    linear_backward(led, d, h4h);
    led.free(f);
    led.alloc(q); // dattn, also the attention's dO (token-major)
    linear_backward(led, d, dense);
    // Attention backward: row dot products and the placeholder mask (scratch), f32 dq, dk, dv,
    // and the dK/dV partial sums of the query-head splits (scratch).
    let grads = F32 * (d.q + 2 * d.kv);
    led.alloc(F32 * d.attn_rows + 1 + grads);
    if d.dkdv_splits > 1 {
        led.scratch(2 * F32 * d.dkdv_splits * d.kv);
    }
    led.free(F32 * d.attn_rows + 1);
    led.free(q);
    led.alloc(BF16 * d.m * d.qkv_out); // dqkv bf16 (RoPE backward)
    led.free(grads);
    if d.norms == 1 {
        linear_backward(led, d, qkv); // into dh_mlp
        led.alloc(h); // dx
        led.scratch(norm_backward_scratch(d));
    } else {
        led.alloc(h); // dh_attn
        linear_backward(led, d, qkv);
        led.alloc(h); // dx
        led.scratch(norm_backward_scratch(d));
        led.alloc(h); // dx of the MLP norm
        led.scratch(norm_backward_scratch(d));
        led.free(2 * h); // it and dh_attn
    }
    led.free(BF16 * d.m * d.qkv_out + h); // dqkv, dh_mlp
}

impl MemoryPlan {
    /// The plan for training `config` with `lora` (its targets, rank and dropout) on a base
    /// stored as `base`, at `shape`, on a device with `multiprocessors` SMs (they set the 4-bit
    /// GEMM's split-K partials; 0 for a device that never splits, as the emulator).
    pub fn for_step(
        config: &FalconConfig,
        lora: &LoraConfig,
        base: BaseStorage,
        shape: StepShape,
        multiprocessors: usize,
    ) -> Result<MemoryPlan> {
        let c = config;
        let (b, t) = (shape.batch, shape.seq);
        if b == 0 || t == 0 {
            return Err(FalconError::InvalidArgument(
                "the memory plan needs a batch of at least one token".into(),
            ));
        }
        // The shapes the step takes (an error for a head size its kernels do not have).
        let g = super::weights::Geometry::from_config(c)?;
        let (hq, hkv, hd) = (g.heads, g.kv_heads, g.head_dim);
        // Every product below is at most one of these times a small constant.
        let largest = [
            [b, t, c.qkv_out_features().max(c.ffn_hidden_size), 8],
            [b, t, FWD_CHUNK.max(BWD_CHUNK), 8],
            [c.vocab_size, c.hidden_size, 2, 1],
            [
                c.hidden_size,
                c.ffn_hidden_size,
                4 * c.num_hidden_layers.max(1),
                1,
            ],
        ];
        if largest.iter().any(|f| {
            f.iter()
                .try_fold(1usize, |a, &x| a.checked_mul(x))
                .is_none()
        }) {
            return Err(FalconError::InvalidArgument(format!(
                "a step of {b} x {t} tokens of this model does not fit in memory addresses"
            )));
        }
        let m = b * t;
        let d = Dims {
            m,
            hidden: c.hidden_size,
            ffn: c.ffn_hidden_size,
            q: m * hq * hd,
            kv: m * hkv * hd,
            qkv_out: c.qkv_out_features(),
            attn_rows: m * hq,
            dkdv_splits: dkdv_splits(&AttnShape {
                batch: b,
                q_heads: hq,
                kv_heads: hkv,
                q_len: t,
                kv_len: t,
                head_dim: hd,
                causal: true,
                scale: 1.0,
                o_token_major: true,
            }),
            norms: match c.norms {
                NormLayout::Single => 1,
                NormLayout::Separate => 2,
            },
            dropout: lora.lora_dropout > 0.0,
            four_bit: base == BaseStorage::FourBit,
            sms: multiprocessors,
        };

        // Resident parts.
        let modules = linear_modules(c);
        let mut layers: Vec<[Linear; 4]> = Vec::with_capacity(c.num_hidden_layers);
        let mut base_weights = 0usize;
        let mut trainable = 0usize;
        for chunk in modules.chunks(4) {
            let mut lin = [Linear {
                in_f: 0,
                out_f: 0,
                lora_r: None,
            }; 4];
            for (slot, module) in lin.iter_mut().zip(chunk) {
                let adapted = lora.matches(module);
                *slot = Linear {
                    in_f: module.in_features,
                    out_f: module.out_features,
                    lora_r: adapted.then_some(lora.r),
                };
                if adapted {
                    trainable += lora.r * (module.in_features + module.out_features);
                }
                base_weights += linear_bytes(module.in_features * module.out_features, base);
            }
            debug_assert_eq!(chunk[0].kind, LinearKind::QueryKeyValue);
            layers.push(lin);
        }
        base_weights += BF16 * c.vocab_size * c.hidden_size; // embedding = lm_head
        base_weights += 2 * BF16 * c.hidden_size * (d.norms * c.num_hidden_layers + 1);
        let rope_inv_freq = F32 * (hd / 2);
        // The adapter buffers are allocated for at least one element.
        let p = trainable.max(1);
        let adapters = (F32 + BF16 + BF16 + F32) * p;
        let optimizer = 2 * F32 * p;

        let mut led = Ledger {
            live: 0,
            peak: 0,
            phase: "weights",
            peak_phase: "weights",
        };
        led.alloc(base_weights + rope_inv_freq + adapters + optimizer);
        let resident = led.live;

        // Batch inputs: mask, positions (scratch), RoPE table, ids, labels.
        led.phase = "batch inputs";
        let batch_inputs = m + F32 * m * hd + 2 * F32 * m;
        led.alloc(m);
        led.alloc(F32 * m); // positions, freed after the RoPE table is built
        led.alloc(F32 * m * hd);
        led.free(F32 * m);
        led.alloc(2 * F32 * m);

        // Forward: each layer's input stays (and, without recompute, its activations).
        led.phase = "forward";
        let x = BF16 * m * d.hidden;
        led.alloc(x); // embeddings
        let mut saved = 0usize;
        for lin in &layers {
            let kept = layer_forward(&mut led, &d, lin, false);
            saved += x;
            if shape.recompute {
                led.free(kept);
            } else {
                saved += kept;
            }
        }
        let saved_activations = saved;

        // ln_f and the fused lm_head + cross-entropy.
        led.phase = "loss";
        led.alloc(norm_forward_bytes(&d));
        let (vocab, fwd_c, bwd_c) = (c.vocab_size, FWD_CHUNK.min(c.vocab_size), BWD_CHUNK);
        let fwd_scratch = F32 * m * fwd_c + 3 * F32 * m;
        led.alloc(F32 * m + F32); // lse and loss, kept through the backward
        led.scratch(fwd_scratch);
        let bwd_c = bwd_c.min(vocab);
        let dh32 = F32 * m * d.hidden;
        led.alloc(dh32);
        led.scratch(F32 * m * bwd_c + BF16 * m * bwd_c);
        led.alloc(x); // dh bf16
        led.free(dh32 + BF16 * m * d.hidden); // dh f32 and the ln_f output
        led.alloc(x); // dx
        led.scratch(norm_backward_scratch(&d));
        led.free(2 * x); // the final hidden state and dh

        // Backward, last layer first: recompute its forward (with recompute on), run its
        // backward, then drop its input, activations and the incoming gradient.
        led.phase = "backward";
        for lin in layers.iter().rev() {
            let kept = if shape.recompute {
                layer_forward(&mut led, &d, lin, true)
            } else {
                // Saved activations, counted since the forward.
                layer_forward_bytes(&d, lin)
            };
            layer_backward(&mut led, &d, lin);
            led.free(kept + x + x); // activations, the layer input, dout
        }
        led.free(x); // the gradient of the embeddings (no embedding gradient is computed)

        // The optimizer step: the norm's partial sums and result.
        led.phase = "optimizer";
        led.scratch(F32 * adamw::norm_partials(p) + 2 * F32);

        Ok(MemoryPlan {
            batch: b,
            seq: t,
            base_weights: base_weights + rope_inv_freq,
            adapters,
            optimizer,
            batch_inputs,
            saved_activations,
            working_set: led
                .peak
                .saturating_sub(resident + batch_inputs + saved_activations),
            working_set_phase: led.peak_phase.to_string(),
            peak: led.peak,
        })
    }
}

/// Bytes of one `n·k` linear weight on the device.
fn linear_bytes(elems: usize, base: BaseStorage) -> usize {
    match base {
        BaseStorage::Bf16 => BF16 * elems,
        BaseStorage::FourBit => {
            let blocks = elems.div_ceil(gemm::NF4_GEMM_BLOCKSIZE);
            elems.div_ceil(2)
                + blocks
                + F32 * blocks.div_ceil(engine::nf4::NESTED_BLOCKSIZE)
                + F32 * 256
                + F32 * 16
        }
    }
}

/// What [`layer_forward`] keeps, without running a ledger.
fn layer_forward_bytes(d: &Dims, lin: &[Linear; 4]) -> usize {
    let mut scratch = Ledger {
        live: 0,
        peak: 0,
        phase: "",
        peak_phase: "",
    };
    layer_forward(&mut scratch, d, lin, false)
}
