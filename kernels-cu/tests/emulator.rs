//! Self-tests of the execution model and the PTX wrappers (cuda/selftest.cu). Semantic tests
//! run on the emulator and, when one opens, on CUDA device 0; misuse tests on the emulator only.
//! Expected values come from the PTX ISA / CUDA Programming Guide tables, written here
//! independently of the emulator's C++.

mod common;

use common::{devices, emulator, emulator_error, Rng};
use half::bf16;
use kernels_cu::{kernels::*, Arg, DType, Device, Dim3, Launch};

const POISON: u32 = 0xdead_beef;

fn poisoned_u32(dev: &Device, n: usize) -> kernels_cu::Buffer {
    dev.htod(&vec![POISON; n]).unwrap()
}

fn poisoned_f32(dev: &Device, n: usize) -> kernels_cu::Buffer {
    dev.htod(&vec![f32::NAN; n]).unwrap()
}

/// The source lane (or None: own value) of a shuffle, from the CUDA Programming Guide table.
fn shfl_expected(mode: i32, lane: i32, b: i32, width: i32) -> Option<i32> {
    let seg = lane - lane % width;
    match mode {
        0 => Some(seg + ((b as u32 & 31) as i32 & (width - 1))),
        1 => {
            let d = b & 31;
            (lane % width >= d).then_some(lane - d)
        }
        2 => {
            let d = b & 31;
            (lane % width + d < width).then_some(lane + d)
        }
        _ => {
            let j = lane ^ (b & 31);
            (j < seg + width).then_some(j)
        }
    }
}

#[test]
fn shuffles_follow_the_documented_semantics() {
    let mut rng = Rng::new(1);
    for dev in devices() {
        let threads = 64usize;
        let blocks = 2usize;
        let n = threads * blocks;
        for width in [1, 2, 4, 8, 16, 32] {
            let mut cases: Vec<(i32, i32, i32)> = Vec::new(); // (mode, b, lane_step)
            for (b, step) in [
                (0, 0),
                (5, 0),
                (31, 0),
                (33, 0),
                (-1, 0),
                (0, 1),
                (3, 7),
                (-5, 3),
            ] {
                cases.push((0, b, step));
            }
            for d in [0, 1, 2, 3, 5, 8, 16, 31, 32, 33] {
                cases.push((1, d, 0));
                cases.push((2, d, 0));
            }
            for x in [0, 1, 2, 5, 16, 31, 32, 33] {
                cases.push((3, x, 0));
            }
            for (mode, b, step) in cases {
                let input: Vec<u32> = (0..n).map(|_| rng.next_u32()).collect();
                let inp = dev.htod(&input).unwrap();
                let mut out = poisoned_u32(&dev, n);
                // SAFETY: in/out hold blocks*threads u32; the kernel touches one element per thread.
                unsafe {
                    dev.launch(&Launch {
                        kernel: SELFTEST_SHFL,
                        grid: Dim3::x(blocks as u32),
                        block: Dim3::x(threads as u32),
                        shared_bytes: 0,
                        args: &[
                            out.arg_mut(),
                            inp.arg(),
                            Arg::I32(mode),
                            Arg::I32(b),
                            Arg::I32(step),
                            Arg::I32(width),
                        ],
                    })
                    .unwrap();
                }
                let got = dev.dtoh::<u32>(&out).unwrap();
                for t in 0..n {
                    let lane = (t % 32) as i32;
                    let warp_base = t - t % 32;
                    let arg = b + step * lane;
                    let want = match shfl_expected(mode, lane, arg, width) {
                        Some(j) => input[warp_base + j as usize],
                        None => input[t],
                    };
                    assert_eq!(
                        got[t],
                        want,
                        "{:?}: mode {mode} b {arg} width {width} thread {t}",
                        dev.info().kind
                    );
                }
            }
        }
    }
}

#[test]
fn shuffles_move_64_bit_values() {
    let mut rng = Rng::new(2);
    for dev in devices() {
        let input: Vec<f64> = (0..96)
            .map(|_| rng.uniform(-1e3, 1e3) as f64 * 1.000_000_000_1)
            .collect();
        let inp = dev.htod(&input).unwrap();
        let mut out = dev.htod(&vec![f64::NAN; 96]).unwrap();
        for mask in [1, 6, 17] {
            // SAFETY: 96 doubles in and out, one per thread.
            unsafe {
                dev.launch(&Launch {
                    kernel: SELFTEST_SHFL_F64,
                    grid: Dim3::x(1),
                    block: Dim3::x(96),
                    shared_bytes: 0,
                    args: &[out.arg_mut(), inp.arg(), Arg::I32(mask)],
                })
                .unwrap();
            }
            let got = dev.dtoh::<f64>(&out).unwrap();
            for t in 0..96 {
                assert_eq!(
                    got[t].to_bits(),
                    input[t ^ mask as usize].to_bits(),
                    "thread {t} mask {mask}"
                );
            }
        }
    }
}

#[test]
fn votes_report_ballot_any_all() {
    let mut rng = Rng::new(3);
    for dev in devices() {
        let n = 256;
        // Per warp: all true, all false, one lane, random.
        let pred: Vec<i32> = (0..n)
            .map(|t| match (t / 32) % 4 {
                0 => 1 + rng.below(5) as i32,
                1 => 0,
                2 => i32::from(t % 32 == 7) * -3,
                _ => rng.below(2) as i32,
            })
            .collect();
        let p = dev.htod(&pred).unwrap();
        let mut ballot = poisoned_u32(&dev, n);
        let mut any = dev.htod(&vec![-1i32; n]).unwrap();
        let mut all = dev.htod(&vec![-1i32; n]).unwrap();
        // SAFETY: four arrays of n elements, one element per thread.
        unsafe {
            dev.launch(&Launch {
                kernel: SELFTEST_VOTE,
                grid: Dim3::x(2),
                block: Dim3::x(128),
                shared_bytes: 0,
                args: &[ballot.arg_mut(), any.arg_mut(), all.arg_mut(), p.arg()],
            })
            .unwrap();
        }
        let (b, an, al) = (
            dev.dtoh::<u32>(&ballot).unwrap(),
            dev.dtoh::<i32>(&any).unwrap(),
            dev.dtoh::<i32>(&all).unwrap(),
        );
        for t in 0..n {
            let w = t - t % 32;
            let want: u32 = (0..32)
                .filter(|&l| pred[w + l] != 0)
                .map(|l| 1u32 << l)
                .sum();
            assert_eq!(b[t], want, "ballot, thread {t}");
            assert_eq!(an[t], i32::from(want != 0), "any, thread {t}");
            assert_eq!(al[t], i32::from(want == u32::MAX), "all, thread {t}");
        }
    }
}

#[test]
fn ldmatrix_layouts_match_the_ptx_tables() {
    for dev in devices() {
        let blocks = 3usize;
        for num in [1usize, 2, 4] {
            for trans in [false, true] {
                let mut out = poisoned_u32(&dev, blocks * 32 * 4);
                // SAFETY: out holds blocks*32*4 u32; the kernel writes num per lane.
                unsafe {
                    dev.launch(&Launch {
                        kernel: SELFTEST_LDMATRIX,
                        grid: Dim3::x(blocks as u32),
                        block: Dim3::x(32),
                        shared_bytes: 0,
                        args: &[out.arg_mut(), Arg::I32(num as i32), Arg::I32(trans as i32)],
                    })
                    .unwrap();
                }
                let got = dev.dtoh::<u32>(&out).unwrap();
                // Element (j, r, c) of the loaded matrices, as the kernel stored it.
                let m = |blk: usize, j: usize, r: usize, c: usize| {
                    ((j * 64 + r * 8 + c + 1 + 256 * blk) & 0xffff) as u32
                };
                for blk in 0..blocks {
                    for lane in 0..32 {
                        let (g, t) = (lane / 4, lane % 4);
                        for j in 0..4 {
                            let v = got[(blk * 32 + lane) * 4 + j];
                            if j >= num {
                                assert_eq!(v, POISON, "register {j} beyond x{num} was written");
                                continue;
                            }
                            // PTX ISA ldmatrix: lo/hi = M[g][2t], M[g][2t+1]; .trans: M[2t][g], M[2t+1][g].
                            let (lo, hi) = if trans {
                                (m(blk, j, 2 * t, g), m(blk, j, 2 * t + 1, g))
                            } else {
                                (m(blk, j, g, 2 * t), m(blk, j, g, 2 * t + 1))
                            };
                            assert_eq!(
                                v,
                                lo | (hi << 16),
                                "x{num} trans={trans} block {blk} lane {lane} reg {j}"
                            );
                        }
                    }
                }
            }
        }
    }
}

// The PTX ISA fragment maps of mma.m16n8k16 (docs/ptx-fragments.md, section 11).
fn a16816(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (g + 8 * ((i >> 1) & 1), 2 * t + (i & 1) + 8 * (i >> 2))
}
fn b16816(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (2 * t + (i & 1) + 8 * (i >> 1), g)
}
fn c16816(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (g + 8 * (i >> 1), 2 * t + (i & 1))
}

fn bf16_bits(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}

#[test]
fn mma_fragment_layout_matches_the_ptx_tables() {
    let mut rng = Rng::new(4);
    for dev in devices() {
        let warps = 8usize;
        let lanes = warps * 32;
        let a_bits: Vec<u16> = (0..lanes * 8)
            .map(|_| bf16_bits(rng.uniform(-2.0, 2.0)))
            .collect();
        let b_bits: Vec<u16> = (0..lanes * 4)
            .map(|_| bf16_bits(rng.uniform(-2.0, 2.0)))
            .collect();
        let c: Vec<f32> = rng.vec_f32(lanes * 4, -4.0, 4.0);
        let pack = |bits: &[u16]| -> Vec<u32> {
            bits.chunks(2)
                .map(|p| p[0] as u32 | (p[1] as u32) << 16)
                .collect()
        };
        let (a_frag, b_frag) = (pack(&a_bits), pack(&b_bits));
        let a = dev.htod(&a_frag).unwrap();
        let b = dev.htod(&b_frag).unwrap();
        let cb = dev.htod(&c).unwrap();
        let mut d = poisoned_f32(&dev, lanes * 4);
        // SAFETY: per lane 4 a-words, 2 b-words, 4 c and 4 d values; 256 threads.
        unsafe {
            dev.launch(&Launch {
                kernel: SELFTEST_MMA_FRAGMENTS,
                grid: Dim3::x(2),
                block: Dim3::x(128),
                shared_bytes: 0,
                args: &[d.arg_mut(), a.arg(), b.arg(), cb.arg()],
            })
            .unwrap();
        }
        let got = dev.dtoh::<f32>(&d).unwrap();
        for w in 0..warps {
            let mut am = [[0f64; 16]; 16];
            let mut bm = [[0f64; 8]; 16];
            let mut cm = [[0f64; 8]; 16];
            for lane in 0..32 {
                let base = w * 32 + lane;
                for i in 0..8 {
                    let (m, k) = a16816(lane, i);
                    am[m][k] = bf16::from_bits(a_bits[base * 8 + i]).to_f64();
                }
                for i in 0..4 {
                    let (k, n) = b16816(lane, i);
                    bm[k][n] = bf16::from_bits(b_bits[base * 4 + i]).to_f64();
                }
                for i in 0..4 {
                    let (m, n) = c16816(lane, i);
                    cm[m][n] = c[base * 4 + i] as f64;
                }
            }
            for lane in 0..32 {
                for i in 0..4 {
                    let (m, n) = c16816(lane, i);
                    let want: f64 = cm[m][n] + (0..16).map(|k| am[m][k] * bm[k][n]).sum::<f64>();
                    let scale: f64 =
                        cm[m][n].abs() + (0..16).map(|k| (am[m][k] * bm[k][n]).abs()).sum::<f64>();
                    let g = got[(w * 32 + lane) * 4 + i] as f64;
                    assert!(
                        (g - want).abs() <= 1e-6 * scale + 1e-6,
                        "warp {w} lane {lane} d{i} (D[{m}][{n}]): got {g}, want {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn mma_tile_product_via_cp_async_and_ldmatrix_matches_f64() {
    let mut rng = Rng::new(5);
    for dev in devices() {
        let tiles = 24usize;
        let a: Vec<bf16> = (0..tiles * 256)
            .map(|_| bf16::from_f32(rng.uniform(-1.0, 1.0)))
            .collect();
        let b: Vec<bf16> = (0..tiles * 128)
            .map(|_| bf16::from_f32(rng.uniform(-1.0, 1.0)))
            .collect();
        let c = rng.vec_f32(tiles * 128, -1.0, 1.0);
        let (ab, bb, cb) = (
            dev.htod(&a).unwrap(),
            dev.htod(&b).unwrap(),
            dev.htod(&c).unwrap(),
        );
        let mut d = poisoned_f32(&dev, tiles * 128);
        // SAFETY: per tile 256 A, 128 B, 128 C and 128 D elements; one warp per tile.
        unsafe {
            dev.launch(&Launch {
                kernel: SELFTEST_MMA_TILE,
                grid: Dim3::x(tiles as u32),
                block: Dim3::x(32),
                shared_bytes: 0,
                args: &[d.arg_mut(), ab.arg(), bb.arg(), cb.arg()],
            })
            .unwrap();
        }
        let got = dev.dtoh::<f32>(&d).unwrap();
        for tile in 0..tiles {
            for m in 0..16 {
                for n in 0..8 {
                    let mut want = c[tile * 128 + m * 8 + n] as f64;
                    let mut scale = want.abs();
                    for k in 0..16 {
                        let p = a[tile * 256 + m * 16 + k].to_f64()
                            * b[tile * 128 + k * 8 + n].to_f64();
                        want += p;
                        scale += p.abs();
                    }
                    let g = got[tile * 128 + m * 8 + n] as f64;
                    assert!(
                        (g - want).abs() <= 1e-6 * scale + 1e-6,
                        "tile {tile} D[{m}][{n}]: got {g}, want {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn cp_async_groups_copy_and_zero_fill() {
    let mut rng = Rng::new(6);
    for dev in devices() {
        let n = 64usize;
        for src_bytes in [16i32, 8, 4, 0] {
            let input = rng.vec_f32(2 * n * 4, 1.0, 2.0);
            let inp = dev.htod(&input).unwrap();
            let mut out = poisoned_f32(&dev, 2 * n * 4);
            // SAFETY: in/out hold 2*n*4 floats; dynamic shared memory holds as many.
            unsafe {
                dev.launch(&Launch {
                    kernel: SELFTEST_CP_ASYNC,
                    grid: Dim3::x(1),
                    block: Dim3::x(n as u32),
                    shared_bytes: (2 * n * 4 * 4) as u32,
                    args: &[out.arg_mut(), inp.arg(), Arg::I32(src_bytes)],
                })
                .unwrap();
            }
            let got = dev.dtoh::<f32>(&out).unwrap();
            for half in 0..2 {
                for t in 0..n {
                    let u = (t + 1) % n;
                    for e in 0..4 {
                        let want = if (e as i32) * 4 < src_bytes {
                            input[4 * (half * n + u) + e]
                        } else {
                            0.0
                        };
                        let g = got[4 * (half * n + t) + e];
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "src_bytes {src_bytes} half {half} thread {t} elem {e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn divergent_syncthreads_is_an_error_not_a_crash() {
    let dev = emulator();
    let mut out = dev.alloc(DType::F32, 64).unwrap();
    // SAFETY: out holds 64 floats, indexed by threadIdx.x < 64.
    let r = unsafe {
        dev.launch(&Launch {
            kernel: SELFTEST_DIVERGENT_BARRIER,
            grid: Dim3::x(3),
            block: Dim3::x(64),
            shared_bytes: 0,
            args: &[out.arg_mut()],
        })
    };
    let msg = emulator_error(r);
    assert!(msg.contains("divergent __syncthreads"), "{msg}");
    assert!(msg.contains("32 threads have exited"), "{msg}");
    // The emulator stays usable after an aborted launch.
    let x = dev.htod(&[1.0f32, 2.0, 3.0]).unwrap();
    let s = kernels_cu::ops::reduce::sum(&dev, &x).unwrap();
    assert_eq!(dev.dtoh::<f32>(&s).unwrap(), vec![6.0]);
}

#[test]
fn mismatched_warp_collectives_are_an_error() {
    let dev = emulator();
    let mut out = dev.alloc(DType::F32, 32).unwrap();
    // SAFETY: out holds 32 floats, indexed by threadIdx.x < 32.
    let r = unsafe {
        dev.launch(&Launch {
            kernel: SELFTEST_MISMATCHED_WARP,
            grid: Dim3::x(1),
            block: Dim3::x(32),
            shared_bytes: 0,
            args: &[out.arg_mut()],
        })
    };
    let msg = emulator_error(r);
    assert!(msg.contains("mismatched warp collectives"), "{msg}");
}

#[test]
fn a_warp_with_missing_lanes_cannot_run_mma() {
    // 48 threads: the second warp has 16 lanes, so mma.sync there is invalid.
    let dev = emulator();
    let a = dev.htod(&vec![0u32; 48 * 4]).unwrap();
    let b = dev.htod(&vec![0u32; 48 * 2]).unwrap();
    let c = dev.htod(&vec![0f32; 48 * 4]).unwrap();
    let mut d = dev.alloc(DType::F32, 48 * 4).unwrap();
    // SAFETY: arrays sized for 48 threads.
    let r = unsafe {
        dev.launch(&Launch {
            kernel: SELFTEST_MMA_FRAGMENTS,
            grid: Dim3::x(1),
            block: Dim3::x(48),
            shared_bytes: 0,
            args: &[d.arg_mut(), a.arg(), b.arg(), c.arg()],
        })
    };
    let msg = emulator_error(r);
    assert!(
        msg.contains("mma.sync in a warp with only 16 threads"),
        "{msg}"
    );
}

#[test]
fn conversions_round_to_nearest_even_and_pack_low_first() {
    let mut rng = Rng::new(7);
    for dev in devices() {
        // Random magnitudes over the f16 range and beyond, plus the edge cases.
        let mut x: Vec<f32> = (0..4000)
            .map(|_| {
                let e = rng.uniform(-30.0, 20.0);
                let s = if rng.below(2) == 0 { 1.0 } else { -1.0 };
                s * 2f32.powf(e) * rng.uniform(1.0, 2.0)
            })
            .collect();
        x.extend([
            0.0,
            -0.0,
            65504.0,
            65519.99,
            65520.0,
            1e6,
            -1e6,
            6.0e-8,
            2.98e-8,
            2.99e-8,
            6.1e-5,
            6.09e-5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
        ]);
        if x.len() % 2 == 1 {
            x.push(0.5);
        }
        let n = x.len();
        let xb = dev.htod(&x).unwrap();
        let mut h = dev.htod(&vec![half::f16::NAN; n]).unwrap();
        let mut back = dev.htod(&vec![f32::NAN; n]).unwrap();
        let mut b = dev.htod(&vec![bf16::NAN; n]).unwrap();
        let mut packed = poisoned_u32(&dev, n / 2);
        // SAFETY: all arrays hold n (packed n/2) elements; n is even.
        unsafe {
            dev.launch(&Launch {
                kernel: SELFTEST_CONVERT,
                grid: Dim3::x(4),
                block: Dim3::x(128),
                shared_bytes: 0,
                args: &[
                    h.arg_mut(),
                    back.arg_mut(),
                    b.arg_mut(),
                    packed.arg_mut(),
                    xb.arg(),
                    Arg::I32(n as i32),
                ],
            })
            .unwrap();
        }
        let (hg, backg, bg, pg) = (
            dev.dtoh::<half::f16>(&h).unwrap(),
            dev.dtoh::<f32>(&back).unwrap(),
            dev.dtoh::<bf16>(&b).unwrap(),
            dev.dtoh::<u32>(&packed).unwrap(),
        );
        for i in 0..n {
            let wh = half::f16::from_f32(x[i]);
            assert_eq!(hg[i].to_bits(), wh.to_bits(), "to_f16({:e})", x[i]);
            assert_eq!(
                backg[i].to_bits(),
                wh.to_f32().to_bits(),
                "to_f32(f16 of {:e})",
                x[i]
            );
            let wb = bf16::from_f32(x[i]);
            assert_eq!(bg[i].to_bits(), wb.to_bits(), "to_bf16({:e})", x[i]);
            if i % 2 == 0 {
                let want = wb.to_bits() as u32 | (bf16::from_f32(x[i + 1]).to_bits() as u32) << 16;
                assert_eq!(pg[i / 2], want, "pack_bf16x2({:e}, {:e})", x[i], x[i + 1]);
            }
        }
    }
}

#[test]
fn emulated_cp_async_lands_only_at_the_wait() {
    // The emulator defers cp.async copies to cp.async.wait_group, so a kernel that reads the
    // destination too early sees the old contents instead of racing silently.
    let dev = emulator();
    let mut rng = Rng::new(8);
    let input = rng.vec_f32(4 * 128, 1.0, 2.0);
    let inp = dev.htod(&input).unwrap();
    let mut out = poisoned_f32(&dev, 2 * 128);
    // SAFETY: in holds 4*128 floats, out 2*128; 128 threads.
    unsafe {
        dev.launch(&Launch {
            kernel: SELFTEST_CP_ASYNC_READ_BEFORE_WAIT,
            grid: Dim3::x(1),
            block: Dim3::x(128),
            shared_bytes: 0,
            args: &[out.arg_mut(), inp.arg()],
        })
        .unwrap();
    }
    let got = dev.dtoh::<f32>(&out).unwrap();
    for t in 0..128 {
        assert_eq!(got[t], -1.0, "thread {t} saw the copy before waiting");
        assert_eq!(got[128 + t], input[4 * t], "thread {t} after the wait");
    }
}

#[test]
fn divergent_half_warps_with_disjoint_masks() {
    let mut rng = Rng::new(9);
    for dev in devices() {
        let n = 128;
        let input: Vec<u32> = (0..n).map(|_| rng.next_u32()).collect();
        let inp = dev.htod(&input).unwrap();
        let mut out = poisoned_u32(&dev, n);
        // SAFETY: n u32 in and out, one per thread.
        unsafe {
            dev.launch(&Launch {
                kernel: SELFTEST_HALF_WARPS,
                grid: Dim3::x(2),
                block: Dim3::x(64),
                shared_bytes: 0,
                args: &[out.arg_mut(), inp.arg()],
            })
            .unwrap();
        }
        let got = dev.dtoh::<u32>(&out).unwrap();
        for t in 0..n {
            let (w, lane) = (t - t % 32, t % 32);
            let want = if lane < 16 {
                input[w + (lane ^ 1)]
            } else if lane % 16 + 2 < 16 {
                input[t + 2]
            } else {
                input[t]
            };
            assert_eq!(got[t], want, "thread {t}");
        }
    }
}
