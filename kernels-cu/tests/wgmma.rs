//! The emulator's warpgroup MMA (wgmma.mma_async.m64nNk16.f32.bf16.bf16, A in registers, B
//! through a shared-memory matrix descriptor) against a float64 reference, for every swizzle
//! mode, descriptor offsets, several N, chained k-steps and both scale-d settings; and the
//! checker's reports for the asynchronous rules (writes to an operand in flight, a missing
//! proxy fence, accumulators written in flight, a missing barrier after the wait, a missing
//! wgmma.fence, a missing barrier before the wgmma).
//!
//! What this proves and what it does not: the shared-memory images below are laid out by this
//! file's own reading of the PTX ISA ("Matrix Descriptor Format", "Shared Memory Matrix Layout",
//! the m64nNk16 register fragments), written as rows and 16-byte chunks, independently of the
//! emulator's address formula. Agreement shows that the two readings match; only a GPU can show
//! that they match the hardware. The checker is off in the AddressSanitizer build, so these
//! tests do not run there.
#![cfg(not(feature = "asan"))]

mod common;

use common::Rng;
use half::bf16;
use kernels_cu::{Arg, Device, Dim3, EmulatorOptions, Error, ExecOrder, Family, Kernel, Launch};

static SEEDED: Family = Family {
    name: "seeded_bugs",
    file: "emu/seeded_bugs.cu",
    source: include_str!("../emu/seeded_bugs.cu"),
    ptx: "",
};

const WGMMA: Kernel = Kernel {
    name: "seeded_wgmma",
    family: &SEEDED,
    hot: false,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Swizzle {
    None,
    B128,
    B64,
    B32,
}

impl Swizzle {
    /// The descriptor's mode field (bits 63:62).
    fn mode(self) -> i32 {
        match self {
            Swizzle::None => 0,
            Swizzle::B128 => 1,
            Swizzle::B64 => 2,
            Swizzle::B32 => 3,
        }
    }
    fn row_bytes(self) -> usize {
        match self {
            Swizzle::None => 16,
            Swizzle::B128 => 128,
            Swizzle::B64 => 64,
            Swizzle::B32 => 32,
        }
    }
}

/// One wgmma test case: the B operand's layout in the shared-memory tile and the shape.
#[derive(Clone, Copy, Debug)]
struct Case {
    swizzle: Swizzle,
    n: usize,
    ksteps: usize,
    warpgroups: usize,
    /// Byte offset of k-step 0's descriptor start in the (1024-byte aligned) tile.
    desc_off: usize,
    lbo: usize,
    sbo: usize,
    /// Bytes the descriptor start advances per k-step.
    kstep_bytes: usize,
}

impl Case {
    /// Byte offset in the tile of B[k][n] (k over all k-steps).
    ///
    /// Without swizzle: core matrices of 8 rows (n) x 16 bytes (8 k), rows 16 bytes apart;
    /// core matrix (n/8, k/8) at SBO·(n/8) + LBO·(k/8). With a swizzle of W bytes: row n of an
    /// 8-row group at W·(n%8), groups SBO apart; 16-byte chunk c of a row is stored at chunk
    /// c ^ phase(row), phase = (row·W/128) mod (W/16) (row r of the pattern of 8 rows).
    fn offset(&self, k: usize, n: usize) -> usize {
        let (s, kk) = (k / 16, k % 16);
        let start = self.desc_off + s * self.kstep_bytes;
        match self.swizzle {
            Swizzle::None => {
                start + (n / 8) * self.sbo + (kk / 8) * self.lbo + 16 * (n % 8) + 2 * (kk % 8)
            }
            sw => {
                let w = sw.row_bytes();
                // The start sits at a row boundary of its pattern plus a byte offset inside the row.
                let pattern = 8 * w;
                let row_start = start / w * w;
                let in_row = start - row_start + 2 * kk;
                assert!(in_row + 2 <= w, "k-step crosses a swizzled row: {self:?}");
                let row_addr = row_start + (n / 8) * self.sbo + (n % 8) * w;
                let r = (row_addr % pattern) / w;
                let phase = (r * w / 128) % (w / 16);
                let chunk = in_row / 16;
                row_addr + 16 * (chunk ^ phase) + in_row % 16
            }
        }
    }

    fn image_bytes(&self) -> usize {
        let mut end = 0;
        for k in 0..16 * self.ksteps {
            for n in 0..self.n {
                end = end.max(self.offset(k, n) + 2);
            }
        }
        end.div_ceil(16) * 16
    }
}

struct Inputs {
    a: Vec<bf16>,
    b: Vec<bf16>, // (16·ksteps) x n, row-major by k
    c: Vec<f32>,
    img: Vec<u8>,
}

fn inputs(case: &Case, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let m = 64 * case.warpgroups;
    let kdim = 16 * case.ksteps;
    let a: Vec<bf16> = (0..m * kdim)
        .map(|_| bf16::from_f32(rng.uniform(-2.0, 2.0)))
        .collect();
    let b: Vec<bf16> = (0..kdim * case.n)
        .map(|_| bf16::from_f32(rng.uniform(-2.0, 2.0)))
        .collect();
    let c = rng.vec_f32(m * case.n, -4.0, 4.0);
    // Bytes the layout does not use hold large values, so that a wrong address shows.
    let bytes = case.image_bytes();
    let mut img = vec![0u8; bytes];
    for pair in img.chunks_mut(2) {
        pair.copy_from_slice(
            &bf16::from_f32(rng.uniform(100.0, 200.0))
                .to_bits()
                .to_le_bytes(),
        );
    }
    let mut used = vec![false; bytes];
    for k in 0..kdim {
        for n in 0..case.n {
            let o = case.offset(k, n);
            assert!(!used[o], "layout maps two elements to byte {o}: {case:?}");
            used[o] = true;
            img[o..o + 2].copy_from_slice(&b[k * case.n + n].to_bits().to_le_bytes());
        }
    }
    Inputs { a, b, c, img }
}

fn device(order: ExecOrder) -> Device {
    Device::emulator_with(EmulatorOptions {
        checks: Some(true),
        order: Some(order),
        ..EmulatorOptions::default()
    })
    .unwrap()
}

/// Runs the probe kernel; returns the output (poisoned with NaN before the launch).
fn run(dev: &Device, case: &Case, x: &Inputs, scale_d: bool, bug: i32) -> Result<Vec<f32>, Error> {
    let m = 64 * case.warpgroups;
    let ab = dev.htod(&x.a)?;
    let cb = dev.htod(&x.c)?;
    let ib = dev.htod(&x.img)?;
    let mut out = dev.htod(&vec![f32::NAN; m * case.n])?;
    let img_bytes = x.img.len();
    let args = [
        out.arg_mut(),
        ab.arg(),
        ib.arg(),
        cb.arg(),
        Arg::I32(case.n as i32),
        Arg::I32(img_bytes as i32),
        Arg::I32(case.desc_off as i32),
        Arg::I32(case.lbo as i32),
        Arg::I32(case.sbo as i32),
        Arg::I32(case.swizzle.mode()),
        Arg::I32(case.ksteps as i32),
        Arg::I32(case.kstep_bytes as i32),
        Arg::I32(scale_d as i32),
        Arg::I32(bug),
    ];
    // SAFETY: the kernel reads a (m x 16·ksteps), img (img_bytes) and c (m x n), writes out
    // (m x n) and uses img_bytes + 1024 bytes of dynamic shared memory; the buffers have
    // exactly those sizes.
    unsafe {
        dev.launch(&Launch {
            kernel: WGMMA,
            grid: Dim3::x(1),
            block: Dim3::x(128 * case.warpgroups as u32),
            shared_bytes: (img_bytes + 1024) as u32,
            args: &args,
        })?;
    }
    dev.dtoh::<f32>(&out)
}

fn check(case: Case, seed: u64) {
    let x = inputs(&case, seed);
    let m = 64 * case.warpgroups;
    let kdim = 16 * case.ksteps;
    let dev = device(ExecOrder::All(seed));
    for scale_d in [false, true] {
        let got = run(&dev, &case, &x, scale_d, 0).unwrap_or_else(|e| panic!("{case:?}: {e}"));
        for i in 0..m {
            for j in 0..case.n {
                let mut want = if scale_d {
                    x.c[i * case.n + j] as f64
                } else {
                    0.0
                };
                let mut mag = want.abs();
                for k in 0..kdim {
                    let p = x.a[i * kdim + k].to_f64() * x.b[k * case.n + j].to_f64();
                    want += p;
                    mag += p.abs();
                }
                let g = got[i * case.n + j] as f64;
                // One f32 rounding per k-step: a wrong element is off by O(1), not O(1e-6).
                assert!(
                    (g - want).abs() <= 1e-6 * mag + 1e-30,
                    "{case:?} scale_d {scale_d}: D[{i}][{j}] = {g}, want {want}"
                );
            }
        }
    }
}

#[test]
fn no_swizzle_with_k_groups_adjacent() {
    check(
        Case {
            swizzle: Swizzle::None,
            n: 64,
            ksteps: 2,
            warpgroups: 1,
            desc_off: 0,
            lbo: 128,
            sbo: 512,
            kstep_bytes: 256,
        },
        11,
    );
}

#[test]
fn no_swizzle_with_n_groups_adjacent_and_an_offset_start() {
    check(
        Case {
            swizzle: Swizzle::None,
            n: 128,
            ksteps: 1,
            warpgroups: 1,
            desc_off: 48,
            lbo: 16 * 128,
            sbo: 128,
            kstep_bytes: 0,
        },
        12,
    );
}

#[test]
fn swizzle_32b_one_tile_per_k_step() {
    check(
        Case {
            swizzle: Swizzle::B32,
            n: 8,
            ksteps: 2,
            warpgroups: 1,
            desc_off: 256,
            lbo: 0,
            sbo: 256,
            kstep_bytes: 256,
        },
        13,
    );
}

#[test]
fn swizzle_64b_k_steps_inside_the_row_and_padded_row_groups() {
    check(
        Case {
            swizzle: Swizzle::B64,
            n: 64,
            ksteps: 2,
            warpgroups: 1,
            desc_off: 512,
            lbo: 0,
            sbo: 1024,
            kstep_bytes: 32,
        },
        14,
    );
}

#[test]
fn swizzle_128b_two_warpgroups_four_k_steps() {
    check(
        Case {
            swizzle: Swizzle::B128,
            n: 128,
            ksteps: 4,
            warpgroups: 2,
            desc_off: 0,
            lbo: 0,
            sbo: 1024,
            kstep_bytes: 32,
        },
        15,
    );
}

#[test]
fn swizzle_128b_n256_offset_by_one_pattern() {
    check(
        Case {
            swizzle: Swizzle::B128,
            n: 256,
            ksteps: 1,
            warpgroups: 1,
            desc_off: 1024,
            lbo: 0,
            sbo: 1024,
            kstep_bytes: 0,
        },
        16,
    );
}

// ---- the checker's reports -----------------------------------------------------------------

const BUG_CASE: Case = Case {
    swizzle: Swizzle::B128,
    n: 64,
    ksteps: 2,
    warpgroups: 2,
    desc_off: 0,
    lbo: 0,
    sbo: 1024,
    kstep_bytes: 32,
};

fn report(bug: i32, order: ExecOrder) -> String {
    let x = inputs(&BUG_CASE, 20 + bug as u64);
    match run(&device(order), &BUG_CASE, &x, true, bug) {
        Err(Error::Emulator { msg, .. }) => msg,
        other => panic!("bug {bug}: expected a report from the emulator, got {other:?}"),
    }
}

#[test]
fn the_correct_probe_runs_clean_where_the_seeded_bugs_are_reported() {
    let x = inputs(&BUG_CASE, 20);
    let got = run(&device(ExecOrder::All(3)), &BUG_CASE, &x, true, 0).unwrap();
    assert!(got.iter().all(|v| v.is_finite()));
}

#[test]
fn a_write_to_the_operand_of_an_in_flight_wgmma_is_reported() {
    for order in [ExecOrder::Ascending, ExecOrder::Descending] {
        let msg = report(1, order);
        assert!(msg.contains("no wgmma.wait_group has retired yet"), "{msg}");
        assert!(msg.contains("dynamic shared memory"), "{msg}");
    }
}

#[test]
fn a_missing_proxy_fence_is_reported() {
    let msg = report(2, ExecOrder::Ascending);
    assert!(msg.contains("fence.proxy.async.shared::cta"), "{msg}");
    assert!(msg.contains("generic proxy"), "{msg}");
}

#[test]
fn an_accumulator_written_while_in_flight_is_reported() {
    let msg = report(3, ExecOrder::Ascending);
    assert!(msg.contains("wrote accumulator register 0"), "{msg}");
}

#[test]
fn another_warpgroup_writing_the_operand_after_the_wait_without_a_barrier_is_reported() {
    for order in [
        ExecOrder::Ascending,
        ExecOrder::Descending,
        ExecOrder::Random(5),
    ] {
        let msg = report(4, order);
        assert!(msg.contains("warpgroup 0"), "{msg}");
        assert!(
            msg.contains("need a __syncthreads after that wait") || msg.contains("has retired yet"),
            "{msg}"
        );
    }
}

#[test]
fn a_missing_wgmma_fence_is_reported() {
    let msg = report(5, ExecOrder::Ascending);
    assert!(msg.contains("without a wgmma.fence"), "{msg}");
}

#[test]
fn a_missing_barrier_between_the_copy_and_the_wgmma_is_a_race() {
    let msg = report(6, ExecOrder::Ascending);
    assert!(msg.contains("data race") && msg.contains("reads"), "{msg}");
}

#[test]
fn a_warpgroup_short_of_128_threads_is_reported() {
    let x = inputs(&BUG_CASE, 30);
    let dev = device(ExecOrder::Ascending);
    let ab = dev.htod(&x.a).unwrap();
    let cb = dev.htod(&x.c).unwrap();
    let ib = dev.htod(&x.img).unwrap();
    let mut out = dev.htod(&vec![f32::NAN; 128 * BUG_CASE.n]).unwrap();
    let args = [
        out.arg_mut(),
        ab.arg(),
        ib.arg(),
        cb.arg(),
        Arg::I32(BUG_CASE.n as i32),
        Arg::I32(x.img.len() as i32),
        Arg::I32(0),
        Arg::I32(0),
        Arg::I32(1024),
        Arg::I32(Swizzle::B128.mode()),
        Arg::I32(2),
        Arg::I32(32),
        Arg::I32(1),
        Arg::I32(0),
    ];
    // SAFETY: 96 threads read and write within the buffers sized for two warpgroups.
    let r = unsafe {
        dev.launch(&Launch {
            kernel: WGMMA,
            grid: Dim3::x(1),
            block: Dim3::x(96),
            shared_bytes: (x.img.len() + 1024) as u32,
            args: &args,
        })
    };
    let msg = common::emulator_error(r);
    assert!(msg.contains("all 128 threads of a warpgroup"), "{msg}");
}
