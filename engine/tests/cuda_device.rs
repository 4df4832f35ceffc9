//! The engine's CUDA device: storage, host<->device copies, the first ops and their backward,
//! device errors and memory accounting.
//!
//! Every test runs on the kernels-cu host emulator (always, in CI) and, when
//! `engine::cuda::open(0)` succeeds, on the real GPU too; without one it prints
//! "skipped: no CUDA device: <reason>" for the GPU half (`KERNELS_CU_REQUIRE_GPU=1` turns that
//! into a failure, as `scripts/gpu-check.sh` sets it).
//!
//! Inputs are fresh random values: the seed comes from the clock (or `ENGINE_TEST_SEED`) and
//! is printed, so a failure can be replayed.

use engine::memory::{device_counter, MemoryScope};
use engine::ops;
use engine::testing::randn;
use engine::{cuda, rng, DType, Device, Error, Tensor, Var};
use half::{bf16, f16};

const SIZES: [usize; 4] = [1, 1023, 4097, 17 * 241];

fn seed() -> u64 {
    let s = std::env::var("ENGINE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed {s} (ENGINE_TEST_SEED={s} replays it)");
    s
}

/// The devices under test: a fresh emulator, plus GPU 0 when one opens.
fn devices(test: &str) -> Vec<Device> {
    let mut v = vec![cuda::open_emulator().expect("the emulator is built into the engine")];
    match cuda::open(0) {
        Ok(d) => {
            let info = cuda::info(d).expect("info of an opened device");
            eprintln!("{test}: also on {d} ({})", info.name);
            v.push(d);
        }
        Err(e) => {
            if std::env::var("KERNELS_CU_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("{test}: KERNELS_CU_REQUIRE_GPU=1 but no CUDA device: {e}");
            }
            eprintln!("{test}: skipped on the GPU: no CUDA device: {e}");
        }
    }
    v
}

/// Random host tensors of every dtype (integers over their whole range).
fn random_of(dtype: DType, n: usize, seed: u64) -> Tensor {
    let bits = |i: usize| rng::bits(seed, i as u64);
    let shape = [n];
    match dtype {
        DType::I32 => Tensor::from_vec((0..n).map(|i| bits(i) as i32).collect::<Vec<_>>(), shape),
        DType::U32 => Tensor::from_vec((0..n).map(|i| bits(i) as u32).collect::<Vec<_>>(), shape),
        DType::U8 => Tensor::from_vec((0..n).map(|i| bits(i) as u8).collect::<Vec<_>>(), shape),
        // Floats: normal values at varied scales, so every exponent range shows up.
        float => Ok(randn(shape, float, seed, 1e3)),
    }
    .expect("shape matches")
}

/// The raw bytes of a host tensor (bit-exact comparison for every dtype).
fn bytes(t: &Tensor) -> Vec<u8> {
    t.cpu_storage().expect("host tensor").as_bytes().to_vec()
}

#[test]
fn real_driver_open_is_an_error_without_a_gpu_never_a_panic() {
    match cuda::open(0) {
        Ok(d) => {
            let info = cuda::info(d).unwrap();
            assert_eq!(d, Device::Cuda(0));
            assert_eq!(info.kind, kernels_cu::BackendKind::Cuda);
            eprintln!(
                "CUDA device 0: {} (cc {:?})",
                info.name, info.compute_capability
            );
            // Opening again gives the same registry entry.
            assert_eq!(Device::cuda(0).unwrap(), d);
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::DeviceUnavailable {
                        device: Device::Cuda(0),
                        ..
                    }
                ),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains("cuda:0"), "{msg}");
            eprintln!("skipped: no CUDA device: {msg}");
            // Moving a tensor there is the same error, not a panic.
            let t = Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap();
            let e2 = t.to_device(Device::Cuda(0)).unwrap_err();
            assert!(matches!(e2, Error::DeviceUnavailable { .. }), "{e2:?}");
            // So is a memory query: nothing was registered.
            assert!(device_counter(Device::Cuda(0)).is_none());
        }
    }
    // An emulator id that nobody registered is a clear error too.
    let ghost = Device::Cuda(Device::CUDA_EMULATOR_BASE + 1_000_000);
    assert_eq!(ghost.to_string(), "cuda:emu1000000");
    let e = Tensor::from_vec(vec![1.0f32], [1])
        .unwrap()
        .to_device(ghost)
        .unwrap_err();
    assert!(e.to_string().contains("no emulator is registered"), "{e}");
    // Ordinals from the emulator range are refused by open().
    assert!(cuda::open(Device::CUDA_EMULATOR_BASE).is_err());
}

#[test]
fn round_trip_every_dtype_is_bit_exact() {
    let s = seed();
    for dev in devices("round_trip") {
        for dtype in [
            DType::F64,
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::I32,
            DType::U32,
            DType::U8,
        ] {
            for (k, n) in [0usize, 1, 1023, 4097].into_iter().enumerate() {
                let host = random_of(dtype, n, s ^ (k as u64 * 7919));
                let on = host.to_device(dev).unwrap();
                assert_eq!(on.device(), dev);
                assert_eq!(on.dtype(), dtype);
                assert_eq!(on.shape(), host.shape());
                assert!(on.cuda_storage().is_some());
                let back = on.to_device(Device::Cpu).unwrap();
                assert_eq!(back.device(), Device::Cpu);
                assert_eq!(back.dtype(), dtype);
                assert_eq!(bytes(&back), bytes(&host), "{dtype} x {n} on {dev}");
                // Reshape shares the device buffer.
                let r = on.reshape([1, n]).unwrap();
                assert!(r.same_storage(&on));
                assert_eq!(bytes(&r.to_device(Device::Cpu).unwrap()), bytes(&host));
            }
        }
    }
    // Between two CUDA devices (through the host).
    let (e1, e2) = (
        cuda::open_emulator().unwrap(),
        cuda::open_emulator().unwrap(),
    );
    let host = random_of(DType::BF16, 999, s);
    let moved = host.to_device(e1).unwrap().to_device(e2).unwrap();
    assert_eq!(moved.device(), e2);
    assert_eq!(bytes(&moved.to_device(Device::Cpu).unwrap()), bytes(&host));
}

#[test]
fn host_views_of_a_device_tensor_are_errors_naming_the_device() {
    let dev = cuda::open_emulator().unwrap();
    let t = Tensor::from_vec(vec![1.5f32, -2.0, 3.25], [3])
        .unwrap()
        .to_device(dev)
        .unwrap();
    let name = dev.to_string();
    assert!(name.starts_with("cuda:emu"), "{name}");
    let errs = [
        t.as_slice::<f32>().map(|_| ()).unwrap_err(),
        t.to_vec::<f32>().map(|_| ()).unwrap_err(),
        t.to_f64_vec().map(|_| ()).unwrap_err(),
        t.to_f32_vec().map(|_| ()).unwrap_err(),
        t.cpu_storage().map(|_| ()).unwrap_err(),
        t.to_dtype(DType::BF16).map(|_| ()).unwrap_err(),
    ];
    for e in errs {
        assert!(
            matches!(e, Error::NotOnHost { device, .. } if device == dev),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&name) && msg.contains("to_device(Device::Cpu)"),
            "{msg}"
        );
    }
    // The explicit path works.
    assert_eq!(
        t.to_device(Device::Cpu).unwrap().to_vec::<f32>().unwrap(),
        vec![1.5, -2.0, 3.25]
    );
}

#[test]
fn add_and_scale_match_the_cpu_bit_for_bit() {
    let s = seed();
    for dev in devices("add_scale") {
        for (k, &n) in SIZES.iter().enumerate() {
            let a = randn([n], DType::F32, s.wrapping_add(2 * k as u64), 3.0);
            let b = randn([n], DType::F32, s.wrapping_add(2 * k as u64 + 1), 0.5);
            let (ga, gb) = (a.to_device(dev).unwrap(), b.to_device(dev).unwrap());

            // f32: the CPU backend computes exactly the same IEEE operations.
            let sum = ops::elementwise::add_tensors(&ga, &gb).unwrap();
            assert_eq!(sum.device(), dev);
            let want = ops::elementwise::add_tensors(&a, &b).unwrap();
            assert_eq!(bytes(&sum.to_device(Device::Cpu).unwrap()), bytes(&want));

            let factor = -0.3711;
            let sc = ops::elementwise::scale_tensor(&ga, factor).unwrap();
            assert_eq!(sc.device(), dev);
            let want = ops::elementwise::scale_tensor(&a, factor).unwrap();
            assert_eq!(bytes(&sc.to_device(Device::Cpu).unwrap()), bytes(&want));

            // bf16 (no CPU bf16 arithmetic): the definition is f32 math rounded once.
            let (ha, hb) = (
                a.to_dtype(DType::BF16).unwrap(),
                b.to_dtype(DType::BF16).unwrap(),
            );
            let (da, db) = (ha.to_device(dev).unwrap(), hb.to_device(dev).unwrap());
            let got = ops::elementwise::add_tensors(&da, &db)
                .unwrap()
                .to_device(Device::Cpu)
                .unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            let (xa, xb) = (
                ha.as_slice::<bf16>().unwrap(),
                hb.as_slice::<bf16>().unwrap(),
            );
            let want: Vec<bf16> = xa
                .iter()
                .zip(xb)
                .map(|(x, y)| bf16::from_f32(x.to_f32() + y.to_f32()))
                .collect();
            assert_eq!(got.to_vec::<bf16>().unwrap(), want, "bf16 add, n = {n}");
            let got = ops::elementwise::scale_tensor(&da, factor)
                .unwrap()
                .to_device(Device::Cpu)
                .unwrap();
            let want: Vec<bf16> = xa
                .iter()
                .map(|x| bf16::from_f32(factor as f32 * x.to_f32()))
                .collect();
            assert_eq!(got.to_vec::<bf16>().unwrap(), want, "bf16 scale, n = {n}");

            // Through the public differentiable ops too, on a 2-D shape.
            if n == 17 * 241 {
                let a2 = Var::constant(ga.reshape([17, 241]).unwrap());
                let b2 = Var::constant(gb.reshape([17, 241]).unwrap());
                let y = ops::add(&a2, &b2).unwrap().value();
                assert_eq!(y.device(), dev);
                assert_eq!(y.dims(), &[17, 241]);
            }
        }
    }
}

#[test]
fn sum_matches_a_float64_reference_and_is_deterministic() {
    let s = seed();
    for dev in devices("sum") {
        for (k, &n) in SIZES.iter().enumerate() {
            // A non-zero mean, so the sum is not hidden in cancellation noise.
            let a = randn([n], DType::F64, s.wrapping_add(k as u64), 2.0);
            let a = Tensor::from_vec(
                a.to_vec::<f64>()
                    .unwrap()
                    .iter()
                    .map(|x| x + 0.25)
                    .collect::<Vec<_>>(),
                [n],
            )
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
            let x = a.to_f64_vec().unwrap();
            let exact: f64 = x.iter().sum();
            let mag: f64 = x.iter().map(|v| v.abs()).sum();

            let on = Var::constant(a.to_device(dev).unwrap());
            let got = ops::sum_all(&on).unwrap().value();
            assert_eq!(got.device(), dev);
            assert_eq!(got.dtype(), DType::F32);
            assert_eq!(got.elem_count(), 1);
            let got = got.to_device(Device::Cpu).unwrap();
            let v = got.to_scalar().unwrap();
            // f32 accumulation: a few dozen roundings deep at most (per-thread runs, then two
            // tree levels), each at most 2^-24 relative to the running magnitude.
            let tol = 64.0 * f32::EPSILON as f64 * mag;
            assert!(
                (v - exact).abs() <= tol,
                "n = {n}: {v} vs {exact} (tol {tol})"
            );
            // Same with the CPU op (f64 accumulation).
            let cpu = ops::sum_all(&Var::constant(a.clone())).unwrap().value();
            assert!((cpu.to_scalar().unwrap() - v).abs() <= tol);
            // Deterministic: same inputs, same bits.
            let again = ops::sum_all(&on)
                .unwrap()
                .value()
                .to_device(Device::Cpu)
                .unwrap();
            assert_eq!(bytes(&again), bytes(&got));
        }
    }
}

/// `L = Σ (s·(a + b) + a)`: a's gradient arrives by two paths (accumulated on the device).
fn objective(a: &Var, b: &Var) -> engine::Result<Var> {
    let y = ops::add(&ops::scale(&ops::add(a, b)?, 0.375)?, a)?;
    ops::sum_all(&y)
}

#[test]
fn autograd_through_add_scale_sum_matches_the_cpu() {
    let s = seed();
    for dev in devices("autograd") {
        for (k, &n) in [1usize, 1023, 4097].iter().enumerate() {
            let a = randn([n], DType::F32, s.wrapping_add(10 + k as u64), 1.0);
            let b = randn([n], DType::F32, s.wrapping_add(20 + k as u64), 1.0);

            let (ca, cb) = (Var::parameter(a.clone()), Var::parameter(b.clone()));
            let cpu_loss = objective(&ca, &cb).unwrap();
            let cpu_grads = cpu_loss.backward().unwrap();

            let da = Var::parameter(a.to_device(dev).unwrap());
            let db = Var::parameter(b.to_device(dev).unwrap());
            let loss = objective(&da, &db).unwrap();
            assert_eq!(loss.value().device(), dev);
            let loss_v = loss
                .value()
                .to_device(Device::Cpu)
                .unwrap()
                .to_scalar()
                .unwrap();
            let cpu_v = cpu_loss.value().to_scalar().unwrap();
            let mag: f64 = a
                .to_f64_vec()
                .unwrap()
                .iter()
                .zip(b.to_f64_vec().unwrap())
                .map(|(x, y)| x.abs() * 1.375 + y.abs() * 0.375)
                .sum();
            assert!((loss_v - cpu_v).abs() <= 64.0 * f32::EPSILON as f64 * mag);

            // Seeded from the host (backward()) and from the device (backward_with).
            let host_seeded = loss.backward().unwrap();
            let mut dev_seeded = engine::GradStore::default();
            let seed_g = Tensor::full(1.0, loss.shape(), DType::F32)
                .to_device(dev)
                .unwrap();
            loss.backward_with(seed_g, &mut dev_seeded).unwrap();

            for (name, cv, dv) in [("a", &ca, &da), ("b", &cb, &db)] {
                let want = bytes(cpu_grads.get(cv).unwrap());
                for store in [&host_seeded, &dev_seeded] {
                    let g = store.get(dv).unwrap();
                    assert_eq!(g.device(), dev, "grad {name} stays on the device");
                    assert_eq!(g.shape(), dv.value().shape());
                    assert_eq!(
                        bytes(&g.to_device(Device::Cpu).unwrap()),
                        want,
                        "grad {name}, n = {n}"
                    );
                }
            }
            // d/da = 1.375, d/db = 0.375 (exact in binary).
            let ga = host_seeded
                .get(&da)
                .unwrap()
                .to_device(Device::Cpu)
                .unwrap();
            assert!(ga.to_vec::<f32>().unwrap().iter().all(|&g| g == 1.375));
        }
    }
}

#[test]
fn mixed_devices_and_missing_kernels_are_clear_errors() {
    let dev = cuda::open_emulator().unwrap();
    let other = cuda::open_emulator().unwrap();
    let h = randn([5, 7], DType::F32, 3, 1.0);
    let d = h.to_device(dev).unwrap();
    let d2 = h.to_device(other).unwrap();

    let e = ops::elementwise::add_tensors(&h, &d).unwrap_err();
    assert!(
        matches!(e, Error::DeviceMismatch { op: "add", a: Device::Cpu, b } if b == dev),
        "{e:?}"
    );
    let e = ops::elementwise::add_tensors(&d, &d2).unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&dev.to_string()) && msg.contains(&other.to_string()),
        "{msg}"
    );
    let e = ops::add(&Var::constant(d.clone()), &Var::constant(h.clone())).unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { .. }), "{e:?}");
    let e = ops::mul(&Var::constant(h.clone()), &Var::constant(d.clone())).unwrap_err();
    assert!(
        matches!(e, Error::DeviceMismatch { op: "mul", .. }),
        "{e:?}"
    );

    // Ops and dtypes without a CUDA kernel name the op and the device.
    let unsupported = |e: Error, op: &str| {
        let msg = e.to_string();
        assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
        assert!(msg.contains(op) && msg.contains(&dev.to_string()), "{msg}");
    };
    unsupported(
        ops::mul(&Var::constant(d.clone()), &Var::constant(d.clone())).unwrap_err(),
        "mul",
    );
    let bias = randn([7], DType::F32, 4, 1.0).to_device(dev).unwrap();
    unsupported(
        ops::add(&Var::constant(d.clone()), &Var::constant(bias)).unwrap_err(),
        "add (broadcast)",
    );
    let d64 = h.to_dtype(DType::F64).unwrap().to_device(dev).unwrap();
    let e = ops::elementwise::add_tensors(&d64, &d64).unwrap_err();
    assert!(e.to_string().contains("f64"), "{e}");
    unsupported(e, "add");
    let dbf = h.to_dtype(DType::BF16).unwrap().to_device(dev).unwrap();
    unsupported(ops::sum_all(&Var::constant(dbf)).unwrap_err(), "sum_all");
    let f16t = Tensor::from_vec(vec![f16::from_f32(1.0); 4], [4])
        .unwrap()
        .to_device(dev)
        .unwrap();
    unsupported(
        ops::elementwise::scale_tensor(&f16t, 2.0).unwrap_err(),
        "scale",
    );

    // Ops of other families read host elements: an error naming the device, not a panic.
    let w = randn([7, 3], DType::F32, 5, 1.0).to_device(dev).unwrap();
    let e = ops::matmul(&Var::constant(d), &Var::constant(w)).unwrap_err();
    assert!(e.to_string().contains(&dev.to_string()), "{e}");
}

/// One "step" of device work: uploads, ops, a reduction, a download; everything dropped.
fn step(dev: Device, a: &Tensor, b: &Tensor) -> f64 {
    let (ga, gb) = (a.to_device(dev).unwrap(), b.to_device(dev).unwrap());
    let y = ops::elementwise::add_tensors(&ga, &gb).unwrap();
    let y = ops::elementwise::scale_tensor(&y, 0.5).unwrap();
    let s = ops::sum_all(&Var::constant(y)).unwrap().value();
    s.to_device(Device::Cpu).unwrap().to_scalar().unwrap()
}

#[test]
fn caching_allocator_makes_no_new_allocation_after_warm_up() {
    let s = seed();
    let mut devs = vec![cuda::open_emulator_pooled().unwrap()];
    match cuda::open(0) {
        Ok(d) => devs.push(d),
        Err(e) => eprintln!("caching allocator: skipped on the GPU: no CUDA device: {e}"),
    }
    let a = randn([4097], DType::F32, s, 1.0);
    let b = randn([4097], DType::F32, s ^ 1, 1.0);
    for dev in devs {
        let counter = device_counter(dev).expect("opened devices have a counter");
        let live0 = counter.live_bytes();
        let first = step(dev, &a, &b);
        let _ = step(dev, &a, &b);
        let warm = cuda::pool_stats(dev).unwrap();
        assert!(warm.raw_allocs > 0);
        for _ in 0..5 {
            // Same inputs, same bits (and the pool hands back recycled, dirty blocks).
            assert_eq!(step(dev, &a, &b).to_bits(), first.to_bits());
        }
        let after = cuda::pool_stats(dev).unwrap();
        assert_eq!(
            after.raw_allocs, warm.raw_allocs,
            "{dev}: allocations after warm-up must come from the cache"
        );
        assert_eq!(
            after.in_use, warm.in_use,
            "{dev}: a step leaks device memory"
        );
        assert_eq!(counter.live_bytes(), live0);
    }
}

#[test]
fn device_bytes_are_counted_per_device_not_on_the_host() {
    let dev = cuda::open_emulator().unwrap();
    let other = cuda::open_emulator().unwrap();
    let counter = device_counter(dev).unwrap();
    let other_counter = device_counter(other).unwrap();
    assert_eq!(counter.live_bytes(), 0);
    let scope = MemoryScope::enter();
    let h = randn([4097], DType::F32, 9, 1.0);
    let host_live = scope.counter().live_bytes();
    assert_eq!(host_live, 4097 * 4);
    let d = h.to_device(dev).unwrap();
    assert_eq!(counter.live_bytes(), 4097 * 4);
    assert_eq!(
        scope.counter().live_bytes(),
        host_live,
        "uploads charge the device only"
    );
    let d2 = ops::elementwise::scale_tensor(&d, 2.0).unwrap();
    assert_eq!(counter.live_bytes(), 2 * 4097 * 4);
    assert_eq!(counter.peak_bytes(), 2 * 4097 * 4);
    assert_eq!(other_counter.live_bytes(), 0);
    drop(d);
    drop(d2);
    assert_eq!(counter.live_bytes(), 0);
    assert_eq!(counter.peak_bytes(), 2 * 4097 * 4, "the peak is kept");
    // The pool's own figures are there too (the emulator allocates exactly).
    let p = cuda::pool_stats(dev).unwrap();
    assert_eq!(p.in_use, 0);
    assert!(p.peak_in_use >= 2 * 4097 * 4);
    drop(scope);
}
