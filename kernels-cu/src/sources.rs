//! The CUDA C++ sources and the table of kernel entry points.

/// The common header every family includes (`#include "common.cuh"`).
pub const COMMON_HEADER: &str = include_str!("../cuda/common.cuh");
/// The name under which kernels include [`COMMON_HEADER`].
pub const COMMON_HEADER_NAME: &str = "common.cuh";

/// One kernel family: one `.cu` file, compiled on its own (by NVRTC, and by the emulator build).
#[derive(Debug)]
pub struct Family {
    /// File stem, e.g. `"elementwise"`.
    pub name: &'static str,
    /// Path relative to the crate root, e.g. `"cuda/elementwise.cu"`.
    pub file: &'static str,
    /// The CUDA C++ source text.
    pub source: &'static str,
    /// PTX built ahead from `source` for [`crate::ptx::PTX_ARCH`] (see `ptx/`), checked current by
    /// the compile gate. This is what the CUDA backend loads: no NVRTC is needed at run time.
    pub ptx: &'static str,
}

/// A kernel entry point (`extern "C" __global__`).
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    pub name: &'static str,
    pub family: &'static Family,
    /// Hot kernels run in the training step: the resource gate fails if one spills registers or
    /// uses a stack frame.
    pub hot: bool,
}

macro_rules! family {
    ($id:ident, $name:literal) => {
        pub static $id: Family = Family {
            name: $name,
            file: concat!("cuda/", $name, ".cu"),
            source: include_str!(concat!("../cuda/", $name, ".cu")),
            ptx: include_str!(concat!("../ptx/", $name, ".ptx")),
        };
    };
}

family!(ELEMENTWISE, "elementwise");
family!(REDUCE, "reduce");
family!(SELFTEST, "selftest");
family!(LAYERNORM, "layernorm");
family!(POINTWISE, "pointwise");
family!(ADAMW, "adamw");
family!(ATTENTION, "attention");
family!(GEMM, "gemm");
family!(ROPE, "rope");
family!(CROSS_ENTROPY, "cross_entropy");
family!(CONVERT, "convert");
family!(DROPOUT, "dropout");
family!(SKINNY, "skinny");
family!(DECODE, "decode");

/// Every family, in file-name order.
pub static FAMILIES: &[&Family] = &[
    &ADAMW,
    &ATTENTION,
    &CONVERT,
    &CROSS_ENTROPY,
    &DECODE,
    &DROPOUT,
    &ELEMENTWISE,
    &LAYERNORM,
    &GEMM,
    &POINTWISE,
    &REDUCE,
    &ROPE,
    &SELFTEST,
    &SKINNY,
];

macro_rules! kernels {
    ($($id:ident = $fam:ident :: $name:ident, hot = $hot:literal;)*) => {
        /// Every kernel entry point as a constant, for launch tables.
        pub mod kernels {
            use super::*;
            $(pub const $id: Kernel = Kernel { name: stringify!($name), family: &$fam, hot: $hot };)*
        }
        /// Every kernel entry point, in family and source order.
        pub static KERNELS: &[Kernel] = &[$(kernels::$id),*];
    };
}

kernels! {
    ADD_F32 = ELEMENTWISE::add_f32, hot = true;
    SCALE_F32 = ELEMENTWISE::scale_f32, hot = true;
    AXPY_F32 = ELEMENTWISE::axpy_f32, hot = true;
    ADD_BF16 = ELEMENTWISE::add_bf16, hot = true;
    SCALE_BF16 = ELEMENTWISE::scale_bf16, hot = true;
    AXPY_BF16 = ELEMENTWISE::axpy_bf16, hot = true;
    SUM_F32 = REDUCE::sum_f32, hot = true;
    SUMSQ_F32 = REDUCE::sumsq_f32, hot = true;
    SUMSQ_BF16 = REDUCE::sumsq_bf16, hot = true;
    SUM_PARTIALS_F32 = REDUCE::sum_partials_f32, hot = true;
    SELFTEST_SHFL = SELFTEST::selftest_shfl, hot = false;
    SELFTEST_SHFL_F64 = SELFTEST::selftest_shfl_f64, hot = false;
    SELFTEST_VOTE = SELFTEST::selftest_vote, hot = false;
    SELFTEST_LDMATRIX = SELFTEST::selftest_ldmatrix, hot = false;
    SELFTEST_MMA_FRAGMENTS = SELFTEST::selftest_mma_fragments, hot = false;
    SELFTEST_MMA_TILE = SELFTEST::selftest_mma_tile, hot = false;
    SELFTEST_CP_ASYNC = SELFTEST::selftest_cp_async, hot = false;
    SELFTEST_DIVERGENT_BARRIER = SELFTEST::selftest_divergent_barrier, hot = false;
    SELFTEST_MISMATCHED_WARP = SELFTEST::selftest_mismatched_warp, hot = false;
    SELFTEST_OUT_OF_BOUNDS = SELFTEST::selftest_out_of_bounds, hot = false;
    SELFTEST_CONVERT = SELFTEST::selftest_convert, hot = false;
    SELFTEST_CP_ASYNC_READ_BEFORE_WAIT = SELFTEST::selftest_cp_async_read_before_wait, hot = false;
    SELFTEST_HALF_WARPS = SELFTEST::selftest_half_warps, hot = false;
    LAYERNORM_FWD_F32 = LAYERNORM::layernorm_fwd_f32, hot = true;
    LAYERNORM_FWD_BF16 = LAYERNORM::layernorm_fwd_bf16, hot = true;
    LAYERNORM_BWD_F32 = LAYERNORM::layernorm_bwd_f32, hot = true;
    LAYERNORM_BWD_BF16 = LAYERNORM::layernorm_bwd_bf16, hot = true;
    LAYERNORM_BWD_REDUCE = LAYERNORM::layernorm_bwd_reduce, hot = true;
    GELU_FWD_F32 = POINTWISE::gelu_fwd_f32, hot = true;
    GELU_FWD_BF16 = POINTWISE::gelu_fwd_bf16, hot = true;
    GELU_BWD_F32 = POINTWISE::gelu_bwd_f32, hot = true;
    GELU_BWD_BF16 = POINTWISE::gelu_bwd_bf16, hot = true;
    RESIDUAL_ADD3_F32 = POINTWISE::residual_add3_f32, hot = true;
    RESIDUAL_ADD3_BF16 = POINTWISE::residual_add3_bf16, hot = true;
    EMBEDDING_FWD_F32 = POINTWISE::embedding_fwd_f32, hot = true;
    EMBEDDING_FWD_BF16 = POINTWISE::embedding_fwd_bf16, hot = true;
    EMBEDDING_ZERO_F32 = POINTWISE::embedding_zero_f32, hot = false;
    EMBEDDING_BWD_F32 = POINTWISE::embedding_bwd_f32, hot = false;
    EMBEDDING_BWD_BF16 = POINTWISE::embedding_bwd_bf16, hot = false;
    ADAMW_F32 = ADAMW::adamw_f32, hot = true;
    GRAD_SUMSQ_PARTIALS = ADAMW::grad_sumsq_partials, hot = true;
    GRAD_NORM_FINALIZE = ADAMW::grad_norm_finalize, hot = true;
    ROPE_TABLE = ROPE::rope_table, hot = false;
    ROPE_QKV_FWD_F32 = ROPE::rope_qkv_fwd_f32, hot = true;
    ROPE_QKV_FWD_BF16 = ROPE::rope_qkv_fwd_bf16, hot = true;
    ROPE_QKV_BWD_F32 = ROPE::rope_qkv_bwd_f32, hot = true;
    ROPE_QKV_BWD_BF16 = ROPE::rope_qkv_bwd_bf16, hot = true;
    ROPE_QKV_BWD_F32_BF16 = ROPE::rope_qkv_bwd_f32_bf16, hot = true;
    LCE_FWD_FOLD = CROSS_ENTROPY::lce_fwd_fold, hot = true;
    LCE_FWD_FINALIZE = CROSS_ENTROPY::lce_fwd_finalize, hot = true;
    LCE_BWD_DZ = CROSS_ENTROPY::lce_bwd_dz, hot = true;
    NF4_DEQUANT_BF16 = GEMM::nf4_dequant_bf16, hot = false;
    NF4_DEQUANT_F32 = GEMM::nf4_dequant_f32, hot = false;
    NF4_QUANTIZE_F32 = GEMM::nf4_quantize_f32, hot = false;
    NF4_QUANTIZE_BF16 = GEMM::nf4_quantize_bf16, hot = false;
    GEMM_BF16_NT_BF16 = GEMM::gemm_bf16_nt_bf16, hot = true;
    GEMM_BF16_NT_F32 = GEMM::gemm_bf16_nt_f32, hot = true;
    GEMM_BF16_NN_BF16 = GEMM::gemm_bf16_nn_bf16, hot = true;
    GEMM_BF16_NN_F32 = GEMM::gemm_bf16_nn_f32, hot = true;
    GEMM_BF16_TN_BF16 = GEMM::gemm_bf16_tn_bf16, hot = true;
    GEMM_BF16_TN_F32 = GEMM::gemm_bf16_tn_f32, hot = true;
    NF4_GEMM_FWD_BF16 = GEMM::nf4_gemm_fwd_bf16, hot = true;
    NF4_GEMM_FWD_F32 = GEMM::nf4_gemm_fwd_f32, hot = true;
    NF4_GEMM_BWD_BF16 = GEMM::nf4_gemm_bwd_bf16, hot = true;
    NF4_GEMM_BWD_F32 = GEMM::nf4_gemm_bwd_f32, hot = true;
    NF4_GEMM_FWD_WGMMA_BF16 = GEMM::nf4_gemm_fwd_wgmma_bf16, hot = true;
    NF4_GEMM_FWD_WGMMA_F32 = GEMM::nf4_gemm_fwd_wgmma_f32, hot = true;
    NF4_GEMM_BWD_WGMMA_BF16 = GEMM::nf4_gemm_bwd_wgmma_bf16, hot = true;
    NF4_GEMM_BWD_WGMMA_F32 = GEMM::nf4_gemm_bwd_wgmma_f32, hot = true;
    ATTN_FWD_D64 = ATTENTION::attn_fwd_d64, hot = true;
    ATTN_FWD_D128 = ATTENTION::attn_fwd_d128, hot = true;
    ATTN_BWD_DKDV_D64 = ATTENTION::attn_bwd_dkdv_d64, hot = true;
    ATTN_BWD_DKDV_D128 = ATTENTION::attn_bwd_dkdv_d128, hot = true;
    ATTN_BWD_DQ_D64 = ATTENTION::attn_bwd_dq_d64, hot = true;
    ATTN_BWD_DQ_D128 = ATTENTION::attn_bwd_dq_d128, hot = true;
    ATTN_BWD_DOT = ATTENTION::attn_bwd_dot, hot = true;
    ATTN_BWD_DKDV_REDUCE = ATTENTION::attn_bwd_dkdv_reduce, hot = true;
    CAST_F32_BF16 = CONVERT::cast_f32_bf16, hot = true;
    CAST_BF16_F32 = CONVERT::cast_bf16_f32, hot = true;
    SWAP_AXES12_BF16 = CONVERT::swap_axes12_bf16, hot = true;
    SWAP_AXES12_F32 = CONVERT::swap_axes12_f32, hot = true;
    DROPOUT_FWD_F32 = DROPOUT::dropout_fwd_f32, hot = true;
    DROPOUT_FWD_BF16 = DROPOUT::dropout_fwd_bf16, hot = true;
    DROPOUT_BWD_ADD_F32 = DROPOUT::dropout_bwd_add_f32, hot = true;
    DROPOUT_BWD_ADD_BF16 = DROPOUT::dropout_bwd_add_bf16, hot = true;
    SKINNY_NT_ROWS_F32 = SKINNY::skinny_nt_rows_f32, hot = true;
    SKINNY_NT_ROWS_BF16 = SKINNY::skinny_nt_rows_bf16, hot = true;
    SKINNY_NT_F32 = SKINNY::skinny_nt_f32, hot = true;
    SKINNY_NT_BF16 = SKINNY::skinny_nt_bf16, hot = true;
    DECODE_GEMV_NF4_BF16 = DECODE::decode_gemv_nf4_bf16, hot = true;
    DECODE_GEMV_NF4_F32 = DECODE::decode_gemv_nf4_f32, hot = true;
    DECODE_GEMV_NF4_GELU_BF16 = DECODE::decode_gemv_nf4_gelu_bf16, hot = true;
    DECODE_GEMV_NF4_RESIDUAL_BF16 = DECODE::decode_gemv_nf4_residual_bf16, hot = true;
    DECODE_GEMV_NF4_M8_BF16 = DECODE::decode_gemv_nf4_m8_bf16, hot = true;
    DECODE_GEMV_NF4_M8_F32 = DECODE::decode_gemv_nf4_m8_f32, hot = true;
    DECODE_GEMV_NF4_M8_GELU_BF16 = DECODE::decode_gemv_nf4_m8_gelu_bf16, hot = true;
    DECODE_GEMV_NF4_M8_RESIDUAL_BF16 = DECODE::decode_gemv_nf4_m8_residual_bf16, hot = true;
    DECODE_GEMV_BF16_BF16 = DECODE::decode_gemv_bf16_bf16, hot = true;
    DECODE_GEMV_BF16_F32 = DECODE::decode_gemv_bf16_f32, hot = true;
    DECODE_GEMV_BF16_M8_BF16 = DECODE::decode_gemv_bf16_m8_bf16, hot = true;
    DECODE_GEMV_BF16_M8_F32 = DECODE::decode_gemv_bf16_m8_f32, hot = true;
    DECODE_ATTN_SPLIT_D64 = DECODE::decode_attn_split_d64, hot = true;
    DECODE_ATTN_SPLIT_D128 = DECODE::decode_attn_split_d128, hot = true;
    DECODE_ATTN_COMBINE_D64 = DECODE::decode_attn_combine_d64, hot = true;
    DECODE_ATTN_COMBINE_D128 = DECODE::decode_attn_combine_d128, hot = true;
    DECODE_ROPE_APPEND = DECODE::decode_rope_append, hot = true;
    DECODE_KV_WRITE = DECODE::decode_kv_write, hot = true;
    DECODE_TAKE_ROWS = DECODE::decode_take_rows, hot = false;
}

/// Kernels that exist only for the arch-specific target sm_90a (they use wgmma): absent from
/// the family's compute_80 PTX and its sm_80..sm_90 cubins, present in its sm_90a PTX and cubin
/// ([`crate::ptx::sm90a_ptx`], [`crate::cubin::family_image`]).
pub const SM90A_KERNELS: &[&str] = &[
    "nf4_gemm_fwd_wgmma_bf16",
    "nf4_gemm_fwd_wgmma_f32",
    "nf4_gemm_bwd_wgmma_bf16",
    "nf4_gemm_bwd_wgmma_f32",
];

impl Kernel {
    /// True for a kernel built only for sm_90a ([`SM90A_KERNELS`]).
    pub fn sm90a_only(&self) -> bool {
        SM90A_KERNELS.contains(&self.name)
    }

    /// The embedded PTX that holds this kernel: its family's, or the family's sm_90a PTX.
    pub fn ptx(&self) -> &'static str {
        if self.sm90a_only() {
            crate::ptx::sm90a_ptx(self.family.name).unwrap_or("")
        } else {
            self.family.ptx
        }
    }
}

/// Looks a kernel up by name.
pub fn kernel(name: &str) -> Option<Kernel> {
    KERNELS.iter().copied().find(|k| k.name == name)
}
