//! Blockwise absmax scaling and nearest-code selection, as bitsandbytes' PyTorch reference
//! path (`backends/default/ops.py`, the path its CPU build runs for 4-bit quantization).
//!
//! For a tensor flattened row-major into n elements and cut into blocks of `bs`:
//! - a full block stores `absmax = max |a_i|` and scales `x_i = clamp(a_i · (1 / max(absmax,
//!   1e-38)), -1, 1)`: an exactly rounded fp32 reciprocal, then a multiply;
//! - a partial last block stores `absmax = max(max |a_i|, 1e-38)` (the clamped value is what
//!   bitsandbytes stores there) and scales `x_i = clamp(a_i / absmax, -1, 1)`: a division;
//! - the code is the number of thresholds `t` (ascending) with `!(t >= x)`, i.e.
//!   `torch.bucketize(x, t, right=False)`: nearest value, ties to the lower code, NaN to the
//!   highest bucket; NaN anywhere in a block makes its absmax NaN (torch's `max`).

use half::{bf16, f16};

use super::tables::QuantType;
use crate::DType;

/// bitsandbytes clamps absmax to this before scaling, so an all-zero block scales to 0.
const ABSMAX_FLOOR: f32 = 1e-38;

/// An element type a weight is quantized from or dequantized to.
pub trait QuantElement: Copy + Send + Sync + 'static {
    /// The engine dtype of this element type.
    const DTYPE: DType;
    /// Exact widening to fp32.
    fn to_f32(self) -> f32;
    /// Round-to-nearest-even narrowing from fp32.
    fn from_f32(v: f32) -> Self;
}

impl QuantElement for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl QuantElement for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl QuantElement for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// `max |x|` over a block; NaN if any element is NaN (torch's `max` propagates NaN).
fn max_abs<S: Copy>(block: &[S], to_f32: impl Fn(S) -> f32) -> f32 {
    // Branch-free so it vectorizes: track NaN separately from the max of the numbers.
    let mut m = 0.0f32;
    let mut nan = false;
    for &v in block {
        let a = to_f32(v).abs();
        nan |= a.is_nan();
        m = if a > m { a } else { m };
    }
    if nan {
        f32::NAN
    } else {
        m
    }
}

/// `torch.clamp(x, min=lo)`: NaN passes through.
fn clamp_min(x: f32, lo: f32) -> f32 {
    if x < lo {
        lo
    } else {
        x
    }
}

/// `torch.clamp(x, -1, 1)`: NaN passes through (as with `f32::clamp`).
fn clamp_unit(x: f32) -> f32 {
    x.clamp(-1.0, 1.0)
}

/// Whether threshold `t` counts below `x` in torch's `bucketize(right=False)`:
/// `!(t >= x)`, which is `t < x` for numbers and true for a NaN `x`.
#[inline]
fn below(t: f32, x: f32) -> bool {
    t < x || x.is_nan()
}

/// How one block's elements are mapped into [-1, 1].
#[derive(Clone, Copy)]
enum Scale {
    /// Full block: multiply by the fp32 reciprocal of the clamped absmax.
    Reciprocal(f32),
    /// Partial last block: divide by the clamped absmax.
    Divide(f32),
}

impl Scale {
    fn apply(self, x: f32) -> f32 {
        clamp_unit(match self {
            Scale::Reciprocal(inv) => x * inv,
            Scale::Divide(am) => x / am,
        })
    }
}

/// The stored absmax and the scaling of one block (`partial`: the last block of a tensor
/// whose length is not a multiple of the blocksize).
fn block_scale(max_abs: f32, partial: bool) -> (f32, Scale) {
    if partial {
        let am = clamp_min(max_abs, ABSMAX_FLOOR);
        (am, Scale::Divide(am))
    } else {
        (
            max_abs,
            Scale::Reciprocal(1.0 / clamp_min(max_abs, ABSMAX_FLOOR)),
        )
    }
}

/// `torch.bucketize(x, thresholds, right=False)` over 15 ascending thresholds.
fn bucket4(x: f32, thresholds: &[f32; 15]) -> usize {
    thresholds.iter().map(|&t| usize::from(below(t, x))).sum()
}

/// The 4-bit code of a scaled value in [-1, 1].
pub(crate) fn code4(x: f32, qt: QuantType) -> u8 {
    qt.bucket_to_code()[bucket4(x, qt.thresholds())]
}

/// Quantizes `src` (flattened row-major, read through `to_f32`) to packed 4-bit codes and fp32 absmax per block.
///
/// `packed.len() == ceil(n / 2)`, `absmax.len() == ceil(n / blocksize)`. Byte k holds the
/// code of element 2k in its high nibble and of element 2k+1 in its low nibble; an odd
/// tail is padded with the code of 0.0. `blocksize` must be even (callers validate it), so
/// every block starts on a byte boundary and blocks are quantized independently (in
/// parallel, with results independent of the thread count).
pub(crate) fn quantize_4bit<S: Copy + Sync>(
    src: &[S],
    to_f32: impl Fn(S) -> f32 + Sync,
    qt: QuantType,
    blocksize: usize,
    packed: &mut [u8],
    absmax: &mut [f32],
) {
    use rayon::prelude::*;
    debug_assert!(blocksize.is_multiple_of(2));
    debug_assert_eq!(packed.len(), src.len().div_ceil(2));
    debug_assert_eq!(absmax.len(), src.len().div_ceil(blocksize));
    let pad = code4(0.0, qt);
    let (thresholds, to_code) = (qt.thresholds(), qt.bucket_to_code());
    packed
        .par_chunks_mut(blocksize / 2)
        .zip(absmax.par_iter_mut())
        .zip(src.par_chunks(blocksize))
        .with_min_len(16)
        .for_each(|((bytes, am), block)| {
            let (stored, scale) = block_scale(max_abs(block, &to_f32), block.len() < blocksize);
            *am = stored;
            // Scale and bucket SUB elements at a time, threshold by threshold, so the
            // comparisons vectorize across elements.
            const SUB: usize = 64;
            let mut xs = [0f32; SUB];
            let mut counts = [0u8; SUB];
            for (part, out) in block.chunks(SUB).zip(bytes.chunks_mut(SUB / 2)) {
                let xs = &mut xs[..part.len()];
                let counts = &mut counts[..part.len()];
                match scale {
                    Scale::Reciprocal(inv) => {
                        for (x, &v) in xs.iter_mut().zip(part) {
                            *x = clamp_unit(to_f32(v) * inv);
                        }
                    }
                    Scale::Divide(am) => {
                        for (x, &v) in xs.iter_mut().zip(part) {
                            *x = clamp_unit(to_f32(v) / am);
                        }
                    }
                }
                counts.fill(0);
                for &t in thresholds {
                    for (c, &x) in counts.iter_mut().zip(xs.iter()) {
                        *c += u8::from(below(t, x));
                    }
                }
                for (k, byte) in out.iter_mut().enumerate() {
                    let hi = to_code[usize::from(counts[2 * k])];
                    let lo = counts
                        .get(2 * k + 1)
                        .map_or(pad, |&c| to_code[usize::from(c)]);
                    *byte = (hi << 4) | lo;
                }
            }
        });
}

/// Quantizes `src` blockwise to 8-bit codes of the ascending `code` map (bitsandbytes'
/// `quantize_blockwise` reference path): returns the codes (one per element) and the
/// absmax per block. The decision thresholds are the fp32 midpoints `(code[i] + code[i+1]) / 2`.
pub(crate) fn quantize_8bit(src: &[f32], code: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let bounds: Vec<f32> = code.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let mut q = Vec::with_capacity(src.len());
    let mut absmax = Vec::with_capacity(src.len().div_ceil(blocksize));
    for block in src.chunks(blocksize) {
        let (stored, scale) = block_scale(max_abs(block, |v| v), block.len() < blocksize);
        absmax.push(stored);
        for &v in block {
            let x = scale.apply(v);
            // A u8 code can only index 256 entries; callers pass a 256-entry map.
            q.push(bounds.partition_point(|&t| below(t, x)).min(255) as u8);
        }
    }
    (q, absmax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nf4::tables::{DYNAMIC_MAP, NF4, NF4_THRESHOLDS};

    #[test]
    fn code4_is_nearest_with_ties_to_lower() {
        for (j, &t) in NF4_THRESHOLDS.iter().enumerate() {
            assert_eq!(code4(t, QuantType::Nf4) as usize, j, "tie at threshold {j}");
            assert_eq!(code4(t.next_up(), QuantType::Nf4) as usize, j + 1);
            assert_eq!(code4(t.next_down(), QuantType::Nf4) as usize, j);
        }
        // Exhaustive nearest check on a grid, against float64 distances.
        for i in 0..=20000 {
            let x = -1.0 + i as f32 / 10000.0;
            let c = code4(x, QuantType::Nf4) as usize;
            let d = (f64::from(x) - f64::from(NF4[c])).abs();
            for (k, &v) in NF4.iter().enumerate() {
                assert!(
                    d <= (f64::from(x) - f64::from(v)).abs(),
                    "x={x} code {c} but {k} nearer"
                );
            }
        }
        assert_eq!(code4(f32::NAN, QuantType::Nf4), 15);
    }

    #[test]
    fn eight_bit_is_nearest_in_the_dynamic_map() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let src: Vec<f32> = (0..2000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (state % 7) as f32
            })
            .collect();
        let (q, absmax) = quantize_8bit(&src, &DYNAMIC_MAP, 256);
        for (i, (&v, &c)) in src.iter().zip(&q).enumerate() {
            let m = absmax[i / 256];
            let x = f64::from(clamp_unit(if i >= 1792 { v / m } else { v * (1.0 / m) }));
            let d = (x - f64::from(DYNAMIC_MAP[c as usize])).abs();
            assert!(
                DYNAMIC_MAP.iter().all(|&e| d <= (x - f64::from(e)).abs()),
                "element {i}"
            );
        }
    }
}
