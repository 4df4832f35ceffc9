//! Pointer parameters that kernels access with 16-byte vectors (`load4`, `load_u32x4`,
//! `cp.async` of 16 bytes) on every path, so the address they receive must be a multiple of 16.
//! A misaligned vector access is a sticky "misaligned address" fault on a GPU that ends the
//! context; device allocations are aligned, but a [`crate::BufferView`] or an `Arg::RefAt` can
//! start anywhere. [`crate::Device::launch`] refuses such a launch with a clear error instead.
//! (Kernels that choose a vector path only after checking alignment are not listed: convert,
//! dropout, skinny and cross-entropy, whose launchers pass `vec = 0` for such views, and
//! LayerNorm, RoPE and the elementwise kernels, which check their pointers themselves.)

/// Alignment in bytes that the listed parameters need.
pub const VECTOR_ALIGN: u64 = 16;

/// The parameter indices of `kernel` that must be [`VECTOR_ALIGN`]-aligned.
pub fn vector_params(kernel: &str) -> &'static [usize] {
    match kernel {
        "gelu_fwd_f32" | "gelu_fwd_bf16" => &[0, 1],
        "gelu_bwd_f32" | "gelu_bwd_bf16" => &[0, 1, 2],
        "residual_add3_f32" | "residual_add3_bf16" => &[0, 1, 2, 3],
        "adamw_f32" => &[0, 1, 2, 3],
        // The GEMM tiles of A and B arrive by 16-byte cp.async.
        "gemm_bf16_nt_bf16" | "gemm_bf16_nt_f32" | "gemm_bf16_nn_bf16" | "gemm_bf16_nn_f32"
        | "gemm_bf16_tn_bf16" | "gemm_bf16_tn_f32" => &[1, 2],
        // Activations (x / dy) and the packed 4-bit codes arrive by 16-byte cp.async.
        "nf4_gemm_fwd_bf16"
        | "nf4_gemm_fwd_f32"
        | "nf4_gemm_bwd_bf16"
        | "nf4_gemm_bwd_f32"
        | "nf4_gemm_fwd_wgmma_bf16"
        | "nf4_gemm_fwd_wgmma_f32"
        | "nf4_gemm_bwd_wgmma_bf16"
        | "nf4_gemm_bwd_wgmma_f32" => &[1, 2],
        // q, k, v tiles arrive by 16-byte cp.async.
        "attn_fwd_d64" | "attn_fwd_d128" => &[2, 3, 4],
        "attn_bwd_dkdv_d64" | "attn_bwd_dkdv_d128" => &[2, 3, 4, 7],
        "attn_bwd_dq_d64" | "attn_bwd_dq_d128" => &[1, 2, 3, 6],
        _ => &[],
    }
}
