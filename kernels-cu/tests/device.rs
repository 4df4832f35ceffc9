//! The device interface through the full Rust launch path: the elementwise and reduction
//! families against f64 references (emulator, and CUDA device 0 when it opens), launch checks
//! (argument order, count, dtypes, limits), the entry table against the sources and the
//! emulator registry, and device opening without a driver.

mod common;

use common::{devices, emulator, Rng};
use half::bf16;
use kernels_cu::ops::{elementwise, reduce};
use kernels_cu::{kernels::*, Arg, DType, Device, Dim3, Error, Launch, FAMILIES, KERNELS};

fn poisoned(dev: &Device, dtype: DType, n: usize) -> kernels_cu::Buffer {
    match dtype {
        DType::F32 => dev.htod(&vec![f32::NAN; n]).unwrap(),
        _ => dev.htod(&vec![bf16::NAN; n]).unwrap(),
    }
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

#[test]
fn elementwise_f32_matches_the_reference() {
    let mut rng = Rng::new(10);
    for dev in devices() {
        for n in [1usize, 255, 256, 1000, 70_001] {
            let a = rng.vec_f32(n, -3.0, 3.0);
            let b = rng.vec_f32(n, -3.0, 3.0);
            let (s, alpha) = (rng.uniform(-2.0, 2.0), rng.uniform(-2.0, 2.0));
            let (ab, bb) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());

            let mut out = poisoned(&dev, DType::F32, n);
            elementwise::add(&dev, &mut out, &ab, &bb).unwrap();
            let got = dev.dtoh::<f32>(&out).unwrap();
            for i in 0..n {
                assert_eq!(got[i], a[i] + b[i], "add n={n} i={i}");
            }

            elementwise::scale(&dev, &mut out, &ab, s).unwrap();
            let got = dev.dtoh::<f32>(&out).unwrap();
            for i in 0..n {
                assert_eq!(got[i], s * a[i], "scale n={n} i={i}");
            }

            let mut y = dev.htod(&b).unwrap();
            elementwise::axpy(&dev, &mut y, &ab, alpha).unwrap();
            let got = dev.dtoh::<f32>(&y).unwrap();
            for i in 0..n {
                let want = (alpha as f64 * a[i] as f64 + b[i] as f64) as f32;
                assert!(
                    (got[i] - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "axpy n={n} i={i}: {} vs {want}",
                    got[i]
                );
            }
        }
    }
}

#[test]
fn elementwise_bf16_rounds_once_to_nearest_even() {
    let mut rng = Rng::new(11);
    for dev in devices() {
        let n = 5000;
        let a = to_bf16(&rng.vec_f32(n, -100.0, 100.0));
        let b = to_bf16(&rng.vec_f32(n, -100.0, 100.0));
        let (s, alpha) = (rng.uniform(-2.0, 2.0), rng.uniform(-2.0, 2.0));
        let (ab, bb) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
        let mut out = poisoned(&dev, DType::BF16, n);

        elementwise::add(&dev, &mut out, &ab, &bb).unwrap();
        let got = dev.dtoh::<bf16>(&out).unwrap();
        for i in 0..n {
            let want = bf16::from_f32(a[i].to_f32() + b[i].to_f32());
            assert_eq!(got[i].to_bits(), want.to_bits(), "add_bf16 i={i}");
        }
        elementwise::scale(&dev, &mut out, &ab, s).unwrap();
        let got = dev.dtoh::<bf16>(&out).unwrap();
        for i in 0..n {
            assert_eq!(
                got[i].to_bits(),
                bf16::from_f32(s * a[i].to_f32()).to_bits(),
                "scale_bf16 i={i}"
            );
        }
        let mut y = dev.htod(&b).unwrap();
        elementwise::axpy(&dev, &mut y, &ab, alpha).unwrap();
        let got = dev.dtoh::<bf16>(&y).unwrap();
        for i in 0..n {
            // f32 fma contraction on the GPU may differ from the separate multiply-add in
            // the last f32 bit, which can move the bf16 rounding by one ulp.
            let want = alpha as f64 * a[i].to_f64() + b[i].to_f64();
            let tol = want.abs() / 128.0 + 1e-30;
            assert!(
                (got[i].to_f64() - want).abs() <= tol,
                "axpy_bf16 i={i}: {} vs {want}",
                got[i]
            );
        }
    }
}

#[test]
fn reductions_match_f64_and_are_bitwise_reproducible() {
    let mut rng = Rng::new(12);
    for dev in devices() {
        for n in [1usize, 31, 1000, 65_537, 300_000] {
            let x = rng.vec_f32(n, -1.0, 1.0);
            let xb = dev.htod(&x).unwrap();
            let want: f64 = x.iter().map(|&v| v as f64).sum();
            let abs: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
            let s1 = dev.dtoh::<f32>(&reduce::sum(&dev, &xb).unwrap()).unwrap()[0];
            assert!(
                ((s1 as f64) - want).abs() <= 1e-5 * abs + 1e-6,
                "sum n={n}: {s1} vs {want}"
            );
            let s2 = dev.dtoh::<f32>(&reduce::sum(&dev, &xb).unwrap()).unwrap()[0];
            assert_eq!(s1.to_bits(), s2.to_bits(), "sum is not reproducible, n={n}");

            let want2: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let q = dev
                .dtoh::<f32>(&reduce::sum_squares(&dev, &xb).unwrap())
                .unwrap()[0];
            assert!(
                ((q as f64) - want2).abs() <= 1e-5 * want2 + 1e-6,
                "sumsq n={n}: {q} vs {want2}"
            );

            let xh = to_bf16(&x);
            let want3: f64 = xh.iter().map(|v| v.to_f64() * v.to_f64()).sum();
            let xhb = dev.htod(&xh).unwrap();
            let q3 = dev
                .dtoh::<f32>(&reduce::sum_squares(&dev, &xhb).unwrap())
                .unwrap()[0];
            assert!(
                ((q3 as f64) - want3).abs() <= 1e-5 * want3 + 1e-6,
                "sumsq bf16 n={n}: {q3} vs {want3}"
            );
        }
    }
}

#[test]
fn emulator_runs_hundreds_of_blocks_quickly() {
    // 512 blocks x 256 threads with barriers and shuffles; timing is printed, not asserted.
    let dev = emulator();
    let n: usize = 512 * 256 * 4;
    let x: Vec<f32> = (0..n).map(|i| ((i % 7) as f32) - 3.0).collect();
    let xb = dev.htod(&x).unwrap();
    let mut partial = dev.alloc(DType::F32, 512).unwrap();
    let t = std::time::Instant::now();
    // SAFETY: x holds n floats, partial one per block.
    unsafe {
        dev.launch(&Launch {
            kernel: SUM_F32,
            grid: Dim3::x(512),
            block: Dim3::x(256),
            shared_bytes: 0,
            args: &[partial.arg_mut(), xb.arg(), Arg::I32(n as i32)],
        })
        .unwrap();
    }
    eprintln!(
        "emulator: 512 blocks x 256 threads of sum_f32 in {:?}",
        t.elapsed()
    );
    let p = dev.dtoh::<f32>(&partial).unwrap();
    let total: f64 = p.iter().map(|&v| v as f64).sum();
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    assert_eq!(total, want);
}

#[test]
fn launch_checks_argument_order_count_and_dtypes_on_the_emulator() {
    let dev = emulator();
    let a = dev.htod(&[1.0f32; 8]).unwrap();
    let b = dev.htod(&[2.0f32; 8]).unwrap();
    let mut out = dev.alloc(DType::F32, 8).unwrap();
    let mut out_bf16 = dev.alloc(DType::BF16, 8).unwrap();
    fn row<'a>(args: &'a [Arg<'a>]) -> Launch<'a> {
        Launch {
            kernel: ADD_F32,
            grid: Dim3::x(1),
            block: Dim3::x(32),
            shared_bytes: 0,
            args,
        }
    }
    // Output passed where an input belongs (order swapped).
    // SAFETY (all launches below): buffers hold 8 elements and n = 8; rejected launches do not run.
    let r = unsafe { dev.launch(&row(&[a.arg(), out.arg_mut(), b.arg(), Arg::I32(8)])) };
    assert!(
        matches!(&r, Err(Error::ArgType { index: 0, expected, .. }) if expected == "float* (written)"),
        "{r:?}"
    );
    let r = unsafe { dev.launch(&row(&[out.arg_mut(), a.arg(), b.arg()])) };
    assert!(
        matches!(
            r,
            Err(Error::ArgCount {
                expected: 4,
                got: 3,
                ..
            })
        ),
        "{r:?}"
    );
    let r = unsafe { dev.launch(&row(&[out_bf16.arg_mut(), a.arg(), b.arg(), Arg::I32(8)])) };
    assert!(matches!(r, Err(Error::ArgType { index: 0, .. })), "{r:?}");
    let r = unsafe { dev.launch(&row(&[out.arg_mut(), a.arg(), b.arg(), Arg::U64(8)])) };
    assert!(matches!(r, Err(Error::ArgType { index: 3, .. })), "{r:?}");
    // Limits.
    let mut big = row(&[]);
    big.block = Dim3::x(2048);
    let r = unsafe { dev.launch(&big) };
    assert!(matches!(r, Err(Error::InvalidLaunch { .. })), "{r:?}");
    let mut shared = row(&[]);
    shared.shared_bytes = 200_000;
    let r = unsafe { dev.launch(&shared) };
    assert!(matches!(r, Err(Error::InvalidLaunch { .. })), "{r:?}");
    // A buffer of another device.
    let other = emulator();
    let foreign = other.htod(&[0.0f32; 8]).unwrap();
    let r = unsafe { dev.launch(&row(&[out.arg_mut(), foreign.arg(), b.arg(), Arg::I32(8)])) };
    assert!(matches!(r, Err(Error::WrongDevice { .. })), "{r:?}");
    // The correct row runs.
    unsafe { dev.launch(&row(&[out.arg_mut(), a.arg(), b.arg(), Arg::I32(8)])) }.unwrap();
    assert_eq!(dev.dtoh::<f32>(&out).unwrap(), vec![3.0; 8]);
    // Safe launchers check lengths and dtypes.
    let short = dev.htod(&[1.0f32; 7]).unwrap();
    assert!(matches!(
        elementwise::add(&dev, &mut out, &a, &short),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        elementwise::add(&dev, &mut out_bf16, &a, &b),
        Err(Error::DType { .. })
    ));
}

#[test]
fn copies_check_dtype_length_and_roundtrip() {
    let mut rng = Rng::new(13);
    for dev in devices() {
        let x = rng.vec_f32(1234, -5.0, 5.0);
        let b = dev.htod(&x).unwrap();
        assert_eq!(dev.dtoh::<f32>(&b).unwrap(), x);
        let mut c = dev.alloc(DType::F32, 1234).unwrap();
        dev.copy(&mut c, &b).unwrap();
        assert_eq!(dev.dtoh::<f32>(&c).unwrap(), x);
        let z = dev.alloc_zeros(DType::F32, 1234).unwrap();
        assert!(dev.dtoh::<f32>(&z).unwrap().iter().all(|&v| v == 0.0));
        assert!(matches!(dev.dtoh::<u32>(&b), Err(Error::DType { .. })));
        let mut small = vec![0f32; 3];
        assert!(matches!(
            dev.read_into(&b, &mut small),
            Err(Error::Length { .. })
        ));
    }
}

#[test]
fn entry_table_matches_sources_emulator_and_ptx() {
    // Every extern "C" __global__ in the sources is in KERNELS under its family, and back.
    for fam in FAMILIES {
        let names = kernels_cu::scan::kernel_names(fam.source).unwrap();
        let listed: Vec<&str> = KERNELS
            .iter()
            .filter(|k| k.family.name == fam.name)
            .map(|k| k.name)
            .collect();
        assert_eq!(names, listed, "entry table of family {}", fam.name);
    }
    // The emulator has exactly these kernels; each one's parameter sizes equal the PTX entry's.
    let emu = kernels_cu::emulator_kernels();
    let emu_names: Vec<&str> = emu.iter().map(|(n, _)| n.as_str()).collect();
    let mut all: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
    let mut sorted_emu = emu_names.clone();
    all.sort();
    sorted_emu.sort();
    assert_eq!(sorted_emu, all);
    for (name, sig) in &emu {
        let k = kernels_cu::kernel(name).unwrap();
        let ptx_sizes = kernels_cu::ptx::entry_param_sizes(k.ptx(), name)
            .unwrap_or_else(|| panic!("{name} is not in the embedded PTX of {}", k.family.name));
        let emu_sizes: Vec<usize> = (0..sig.len() / 2)
            .map(|i| match &sig[2 * i..2 * i + 2] {
                s if s.starts_with('P') || s.starts_with('p') => 8,
                "vd" | "vl" | "vL" => 8,
                "vw" => 2,
                "vc" | "vs" => 1,
                _ => 4,
            })
            .collect();
        assert_eq!(
            ptx_sizes, emu_sizes,
            "{name}: PTX parameters vs C++ signature {sig}"
        );
    }
}

#[test]
fn cuda_device_without_driver_is_an_error_not_a_panic() {
    let r = Device::cuda(0);
    if !kernels_cu::cuda_driver_present() {
        assert!(matches!(r, Err(Error::NoDriver)), "{r:?}");
    } else if let Err(e) = r {
        // A driver without a usable GPU: still an error value.
        eprintln!("CUDA device 0 does not open: {e}");
    }
    // A device ordinal that cannot exist is an error everywhere.
    assert!(Device::cuda(1_000_000).is_err());
}

#[test]
fn emulator_memory_counters_follow_buffers() {
    let dev = emulator();
    let before = dev.memory().in_use;
    let b = dev.alloc(DType::F32, 1000).unwrap();
    assert_eq!(dev.memory().in_use, before + 4000);
    drop(b);
    assert_eq!(dev.memory().in_use, before);
}

#[test]
fn offset_arguments_address_part_of_a_buffer() {
    let mut rng = Rng::new(14);
    for dev in devices() {
        let x = rng.vec_f32(100, -1.0, 1.0);
        let xb = dev.htod(&x).unwrap();
        let mut out = dev.htod(&vec![f32::NAN; 100]).unwrap();
        // SAFETY: 40 elements from offset 50 (out) and 10 (x) stay inside 100-element buffers.
        unsafe {
            dev.launch(&Launch {
                kernel: SCALE_F32,
                grid: Dim3::x(1),
                block: Dim3::x(64),
                shared_bytes: 0,
                args: &[
                    Arg::MutAt(&mut out, 50),
                    Arg::RefAt(&xb, 10),
                    Arg::F32(2.0),
                    Arg::I32(40),
                ],
            })
            .unwrap();
        }
        let got = dev.dtoh::<f32>(&out).unwrap();
        for i in 0..100 {
            if (50..90).contains(&i) {
                assert_eq!(got[i], 2.0 * x[i - 40], "element {i}");
            } else {
                assert!(got[i].is_nan(), "element {i} outside the range was written");
            }
        }
        // SAFETY: rejected before launching.
        let r = unsafe {
            dev.launch(&Launch {
                kernel: SCALE_F32,
                grid: Dim3::x(1),
                block: Dim3::x(64),
                shared_bytes: 0,
                args: &[
                    Arg::MutAt(&mut out, 101),
                    xb.arg(),
                    Arg::F32(2.0),
                    Arg::I32(0),
                ],
            })
        };
        assert!(matches!(r, Err(Error::InvalidLaunch { .. })), "{r:?}");
    }
}

#[test]
fn devices_and_buffers_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Device>();
    assert_send_sync::<kernels_cu::Buffer>();
    let dev = emulator();
    let handles: Vec<_> = (0..4)
        .map(|k| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let x: Vec<f32> = (0..5000).map(|i| (i % 10) as f32 + k as f32).collect();
                let b = dev.htod(&x).unwrap();
                let s = reduce::sum(&dev, &b).unwrap();
                let want: f64 = x.iter().map(|&v| v as f64).sum();
                assert_eq!(dev.dtoh::<f32>(&s).unwrap()[0] as f64, want);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn kernels_write_through_a_mutable_view_and_only_inside_its_range() {
    let mut rng = Rng::new(15);
    for dev in devices() {
        let n = 1000;
        let x = rng.vec_f32(n, -2.0, 2.0);
        let y = rng.vec_f32(n, -2.0, 2.0);
        let xb = dev.htod(&x).unwrap();
        let mut yb = dev.htod(&y).unwrap();
        // Offsets that are multiples of 16 bytes and ragged lengths, then an unaligned offset
        // (the elementwise kernels fall back to scalar accesses, so any offset is fine).
        for (off, len, src_off) in [(64usize, 333usize, 128usize), (0, 1, 999), (517, 483, 3)] {
            let before = dev.dtoh::<f32>(&yb).unwrap();
            {
                let src = xb.view(src_off, len).unwrap();
                let mut dst = yb.view_mut(off, len).unwrap();
                assert_eq!((dst.len(), dst.dtype()), (len, DType::F32));
                elementwise::scale(&dev, &mut dst, &src, 3.0).unwrap();
                // A view reads back exactly its range.
                let got = dev.dtoh::<f32>(&dst).unwrap();
                for i in 0..len {
                    assert_eq!(got[i], 3.0 * x[src_off + i], "view element {i}");
                }
            }
            let after = dev.dtoh::<f32>(&yb).unwrap();
            for i in 0..n {
                if (off..off + len).contains(&i) {
                    assert_eq!(after[i], 3.0 * x[src_off + i - off], "element {i}");
                } else {
                    assert_eq!(
                        after[i].to_bits(),
                        before[i].to_bits(),
                        "element {i} changed"
                    );
                }
            }
        }
        // A view of a view addresses its parent's range; a length check still applies to it.
        let mut outer = yb.view_mut(100, 200).unwrap();
        let mut inner = outer.view_mut(50, 10).unwrap();
        dev.write(&mut inner, &[7.0f32; 10]).unwrap();
        assert!(dev.write(&mut inner, &[7.0f32; 11]).is_err());
        drop(inner);
        drop(outer);
        let got = dev.dtoh::<f32>(&yb).unwrap();
        assert!(got[150..160].iter().all(|&v| v == 7.0));
        assert_ne!(got[149], 7.0);
        assert_ne!(got[160], 7.0);
    }
}

#[test]
fn views_outside_the_buffer_are_errors() {
    let dev = emulator();
    let mut b = dev.alloc(DType::BF16, 100).unwrap();
    assert!(b.view(0, 100).is_ok());
    assert!(b.view(100, 0).is_ok());
    assert!(b.view(37, 63).is_ok());
    for (off, len) in [
        (0usize, 101usize),
        (90, 11),
        (101, 0),
        (usize::MAX, 2),
        (1, usize::MAX),
    ] {
        let r = b.view(off, len);
        assert!(
            matches!(r, Err(Error::Length { expected: 100, .. })),
            "view({off}, {len}): {r:?}"
        );
        let r = b.view_mut(off, len);
        assert!(
            matches!(r, Err(Error::Length { .. })),
            "view_mut({off}, {len}): {r:?}"
        );
    }
    let v = b.view(10, 20).unwrap();
    assert!(matches!(
        v.view(5, 16),
        Err(Error::Length { expected: 20, .. })
    ));
    // Alignment is reported for vectorized launchers: 8 bf16 = 16 bytes.
    assert!(b.is_aligned(16));
    assert!(b.view(8, 8).unwrap().is_aligned(16));
    assert!(!b.view(4, 8).unwrap().is_aligned(16));
}

#[test]
fn views_neither_allocate_nor_free() {
    for dev in devices() {
        let mut parent = dev.alloc(DType::F32, 4096).unwrap();
        let stats = dev.memory();
        for k in 0..10 {
            let v = parent.view(64 * k, 64).unwrap();
            let whole = parent.view(0, 4096).unwrap();
            assert_eq!(whole.view(128, 64).unwrap().len() + v.len(), 128);
            drop((v, whole));
            let mut m = parent.view_mut(64 * k, 128).unwrap();
            dev.write(&mut m, &vec![k as f32; 128]).unwrap();
        }
        assert_eq!(dev.memory(), stats, "views changed the allocator counters");
        // The parent's memory is intact after its views dropped: nothing was freed early.
        let got = dev.dtoh::<f32>(&parent.view(0, 704).unwrap()).unwrap();
        for (i, &v) in got.iter().enumerate() {
            // Element i was last written by the view starting at 64·min(i/64, 9).
            assert_eq!(v, (i / 64).min(9) as f32, "element {i}");
        }
        drop(parent);
        let freed = dev.memory();
        assert_eq!(
            freed.in_use + 4096 * 4,
            stats.in_use,
            "dropping the parent frees its memory once"
        );
        // Allocating again works and the counters return to the same state.
        let again = dev.alloc(DType::F32, 4096).unwrap();
        assert_eq!(dev.memory().in_use, stats.in_use);
        drop(again);
        assert_eq!(dev.memory().in_use, freed.in_use);
    }
}

#[test]
fn a_view_moved_out_of_its_wrapper_keeps_the_memory_alive() {
    // `DerefMut` lets safe code swap a view's buffer out; the allocation is shared, so the
    // moved-out buffer neither frees its parent's memory nor dangles after the parent drops.
    let dev = emulator();
    let before = dev.memory().in_use;
    let mut parent = dev.htod(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let mut other = dev.htod(&[9.0f32]).unwrap();
    {
        let mut v = parent.view_mut(2, 1).unwrap();
        std::mem::swap(&mut *v, &mut other);
    }
    // `other` is now the one-element view of parent[2]; the original `other` was freed with
    // the view wrapper.
    assert_eq!(dev.dtoh::<f32>(&other).unwrap(), vec![3.0]);
    assert_eq!(dev.dtoh::<f32>(&parent).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    drop(parent);
    assert_eq!(
        dev.memory().in_use,
        before + 16,
        "the view holds the allocation"
    );
    assert_eq!(dev.dtoh::<f32>(&other).unwrap(), vec![3.0]);
    drop(other);
    assert_eq!(dev.memory().in_use, before);
}

#[test]
fn a_misaligned_view_is_refused_by_the_launcher_before_it_reaches_a_vector_kernel() {
    let mut rng = Rng::new(31);
    for dev in devices() {
        let x = rng.vec_f32(64, -2.0, 2.0);
        let xb = dev.htod(&x).unwrap();
        let mut y = dev.htod(&vec![f32::NAN; 64]).unwrap();
        // A view one element (4 bytes) into the input: gelu_fwd_f32 loads it as float4.
        let view = xb.view(1, 32).unwrap();
        let mut out = y.view_mut(0, 32).unwrap();
        let r = kernels_cu::ops::pointwise::gelu_forward(&dev, &mut out, &view);
        match r {
            Err(Error::InvalidLaunch { kernel, reason }) => {
                assert_eq!(kernel, "gelu_fwd_f32");
                assert!(
                    reason.contains("argument 1")
                        && reason.contains("4 bytes past a 16-byte boundary")
                        && reason.contains("multiple of 4 elements"),
                    "{reason}"
                );
            }
            other => panic!("expected the launcher to refuse the view, got {other:?}"),
        }
        // The same view at a 16-byte boundary launches and computes.
        let view = xb.view(4, 32).unwrap();
        kernels_cu::ops::pointwise::gelu_forward(&dev, &mut out, &view).unwrap();
        drop(out);
        let got = dev.dtoh::<f32>(&y).unwrap();
        for i in 0..32 {
            let v = x[4 + i] as f64;
            let want = 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
            assert!((got[i] as f64 - want).abs() < 1e-5, "element {i}");
        }
        assert!(
            got[32..].iter().all(|v| v.is_nan()),
            "written past the view"
        );
    }
}

/// erf by its Taylor series (|x| <= 2 here), to f64 precision.
fn erf(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..60 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
}

#[test]
fn vector_parameter_table_names_pointer_parameters_of_real_kernels() {
    for k in KERNELS {
        let params = kernels_cu::launch_align::vector_params(k.name);
        if params.is_empty() {
            continue;
        }
        let sig = kernels_cu::emulator_kernels()
            .into_iter()
            .find(|(n, _)| n == k.name)
            .map(|(_, s)| s)
            .unwrap();
        for &i in params {
            let code = &sig[2 * i..2 * i + 2];
            assert!(
                code.starts_with('p') || code.starts_with('P'),
                "{}: parameter {i} is {code}, not a pointer",
                k.name
            );
        }
    }
}

/// A captured launch sequence replays with what device memory holds at replay time, frees
/// inside the capture keep their memory for the graph, and copies inside a capture are refused.
#[test]
fn a_captured_graph_replays_its_launches_on_current_inputs() {
    let mut rng = Rng::new(44);
    for dev in devices() {
        let n = 1000;
        let a = rng.vec_f32(n, -3.0, 3.0);
        let b = rng.vec_f32(n, -3.0, 3.0);
        let mut ab = dev.htod(&a).unwrap();
        let bb = dev.htod(&b).unwrap();
        let mut out = poisoned(&dev, DType::F32, n);
        let ((), graph) = dev
            .capture(
                |e| e,
                || {
                    // A temporary freed inside the capture: the graph keeps its memory.
                    let mut t = dev.alloc(DType::F32, n)?;
                    elementwise::add(&dev, &mut t, &ab, &bb)?;
                    elementwise::scale(&dev, &mut out, &t, 2.0)?;
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(graph.nodes(), 2);
        // Nothing ran while capturing.
        assert!(dev.dtoh::<f32>(&out).unwrap().iter().all(|v| v.is_nan()));
        // An allocation after the capture cannot take the kept temporary's memory.
        let mut other = dev.htod(&vec![7.0f32; n]).unwrap();
        for round in 0..2 {
            let a2 = rng.vec_f32(n, -3.0, 3.0);
            dev.write(&mut ab, &a2).unwrap();
            // SAFETY: ab, bb and out are alive; the temporary is kept by the graph.
            unsafe { graph.launch() }.unwrap();
            let got = dev.dtoh::<f32>(&out).unwrap();
            for i in 0..n {
                assert_eq!(got[i], (a2[i] + b[i]) * 2.0, "round {round} i {i}");
            }
            assert!(dev.dtoh::<f32>(&other).unwrap().iter().all(|&v| v == 7.0));
        }
        drop(graph);
        dev.write(&mut other, &vec![1.0f32; n]).unwrap();
        // Copies cannot be captured.
        let r = dev.capture(|e| e, || dev.write(&mut other, &vec![0.0f32; n]));
        assert!(matches!(r, Err(Error::Capture(_))), "{r:?}");
        // The failed capture ended: the next one starts.
        let ((), g) = dev
            .capture(|e| e, || elementwise::scale(&dev, &mut out, &bb, 1.0))
            .unwrap();
        assert_eq!(g.nodes(), 1);
    }
}

/// The devices tests run on hand out NaN-filled allocations, also for a block the caching
/// allocator recycles: an output element a kernel fails to write cannot read back as the
/// values an earlier buffer left there.
#[test]
fn test_devices_poison_recycled_allocations() {
    let mut rng = Rng::new(45);
    for dev in devices() {
        for n in [1usize, 1000, 70_001] {
            let old = rng.vec_f32(n, -3.0, 3.0);
            drop(dev.htod(&old).unwrap());
            let fresh = dev.alloc(DType::F32, n).unwrap();
            let got = dev.dtoh::<f32>(&fresh).unwrap();
            assert!(
                got.iter().all(|v| v.to_bits() == u32::MAX),
                "{}: n={n}: a new allocation is not 0xff-filled",
                dev.info().name
            );
            let half = dev.alloc(DType::BF16, n).unwrap();
            assert!(dev.dtoh::<bf16>(&half).unwrap().iter().all(|v| v.is_nan()));
            // Asked for explicitly (the emulator's backend then fills through the default
            // memset): the same.
            dev.set_poison_allocations(true);
            drop(fresh);
            let again = dev.alloc(DType::F32, n).unwrap();
            assert!(dev
                .dtoh::<f32>(&again)
                .unwrap()
                .iter()
                .all(|v| v.to_bits() == u32::MAX));
        }
    }
}
