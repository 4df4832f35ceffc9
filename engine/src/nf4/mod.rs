//! NF4 / FP4 4-bit quantization with double quantization, bit-compatible with bitsandbytes.
//!
//! - [`tables`]: the NF4 and FP4 code values and the 8-bit dynamic map.
//! - [`QuantizedWeight`]: packed codes + absmax (plain or double-quantized) of a linear weight
//!   `[out, in]`; quantize from f32/bf16/f16, dequantize whole or by rows, memory accounting.
//! - [`serialize`]: the bitsandbytes / transformers state-dict layout (read and write).
//! - [`linear`]: `y = x · dequant(W)ᵀ` and `dx = dy · dequant(W)` on the CPU, tile by tile.
//! - [`dequant_cache`]: whole dequantized weights kept within a byte budget, so repeated
//!   products by a frozen weight dequantize it once.
//!
//! Quantization follows bitsandbytes' PyTorch reference path (what its CPU build runs for
//! 4-bit), which is also the exact-reciprocal semantics a CUDA port should use:
//! absmax per block in fp32; `x = a · (1/absmax)` (a division for a partial last block);
//! code = nearest table value, ties to the lower code; byte k = code(2k) << 4 | code(2k+1).
//! Edge cases follow the same path: an all-zero block stores absmax 0 and packs 0x77 (the
//! CUDA kernel would pack 0x00; both decode to zero); an all-zero partial last block stores
//! absmax 1e-38; a NaN makes its block's absmax NaN and its codes the top bucket.
//! Double quantization subtracts the mean absmax and quantizes the rest with the dynamic map
//! in blocks of 256, picking the exact nearest code (bitsandbytes' C++ CPU kernel uses an
//! approximate lookup table there and can differ by one code; its CUDA kernel and its
//! PyTorch reference agree with us).

mod blockwise;
pub mod dequant_cache;
mod error;
pub mod linear;
pub mod serialize;
pub mod tables;
mod weight;

pub use blockwise::QuantElement;
pub use error::Nf4Error;
pub use linear::{linear_backward_input, linear_forward, tile_rows, TILE_ROWS};
pub use serialize::{StateTensor, TensorRef};
pub use tables::{create_dynamic_map, QuantType, DYNAMIC_MAP, FP4, NF4, NF4_THRESHOLDS};
pub use weight::{
    Absmax, DoubleQuantState, QuantConfig, QuantizedWeight, BLOCKSIZES, NESTED_BLOCKSIZE,
};
