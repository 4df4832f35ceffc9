//! The quantized weight: packed 4-bit codes plus its quantization state.

use std::ops::Range;

use rayon::prelude::*;

use super::blockwise::{quantize_4bit, quantize_8bit, QuantElement};
use super::error::Nf4Error;
use super::tables::{QuantType, DYNAMIC_MAP};
use crate::DType;

/// Blocksizes bitsandbytes accepts for 4-bit quantization.
pub const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Blocksize of the nested (double) quantization of absmax; bitsandbytes always uses 256.
pub const NESTED_BLOCKSIZE: usize = 256;

/// How to quantize a weight. The default is QLoRA's: NF4, blocksize 64, double quantization.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantConfig {
    pub quant_type: QuantType,
    /// Elements per absmax block; one of [`BLOCKSIZES`].
    pub blocksize: usize,
    /// Double quantization (bitsandbytes' `compress_statistics`).
    pub double_quant: bool,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: true,
        }
    }
}

pub(crate) fn check_blocksize(blocksize: usize) -> Result<(), Nf4Error> {
    if BLOCKSIZES.contains(&blocksize) {
        Ok(())
    } else {
        Err(Nf4Error::BadBlocksize(blocksize))
    }
}

/// Double-quantized absmax statistics.
///
/// `absmax[b] = fp32(fp32(code[codes[b]] · nested_absmax[b / nested_blocksize]) + offset)`:
/// two separately rounded fp32 operations, as bitsandbytes (never a fused multiply-add).
#[derive(Clone, Debug, PartialEq)]
pub struct DoubleQuantState {
    /// 8-bit code per 4-bit block (bitsandbytes' `weight.absmax`, uint8).
    pub codes: Vec<u8>,
    /// fp32 absmax of `absmax - offset` per nested block (`weight.nested_absmax`).
    pub nested_absmax: Vec<f32>,
    /// The mean of the fp32 absmax, subtracted before quantizing (`nested_offset`).
    pub offset: f32,
    /// The 256-entry map the codes index (`weight.nested_quant_map`).
    pub code: Vec<f32>,
    /// Codes per nested block (256).
    pub nested_blocksize: usize,
}

impl DoubleQuantState {
    /// Double-quantizes fp32 `absmax` around `offset` with the dynamic map, blocks of 256.
    pub fn quantize(absmax: &[f32], offset: f32) -> Self {
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let (codes, nested_absmax) = quantize_8bit(&centred, &DYNAMIC_MAP, NESTED_BLOCKSIZE);
        DoubleQuantState {
            codes,
            nested_absmax,
            offset,
            code: DYNAMIC_MAP.to_vec(),
            nested_blocksize: NESTED_BLOCKSIZE,
        }
    }

    /// The offset bitsandbytes subtracts: the mean of `absmax`, here summed in f64 and
    /// rounded once to fp32 (torch sums in fp32 in an order that depends on the CPU's
    /// vector width, so its mean can differ by an ulp; loading uses the stored offset).
    pub fn mean_offset(absmax: &[f32]) -> f32 {
        if absmax.is_empty() {
            return 0.0;
        }
        let sum: f64 = absmax.iter().map(|&a| f64::from(a)).sum();
        (sum / absmax.len() as f64) as f32
    }

    /// The reconstructed fp32 absmax of 4-bit block `b`.
    #[inline]
    pub fn absmax(&self, b: usize) -> f32 {
        let scaled =
            self.code[usize::from(self.codes[b])] * self.nested_absmax[b / self.nested_blocksize];
        scaled + self.offset
    }
}

/// The per-block scales of a 4-bit weight.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    /// fp32 absmax per block (`weight.absmax`, float32).
    Plain(Vec<f32>),
    /// Double-quantized absmax.
    Double(DoubleQuantState),
}

impl Absmax {
    /// The fp32 absmax of block `b`.
    #[inline]
    pub fn get(&self, b: usize) -> f32 {
        match self {
            Absmax::Plain(v) => v[b],
            Absmax::Double(dq) => dq.absmax(b),
        }
    }

    /// Number of blocks described.
    pub fn len(&self) -> usize {
        match self {
            Absmax::Plain(v) => v.len(),
            Absmax::Double(dq) => dq.codes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of statistics: fp32 absmax, or codes + nested absmax + the fp32 offset.
    /// The fixed code maps (64 B and 1 KiB per tensor) are not counted.
    pub fn bytes(&self) -> usize {
        match self {
            Absmax::Plain(v) => 4 * v.len(),
            Absmax::Double(dq) => dq.codes.len() + 4 * dq.nested_absmax.len() + 4,
        }
    }
}

/// A linear weight `W[out_features, in_features]` stored in bitsandbytes' 4-bit format.
///
/// QuantElement (r, c) has flat index `i = r·in_features + c`; its code is the high nibble of
/// `packed[i / 2]` when i is even and the low nibble when odd, and its value is
/// `w = table[code] · absmax[i / blocksize]` in fp32 (`QuantType::dequant_table`), rounded once to the output dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedWeight {
    packed: Vec<u8>,
    out_features: usize,
    in_features: usize,
    quant_type: QuantType,
    blocksize: usize,
    absmax: Absmax,
    dtype: DType,
}

fn numel(out_features: usize, in_features: usize) -> Result<usize, Nf4Error> {
    out_features
        .checked_mul(in_features)
        .ok_or(Nf4Error::ShapeOverflow(out_features, in_features))
}

impl QuantizedWeight {
    /// Quantizes `src` (row-major `[out_features, in_features]`, f32/bf16/f16) exactly as
    /// bitsandbytes' `quantize_4bit` (PyTorch reference path), double-quantizing absmax
    /// around its mean when `cfg.double_quant`.
    pub fn quantize<T: QuantElement>(
        src: &[T],
        out_features: usize,
        in_features: usize,
        cfg: QuantConfig,
    ) -> Result<Self, Nf4Error> {
        Self::quantize_impl(
            src,
            T::to_f32,
            T::DTYPE,
            out_features,
            in_features,
            cfg,
            None,
        )
    }

    /// As [`quantize`](Self::quantize) from little-endian bytes of `dtype` (f32, bf16 or f16)
    /// with no alignment requirement, e.g. a tensor inside a memory-mapped safetensors file.
    pub fn quantize_le_bytes(
        bytes: &[u8],
        dtype: DType,
        out_features: usize,
        in_features: usize,
        cfg: QuantConfig,
    ) -> Result<Self, Nf4Error> {
        let size = dtype.size_in_bytes();
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Nf4Error::UnsupportedDtype(dtype));
        }
        let expected = numel(out_features, in_features)?.saturating_mul(size);
        if bytes.len() != expected {
            return Err(Nf4Error::Length {
                what: format!("{dtype} source bytes for shape [{out_features}, {in_features}]"),
                expected,
                got: bytes.len(),
            });
        }
        let (o, i) = (out_features, in_features);
        match dtype {
            DType::F32 => {
                let src = bytes.as_chunks::<4>().0;
                Self::quantize_impl(
                    src,
                    |b: [u8; 4]| f32::from_le_bytes(b),
                    dtype,
                    o,
                    i,
                    cfg,
                    None,
                )
            }
            DType::BF16 => {
                let src = bytes.as_chunks::<2>().0;
                Self::quantize_impl(
                    src,
                    |b: [u8; 2]| half::bf16::from_le_bytes(b).to_f32(),
                    dtype,
                    o,
                    i,
                    cfg,
                    None,
                )
            }
            _ => {
                let src = bytes.as_chunks::<2>().0;
                Self::quantize_impl(
                    src,
                    |b: [u8; 2]| half::f16::from_le_bytes(b).to_f32(),
                    dtype,
                    o,
                    i,
                    cfg,
                    None,
                )
            }
        }
    }

    /// As [`quantize`](Self::quantize) with double quantization around a given `offset`
    /// instead of the computed mean (to reproduce a state whose offset came from torch).
    pub fn quantize_with_offset<T: QuantElement>(
        src: &[T],
        out_features: usize,
        in_features: usize,
        cfg: QuantConfig,
        offset: f32,
    ) -> Result<Self, Nf4Error> {
        Self::quantize_impl(
            src,
            T::to_f32,
            T::DTYPE,
            out_features,
            in_features,
            QuantConfig {
                double_quant: true,
                ..cfg
            },
            Some(offset),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn quantize_impl<S: Copy + Sync>(
        src: &[S],
        to_f32: impl Fn(S) -> f32 + Sync,
        dtype: DType,
        out_features: usize,
        in_features: usize,
        cfg: QuantConfig,
        offset: Option<f32>,
    ) -> Result<Self, Nf4Error> {
        check_blocksize(cfg.blocksize)?;
        let n = numel(out_features, in_features)?;
        if src.len() != n {
            return Err(Nf4Error::SourceLength {
                got: src.len(),
                expected: n,
                out_features,
                in_features,
            });
        }
        let mut packed = vec![0u8; n.div_ceil(2)];
        let mut absmax = vec![0f32; n.div_ceil(cfg.blocksize)];
        quantize_4bit(
            src,
            to_f32,
            cfg.quant_type,
            cfg.blocksize,
            &mut packed,
            &mut absmax,
        );
        let absmax = if cfg.double_quant {
            let offset = offset.unwrap_or_else(|| DoubleQuantState::mean_offset(&absmax));
            Absmax::Double(DoubleQuantState::quantize(&absmax, offset))
        } else {
            Absmax::Plain(absmax)
        };
        Ok(QuantizedWeight {
            packed,
            out_features,
            in_features,
            quant_type: cfg.quant_type,
            blocksize: cfg.blocksize,
            absmax,
            dtype,
        })
    }

    /// Assembles a weight from its parts (e.g. loaded from a checkpoint), checking that
    /// every length agrees with the shape and blocksize.
    pub fn from_parts(
        packed: Vec<u8>,
        out_features: usize,
        in_features: usize,
        quant_type: QuantType,
        blocksize: usize,
        absmax: Absmax,
        dtype: DType,
    ) -> Result<Self, Nf4Error> {
        check_blocksize(blocksize)?;
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Nf4Error::UnsupportedDtype(dtype));
        }
        let n = numel(out_features, in_features)?;
        let len = |what: &str, expected: usize, got: usize| {
            if expected == got {
                Ok(())
            } else {
                Err(Nf4Error::Length {
                    what: what.to_string(),
                    expected,
                    got,
                })
            }
        };
        len("packed codes (bytes)", n.div_ceil(2), packed.len())?;
        let blocks = n.div_ceil(blocksize);
        len("absmax", blocks, absmax.len())?;
        if let Absmax::Double(dq) = &absmax {
            if dq.nested_blocksize == 0 || dq.nested_blocksize % 2 == 1 {
                return Err(Nf4Error::BadNestedBlocksize(dq.nested_blocksize));
            }
            len(
                "nested absmax",
                blocks.div_ceil(dq.nested_blocksize),
                dq.nested_absmax.len(),
            )?;
            len("nested quant map", 256, dq.code.len())?;
        }
        Ok(QuantizedWeight {
            packed,
            out_features,
            in_features,
            quant_type,
            blocksize,
            absmax,
            dtype,
        })
    }

    /// Packed codes, two per byte, `ceil(n / 2)` bytes.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.out_features, self.in_features]
    }
    /// Number of weights, `out_features · in_features`.
    pub fn numel(&self) -> usize {
        self.out_features * self.in_features
    }
    pub fn quant_type(&self) -> QuantType {
        self.quant_type
    }
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }
    pub fn absmax(&self) -> &Absmax {
        &self.absmax
    }
    /// The dtype the weight was quantized from, which dequantization restores.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of absmax blocks, `ceil(n / blocksize)`.
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// The fp32 absmax of every block (reconstructed when double-quantized).
    pub fn absmax_f32(&self) -> Vec<f32> {
        (0..self.num_blocks()).map(|b| self.absmax.get(b)).collect()
    }

    /// Bytes held: packed codes plus absmax statistics (see [`Absmax::bytes`]).
    pub fn storage_bytes(&self) -> usize {
        self.packed.len() + self.absmax.bytes()
    }

    /// `8 · storage_bytes / numel`: about 4.127 with double quantization at blocksize 64
    /// (4 + 8/64 + 32/16384), 4.5 without.
    pub fn bits_per_parameter(&self) -> f64 {
        if self.numel() == 0 {
            return 0.0;
        }
        8.0 * self.storage_bytes() as f64 / self.numel() as f64
    }

    /// Dequantizes rows `rows` into `out` (row-major `[rows.len(), in_features]`), as
    /// bitsandbytes: `fp32(table[code] · absmax)` rounded once to `T`.
    pub fn dequantize_rows_into<T: QuantElement>(
        &self,
        rows: Range<usize>,
        out: &mut [T],
    ) -> Result<(), Nf4Error> {
        if rows.start > rows.end || rows.end > self.out_features {
            return Err(Nf4Error::RowRange {
                start: rows.start,
                end: rows.end,
                rows: self.out_features,
            });
        }
        let expected = (rows.end - rows.start) * self.in_features;
        if out.len() != expected {
            return Err(Nf4Error::Length {
                what: "dequantize output".to_string(),
                expected,
                got: out.len(),
            });
        }
        self.dequantize_flat(rows.start * self.in_features, out);
        Ok(())
    }

    /// Dequantizes the whole weight to fp32, row-major `[out_features, in_features]`.
    pub fn dequantize_f32(&self) -> Vec<f32> {
        self.dequantize_all()
    }

    /// Rounds fp32 dequantized values through the weight's stored dtype (bf16/f16), in place:
    /// bitsandbytes' `dequantize_4bit` returns the weight in that dtype, so a matmul against it
    /// sees these rounded values. f32-sourced weights are left as they are.
    pub fn round_to_stored(&self, values: &mut [f32]) {
        match self.dtype {
            DType::BF16 => values
                .iter_mut()
                .for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
            DType::F16 => values
                .iter_mut()
                .for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
            _ => {}
        }
    }

    /// The weight bitsandbytes would hand to a matmul: dequantized in its stored dtype, widened
    /// to fp32 (exactly), row-major `[out_features, in_features]`.
    pub fn dequantize_stored_f32(&self) -> Vec<f32> {
        let mut v = self.dequantize_f32();
        self.round_to_stored(&mut v);
        v
    }

    /// Dequantizes the whole weight to bf16 (each fp32 product rounded to nearest even).
    pub fn dequantize_bf16(&self) -> Vec<half::bf16> {
        self.dequantize_all()
    }

    /// Dequantizes the whole weight to any supported element type.
    pub fn dequantize_all<T: QuantElement>(&self) -> Vec<T> {
        let mut out = vec![T::from_f32(0.0); self.numel()];
        self.dequantize_flat(0, &mut out);
        out
    }

    /// Dequantizes flat elements `start .. start + out.len()` (in bounds by construction).
    /// Work is split into fixed chunks; each element is computed independently, so the
    /// result does not depend on the thread count.
    fn dequantize_flat<T: QuantElement>(&self, start: usize, out: &mut [T]) {
        const CHUNK: usize = 1 << 14;
        let table = self.quant_type.dequant_table();
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(ci, chunk)| {
                let begin = start + ci * CHUNK;
                let end = begin + chunk.len();
                let mut i = begin;
                while i < end {
                    let b = i / self.blocksize;
                    let seg_end = end.min((b + 1) * self.blocksize);
                    let am = self.absmax.get(b);
                    let lut: [T; 16] = std::array::from_fn(|c| T::from_f32(table[c] * am));
                    decode_segment(
                        &self.packed,
                        &lut,
                        i,
                        seg_end,
                        &mut chunk[i - begin..seg_end - begin],
                    );
                    i = seg_end;
                }
            });
    }
}

/// Writes `lut[code]` for flat elements `start..end` into `out` (`end - start` long).
#[inline]
fn decode_segment<T: Copy>(packed: &[u8], lut: &[T; 16], start: usize, end: usize, out: &mut [T]) {
    let mut i = start;
    let mut o = 0;
    if i % 2 == 1 && i < end {
        out[o] = lut[usize::from(packed[i / 2] & 15)];
        i += 1;
        o += 1;
    }
    let pairs = (end - i) / 2;
    for (byte, dst) in packed[i / 2..i / 2 + pairs]
        .iter()
        .zip(out[o..o + 2 * pairs].chunks_exact_mut(2))
    {
        dst[0] = lut[usize::from(byte >> 4)];
        dst[1] = lut[usize::from(byte & 15)];
    }
    i += 2 * pairs;
    o += 2 * pairs;
    if i < end {
        out[o] = lut[usize::from(packed[i / 2] >> 4)];
    }
}
