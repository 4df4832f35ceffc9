//! The SASS counter of the performance model (`kernels_cu::perf::sass`): the parser on a
//! hand-written listing, then the real tools on a small known kernel and on the hot GEMMs.
//! Without ptxas or nvdisasm the tool tests print that they were skipped; under CI=true they
//! fail instead.

use kernels_cu::perf::{gpu, sass};
use kernels_cu::{tools, FAMILIES};
use std::path::PathBuf;

const LISTING: &str = r#"
//--------------------- .text.toy --------------------------
.text.toy:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   LDSM.16.M88.4 R4, [R2] ;
        /*0020*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0030*/                   HMMA.16816.F32.BF16 R12, R4, R7, R12 ;
        /*0040*/                   IADD3 R2, R2, 0x40, RZ ;
        /*0050*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R10.64] ;
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0070*/                   ISETP.GE.AND P0, PT, R2, R0, PT ;
        /*0080*/              @!P0 BRA `(.L_x_1) ;
.L_x_2:
        /*0090*/                   FADD R8, R8, R12 ;
        /*00a0*/                   STG.E [R14.64], R8 ;
        /*00b0*/               @P1 BRA `(.L_x_2) ;
        /*00c0*/                   EXIT ;
"#;

#[test]
fn the_parser_counts_the_main_loop_of_a_listing() {
    let f = sass::parse(LISTING);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].name, "toy");
    assert_eq!(f[0].instrs.len(), 13);
    let m = sass::main_loop(&f[0]).expect("two loops");
    // The loop with the products, not the later one without.
    assert_eq!(
        m,
        sass::Mix {
            instructions: 8,
            mma: 2,
            ldmatrix: 1,
            shared: 0,
            global: 1,
            sync: 1,
            float: 0,
            integer: 2,
            other: 1,
        }
    );
    assert_eq!(m.per_mma(), 4.0);
    // Hopper: 8 issue slots per HMMA.16816, A100: 16; 4 instructions per HMMA fit both.
    assert_eq!(m.issue_bound(gpu("h200").unwrap()), 1.0);
}

fn tools_or_skip() -> Option<(PathBuf, PathBuf)> {
    match (sass::ptxas(), sass::nvdisasm()) {
        (Some(p), Some(n)) => Some((p, n)),
        _ if tools::in_ci() => panic!(
            "ptxas or nvdisasm not found under CI: set KERNELS_CU_PTXAS and KERNELS_CU_NVDISASM \
             (scripts/install-cuda-tools.sh installs both)"
        ),
        _ => {
            eprintln!("SKIPPED: ptxas or nvdisasm not found (run scripts/install-cuda-tools.sh)");
            None
        }
    }
}

fn loop_mix(family: &str, kernel: &str, arch: &str) -> Option<sass::Mix> {
    loop_mix_and_setup(family, kernel, arch).map(|(m, _)| m)
}

/// [`loop_mix`] and the instructions before the loop ([`sass::setup_before_main_loop`]).
fn loop_mix_and_setup(family: &str, kernel: &str, arch: &str) -> Option<(sass::Mix, usize)> {
    let (ptxas, nvdisasm) = tools_or_skip()?;
    let fam = FAMILIES.iter().find(|f| f.name == family).expect("family");
    // sm_90a: the family's sm_90a PTX (the wgmma kernels live only there).
    let ptx = if arch == "sm_90a" {
        kernels_cu::ptx::sm90a_ptx(family).expect("an sm_90a PTX")
    } else {
        fam.ptx
    };
    let text = sass::disassemble(&ptxas, &nvdisasm, ptx, arch).unwrap_or_else(|e| panic!("{e}"));
    let funcs = sass::parse(&text);
    let f = funcs
        .iter()
        .find(|f| f.name == kernel)
        .unwrap_or_else(|| panic!("{kernel} not in the {arch} disassembly of {family}"));
    let m = sass::main_loop(f).unwrap_or_else(|| panic!("{kernel}: no loop"));
    let setup = sass::setup_before_main_loop(f).expect("a loop");
    eprintln!(
        "{kernel} {arch}: {m:?}, {:.1} instructions per product, {setup} before the loop",
        m.per_mma()
    );
    Some((m, setup))
}

/// `add_f32` (ptxas 12.4.131, sm_80): the vector part of the grid-stride loop, which ptxas
/// unrolls four times: per element group of eight, four 16-byte loads (two f32x4 of `a`, two
/// of `b`), two 16-byte stores and eight FADDs, i.e. 24 memory instructions and 32 FADDs in
/// 88 instructions, the rest index and address arithmetic and the branch.
#[test]
fn the_grid_stride_loop_of_add_f32_moves_eight_elements_per_access() {
    let Some(m) = loop_mix("elementwise", "add_f32", "sm_80") else {
        return;
    };
    assert_eq!(
        m,
        sass::Mix {
            instructions: 88,
            mma: 0,
            ldmatrix: 0,
            shared: 0,
            global: 24,
            sync: 0,
            float: 32,
            integer: 31,
            other: 1,
        }
    );
}

/// The bf16 GEMM's k-loop: BK = 32 is two k16 steps of a 64 x 32 warp tile (4 x 4 products):
/// 32 HMMA.16816 per k-tile.
#[test]
fn the_bf16_gemm_main_loop_issues_32_products_per_k_tile() {
    for arch in ["sm_80", "sm_90"] {
        let Some(m) = loop_mix("gemm", "gemm_bf16_nt_bf16", arch) else {
            return;
        };
        assert_eq!(m.mma, 32, "{arch}: {m:?}");
        assert!(m.ldmatrix > 0 && m.sync > 0, "{arch}: {m:?}");
    }
}

/// The NF4 GEMM's k-loop: BK = 64, four k16 steps of 16 products, and the decode; no more
/// instructions per product than the performance model charges on sm_90
/// (`perf::cost::NF4_{FWD,BWD}_LOOP_INSTRUCTIONS_PER_MMA`).
#[test]
fn the_nf4_gemm_main_loop_issues_64_products_per_k_tile_and_the_decode() {
    use kernels_cu::perf::cost::{
        NF4_BWD_LOOP_INSTRUCTIONS_PER_MMA, NF4_FWD_LOOP_INSTRUCTIONS_PER_MMA,
    };
    let h200 = gpu("h200").unwrap();
    for (kernel, charged) in [
        ("nf4_gemm_fwd_bf16", NF4_FWD_LOOP_INSTRUCTIONS_PER_MMA),
        ("nf4_gemm_bwd_bf16", NF4_BWD_LOOP_INSTRUCTIONS_PER_MMA),
    ] {
        for arch in ["sm_80", "sm_90"] {
            let Some(m) = loop_mix("gemm", kernel, arch) else {
                return;
            };
            assert_eq!(m.mma, 64, "{kernel} {arch}: {m:?}");
            if arch == "sm_90" {
                assert!(
                    m.per_mma() <= charged,
                    "{kernel}: {:.2} instructions per HMMA, the model charges {charged}",
                    m.per_mma()
                );
            }
            eprintln!(
                "{kernel} {arch}: issue bound {:.2} of the H200 tensor peak",
                m.issue_bound(h200)
            );
        }
    }
}

/// The 4-bit decode GEMV's k-loop (one 64-column super-tile: 4 patches of 16 x 16): one HMMA per
/// patch and column tile of 8 X rows (1 tile for the `_m8_` entry points, 4 for the others),
/// and no more instructions on sm_90 than the performance model charges
/// (`perf::cost::GEMV_NF4_LOOP_BASE` + `GEMV_NF4_LOOP_PER_TILE` per tile), before the loop no
/// more than `GEMV_NF4_BLOCK_SETUP`.
#[test]
fn the_decode_gemv_loop_issues_what_the_model_charges() {
    use kernels_cu::perf::cost::{
        GEMV_NF4_BLOCK_SETUP, GEMV_NF4_LOOP_BASE, GEMV_NF4_LOOP_PER_TILE,
    };
    for (kernel, tiles) in [
        ("decode_gemv_nf4_m8_bf16", 1usize),
        ("decode_gemv_nf4_m8_residual_bf16", 1),
        ("decode_gemv_nf4_bf16", 4),
        ("decode_gemv_nf4_residual_bf16", 4),
    ] {
        let Some((m, setup)) = loop_mix_and_setup("decode", kernel, "sm_90") else {
            return;
        };
        assert_eq!(m.mma, 4 * tiles, "{kernel}: {m:?}");
        let charged = GEMV_NF4_LOOP_BASE + GEMV_NF4_LOOP_PER_TILE * tiles as f64;
        assert!(
            m.instructions as f64 <= charged,
            "{kernel}: {} instructions per super-tile, the model charges {charged}",
            m.instructions
        );
        assert!(
            setup as f64 <= GEMV_NF4_BLOCK_SETUP,
            "{kernel}: {setup} instructions before the loop, the model charges {GEMV_NF4_BLOCK_SETUP}"
        );
    }
}

/// The wgmma NF4 GEMM's k-loop on sm_90a: four `HGMMA.64x128x16` per warp and k-tile (each is
/// 16 `HMMA.16816` of work per warp: 64 x 128 x 16 over the warpgroup's 4 warps), the decode of
/// 32 codes per lane, no `LDSM`; no more instructions per HMMA-equivalent than the model charges
/// (`perf::cost::NF4_WGMMA_{FWD,BWD}_LOOP_INSTRUCTIONS_PER_MMA`).
#[test]
fn the_wgmma_nf4_gemm_loop_issues_four_hgmma_per_k_tile_and_no_ldmatrix() {
    use kernels_cu::perf::cost::{
        NF4_WGMMA_BWD_LOOP_INSTRUCTIONS_PER_MMA, NF4_WGMMA_FWD_LOOP_INSTRUCTIONS_PER_MMA,
        WGMMA_HMMA_PER_WARP,
    };
    for (kernel, charged) in [
        (
            "nf4_gemm_fwd_wgmma_bf16",
            NF4_WGMMA_FWD_LOOP_INSTRUCTIONS_PER_MMA,
        ),
        (
            "nf4_gemm_bwd_wgmma_bf16",
            NF4_WGMMA_BWD_LOOP_INSTRUCTIONS_PER_MMA,
        ),
    ] {
        let Some(m) = loop_mix("gemm", kernel, "sm_90a") else {
            return;
        };
        assert_eq!(m.mma, 4, "{kernel}: {m:?}");
        assert_eq!(m.ldmatrix, 0, "{kernel}: {m:?}");
        let per = m.instructions as f64 / (m.mma as f64 * WGMMA_HMMA_PER_WARP);
        eprintln!("{kernel} sm_90a: {per:.2} instructions per HMMA-equivalent");
        assert!(
            per <= charged,
            "{kernel}: {per:.2} instructions per HMMA-equivalent, the model charges {charged}"
        );
    }
}
