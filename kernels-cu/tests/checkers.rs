//! Proof that the emulator's checkers work: each kind of bug seeded into a small kernel
//! (emu/seeded_bugs.cu) is reported, and the corrected twin of each runs clean and computes the
//! right values. The checker is off in the AddressSanitizer build (the two instrumentations
//! cannot be combined), so these tests do not run there.
#![cfg(not(feature = "asan"))]

mod common;

use common::Rng;
use kernels_cu::{
    Arg, Buffer, Device, Dim3, EmulatorOptions, Error, ExecOrder, Family, Kernel, Launch,
};

static SEEDED: Family = Family {
    name: "seeded_bugs",
    file: "emu/seeded_bugs.cu",
    source: include_str!("../emu/seeded_bugs.cu"),
    ptx: "",
};

const fn seeded(name: &'static str) -> Kernel {
    Kernel {
        name,
        family: &SEEDED,
        hot: false,
    }
}

const MISSING_BARRIER: Kernel = seeded("seeded_missing_barrier");
const REUSED_BUFFER: Kernel = seeded("seeded_reused_buffer");
const VECTOR_LOAD: Kernel = seeded("seeded_vector_load");
const CP_ASYNC_BEFORE_WAIT: Kernel = seeded("seeded_cp_async_before_wait");
const BLOCKS_SHARE_AN_ADDRESS: Kernel = seeded("seeded_blocks_share_an_address");
const WARP_EXCHANGE: Kernel = seeded("seeded_warp_exchange");
const READ_PAST_END: Kernel = seeded("seeded_read_past_end");
const FLAG_CLEARED_WITHOUT_BARRIER: Kernel = seeded("seeded_flag_cleared_without_barrier");
const BLOCK_SUM_TWICE: Kernel = seeded("seeded_block_sum_twice");
const SPLIT_TICKET: Kernel = seeded("seeded_split_ticket");

fn checked() -> Device {
    Device::emulator_with(EmulatorOptions {
        checks: Some(true),
        order: Some(ExecOrder::Ascending),
        ..EmulatorOptions::default()
    })
    .unwrap()
}

fn launch(
    dev: &Device,
    kernel: Kernel,
    grid: u32,
    block: u32,
    shared: u32,
    args: &[Arg<'_>],
) -> Result<(), Error> {
    // SAFETY: every seeded kernel indexes its buffers by thread within the sizes the tests
    // allocate, except the deliberate errors, which the checker stops before they land (a
    // read one element past the end stays inside the emulator's 4 KiB allocation granule).
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(grid),
            block: Dim3::x(block),
            shared_bytes: shared,
            args,
        })
    }
}

/// The message of an emulator error, or a panic naming what was expected.
fn reported(r: Result<(), Error>, what: &str) -> String {
    match r {
        Err(Error::Emulator { msg, .. }) => msg,
        other => panic!("{what}: expected a report from the emulator, got {other:?}"),
    }
}

fn poisoned(dev: &Device, n: usize) -> Buffer {
    dev.htod(&vec![f32::NAN; n]).unwrap()
}

#[test]
fn missing_barrier_with_the_reader_at_a_higher_thread_index_is_a_race() {
    let dev = checked();
    let n = 128;
    let x = Rng::new(1).vec_f32(n, -1.0, 1.0);
    let xb = dev.htod(&x).unwrap();
    let mut out = poisoned(&dev, n);
    let r = launch(
        &dev,
        MISSING_BARRIER,
        1,
        n as u32,
        4 * n as u32,
        &[out.arg_mut(), xb.arg(), Arg::I32(0)],
    );
    let msg = reported(r, "missing __syncthreads");
    assert!(msg.contains("data race"), "{msg}");
    assert!(msg.contains("dynamic shared memory"), "{msg}");
    assert!(
        msg.contains("reads") && msg.contains("wrote") && msg.contains("same barrier interval"),
        "{msg}"
    );
    // The corrected kernel runs clean and shifts by one.
    launch(
        &dev,
        MISSING_BARRIER,
        1,
        n as u32,
        4 * n as u32,
        &[out.arg_mut(), xb.arg(), Arg::I32(1)],
    )
    .unwrap();
    let got = dev.dtoh::<f32>(&out).unwrap();
    for t in 1..n {
        assert_eq!(got[t], x[t - 1], "thread {t}");
    }
}

#[test]
fn reusing_a_shared_buffer_without_a_barrier_is_a_race() {
    let dev = checked();
    let n = 64;
    let x = Rng::new(2).vec_f32(n, -1.0, 1.0);
    let xb = dev.htod(&x).unwrap();
    let mut out = poisoned(&dev, n);
    let r = launch(
        &dev,
        REUSED_BUFFER,
        1,
        n as u32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(0)],
    );
    let msg = reported(r, "buffer reused without a barrier");
    assert!(
        msg.contains("data race") && msg.contains("writes") && msg.contains("read"),
        "{msg}"
    );
    assert!(
        msg.contains("after 1 __syncthreads"),
        "names the interval: {msg}"
    );
    launch(
        &dev,
        REUSED_BUFFER,
        1,
        n as u32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(1)],
    )
    .unwrap();
    let got = dev.dtoh::<f32>(&out).unwrap();
    for t in 0..n {
        assert_eq!(got[t], 2.0 * x[(t + 2) % n], "thread {t}");
    }
}

/// reduce.cu's block_sum has no barrier after its read of the per-warp sums because every
/// kernel reduces once; a second reduction without a barrier between is reported.
#[test]
fn a_second_block_reduction_without_a_barrier_is_a_race() {
    let dev = checked();
    let n = 128;
    let x = Rng::new(9).vec_f32(n, -1.0, 1.0);
    let xb = dev.htod(&x).unwrap();
    let mut out = poisoned(&dev, 2);
    let r = launch(
        &dev,
        BLOCK_SUM_TWICE,
        1,
        n as u32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(0)],
    );
    let msg = reported(r, "second reduction without a barrier");
    assert!(
        msg.contains("data race") && msg.contains("static __shared__"),
        "{msg}"
    );
    launch(
        &dev,
        BLOCK_SUM_TWICE,
        1,
        n as u32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(1)],
    )
    .unwrap();
    let got = dev.dtoh::<f32>(&out).unwrap();
    let sum: f64 = x.iter().map(|&v| v as f64).sum();
    let sumsq: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    // f32 sums of 128 terms of magnitude <= 1: well within 1e-4 of the f64 sums.
    assert!((got[0] as f64 - sum).abs() < 1e-4, "{} vs {sum}", got[0]);
    assert!(
        (got[1] as f64 - sumsq).abs() < 1e-4,
        "{} vs {sumsq}",
        got[1]
    );
}

#[test]
fn misaligned_vector_load_is_reported() {
    let dev = checked();
    let n = 32;
    let mut rng = Rng::new(3);
    let x: Vec<u32> = (0..4 * n + 4).map(|_| rng.next_u32()).collect();
    let xb = dev.htod(&x).unwrap();
    let mut out = dev.htod(&vec![0u32; n]).unwrap();
    for offset in [4, 8, 12] {
        let r = launch(
            &dev,
            VECTOR_LOAD,
            1,
            n as u32,
            0,
            &[out.arg_mut(), xb.arg(), Arg::I32(offset)],
        );
        let msg = reported(r, "misaligned 16-byte load");
        assert!(
            msg.contains("misaligned 16-byte load")
                && msg.contains(&format!("mod 16 = {offset}"))
                && msg.contains("kernel argument 1"),
            "{msg}"
        );
    }
    launch(
        &dev,
        VECTOR_LOAD,
        1,
        n as u32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(16)],
    )
    .unwrap();
    let got = dev.dtoh::<u32>(&out).unwrap();
    for t in 0..n {
        let v = &x[4 + 4 * t..8 + 4 * t];
        assert_eq!(got[t], v[0] ^ v[1] ^ v[2] ^ v[3], "thread {t}");
    }
}

#[test]
fn reading_cp_async_data_before_its_wait_is_reported() {
    let dev = checked();
    let n = 64;
    let x = Rng::new(4).vec_f32(4 * n, -1.0, 1.0);
    let xb = dev.htod(&x).unwrap();
    let mut out = poisoned(&dev, n);
    let r = launch(
        &dev,
        CP_ASYNC_BEFORE_WAIT,
        1,
        n as u32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(0)],
    );
    let msg = reported(r, "read before cp.async.wait");
    assert!(
        msg.contains("destination of a cp.async") && msg.contains("not yet waited"),
        "{msg}"
    );
    launch(
        &dev,
        CP_ASYNC_BEFORE_WAIT,
        1,
        n as u32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(1)],
    )
    .unwrap();
    let got = dev.dtoh::<f32>(&out).unwrap();
    for t in 0..n {
        assert_eq!(got[t], x[4 * ((t + 1) % n)], "thread {t}");
    }
}

#[test]
fn two_blocks_writing_one_global_address_is_a_race() {
    let dev = checked();
    let blocks = 6;
    let mut out = dev.htod(&[0i32]).unwrap();
    let r = launch(
        &dev,
        BLOCKS_SHARE_AN_ADDRESS,
        blocks,
        32,
        0,
        &[out.arg_mut(), Arg::I32(0)],
    );
    let msg = reported(r, "blocks writing one address");
    assert!(
        msg.contains("data race")
            && msg.contains("global memory, byte 0")
            && msg.contains("kernel argument 0")
            && msg.contains("blocks are not ordered"),
        "{msg}"
    );
    // Atomics are not races.
    dev.write(&mut out, &[0i32]).unwrap();
    launch(
        &dev,
        BLOCKS_SHARE_AN_ADDRESS,
        blocks,
        32,
        0,
        &[out.arg_mut(), Arg::I32(1)],
    )
    .unwrap();
    let want = (1..=blocks as i32).sum::<i32>();
    assert_eq!(dev.dtoh::<i32>(&out).unwrap(), vec![want]);
}

/// seeded_split_ticket's modes (emu/seeded_bugs.cu).
const TICKET_CORRECT: i32 = 0;
const TICKET_NO_RELEASE_FENCE: i32 = 1;
const TICKET_NO_ACQUIRE_FENCE: i32 = 2;
const TICKET_NOT_TAKEN: i32 = 3;

/// Runs seeded_split_ticket over `splits` blocks of `n` threads on fresh inputs; returns the
/// launch's result, the inputs, the output and the counter after it.
fn split_ticket(
    dev: &Device,
    splits: usize,
    n: usize,
    mode: i32,
    seed: u64,
) -> (Result<(), Error>, Vec<f32>, Vec<f32>, u32) {
    let x = Rng::new(seed).vec_f32(splits * n, -1.0, 1.0);
    let xb = dev.htod(&x).unwrap();
    let mut part = poisoned(dev, splits * n);
    let mut ctr = dev.htod(&[0u32]).unwrap();
    let mut out = poisoned(dev, n);
    let r = launch(
        dev,
        SPLIT_TICKET,
        splits as u32,
        n as u32,
        0,
        &[
            out.arg_mut(),
            part.arg_mut(),
            ctr.arg_mut(),
            xb.arg(),
            Arg::I32(mode),
        ],
    );
    let got = dev.dtoh::<f32>(&out).unwrap();
    let count = dev.dtoh::<u32>(&ctr).unwrap()[0];
    (r, x, got, count)
}

#[test]
fn a_ticket_with_release_and_acquire_fences_orders_the_blocks_partials() {
    let (splits, n) = (5, 64);
    for order in [
        ExecOrder::Ascending,
        ExecOrder::Descending,
        ExecOrder::Random(11),
    ] {
        let dev = Device::emulator_with(EmulatorOptions {
            checks: Some(true),
            order: Some(order),
            ..EmulatorOptions::default()
        })
        .unwrap();
        let (r, x, got, count) = split_ticket(&dev, splits, n, TICKET_CORRECT, 21);
        r.unwrap_or_else(|e| panic!("{order:?}: {e}"));
        // The kernel's sum, in its fixed order z = 0, 1, ..., in f32: bit-exact.
        for t in 0..n {
            let mut want = 0.0f32;
            for z in 0..splits {
                want += (z + 1) as f32 * x[z * n + t];
            }
            assert_eq!(got[t].to_bits(), want.to_bits(), "{order:?}: out[{t}]");
        }
        assert_eq!(count, 0, "{order:?}: the last block resets the counter");
    }
}

#[test]
fn a_ticket_without_its_release_or_acquire_fence_or_not_taken_is_a_race() {
    let dev = checked();
    for (mode, what) in [
        (
            TICKET_NO_RELEASE_FENCE,
            "no __threadfence before the ticket",
        ),
        (TICKET_NO_ACQUIRE_FENCE, "no __threadfence after the ticket"),
        (TICKET_NOT_TAKEN, "partials read without taking the ticket"),
    ] {
        let (r, ..) = split_ticket(&dev, 4, 64, mode, 23);
        let msg = reported(r, what);
        assert!(
            msg.contains("data race")
                && msg.contains("kernel argument 1")
                && msg.contains("blocks are not ordered"),
            "{what}: {msg}"
        );
    }
}

#[test]
fn lanes_of_one_warp_need_a_warp_collective_between_write_and_read() {
    let dev = checked();
    let mut rng = Rng::new(5);
    let x: Vec<u32> = (0..32).map(|_| rng.next_u32()).collect();
    let xb = dev.htod(&x).unwrap();
    let mut out = dev.htod(&[0u32; 32]).unwrap();
    let r = launch(
        &dev,
        WARP_EXCHANGE,
        1,
        32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(0)],
    );
    let msg = reported(r, "no __syncwarp");
    assert!(msg.contains("data race"), "{msg}");
    launch(
        &dev,
        WARP_EXCHANGE,
        1,
        32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(1)],
    )
    .unwrap();
    let got = dev.dtoh::<u32>(&out).unwrap();
    for lane in 0..32 {
        assert_eq!(got[lane], x[lane ^ 1], "lane {lane}");
    }
}

#[test]
fn a_plain_store_racing_atomics_on_the_same_flag_is_reported() {
    let dev = checked();
    let n = 64;
    let mut rng = Rng::new(9);
    let mut x: Vec<u32> = (0..n).map(|_| rng.next_u32()).collect();
    let key = x[37];
    x[50] = key;
    let xb = dev.htod(&x).unwrap();
    let mut out = dev.htod(&vec![-1i32; n]).unwrap();
    let r = launch(
        &dev,
        FLAG_CLEARED_WITHOUT_BARRIER,
        1,
        n as u32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::U32(key), Arg::I32(0)],
    );
    let msg = reported(r, "plain store racing atomics");
    assert!(
        msg.contains("data race") && msg.contains("atomically"),
        "{msg}"
    );
    launch(
        &dev,
        FLAG_CLEARED_WITHOUT_BARRIER,
        1,
        n as u32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::U32(key), Arg::I32(1)],
    )
    .unwrap();
    assert_eq!(dev.dtoh::<i32>(&out).unwrap(), vec![1; n]);
}

#[test]
fn reading_past_the_end_of_a_buffer_is_reported() {
    let dev = checked();
    let n = 10;
    let x = Rng::new(6).vec_f32(n, -1.0, 1.0);
    let xb = dev.htod(&x).unwrap();
    let mut out = poisoned(&dev, n);
    let r = launch(
        &dev,
        READ_PAST_END,
        1,
        32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(n as i32), Arg::I32(1)],
    );
    let msg = reported(r, "read past the end");
    assert!(
        msg.contains("out of bounds") && msg.contains("byte 40 of a 40-byte device buffer"),
        "{msg}"
    );
    launch(
        &dev,
        READ_PAST_END,
        1,
        32,
        0,
        &[out.arg_mut(), xb.arg(), Arg::I32(n as i32), Arg::I32(0)],
    )
    .unwrap();
    assert_eq!(dev.dtoh::<f32>(&out).unwrap(), x);
}

#[test]
fn a_result_that_depends_on_the_order_is_reported_by_the_all_orders_mode() {
    // The missing barrier again, with the race checker off: only the comparison of the
    // ascending, descending and random runs can see it.
    let dev = Device::emulator_with(EmulatorOptions {
        checks: Some(false),
        order: Some(ExecOrder::All(7)),
        ..EmulatorOptions::default()
    })
    .unwrap();
    let n = 128;
    let x = Rng::new(7).vec_f32(n, -1.0, 1.0);
    let xb = dev.htod(&x).unwrap();
    let mut out = poisoned(&dev, n);
    let r = launch(
        &dev,
        MISSING_BARRIER,
        1,
        n as u32,
        4 * n as u32,
        &[out.arg_mut(), xb.arg(), Arg::I32(0)],
    );
    let msg = reported(r, "order-dependent result");
    assert!(
        msg.contains("depends on the execution order") && msg.contains("argument 0"),
        "{msg}"
    );
    launch(
        &dev,
        MISSING_BARRIER,
        1,
        n as u32,
        4 * n as u32,
        &[out.arg_mut(), xb.arg(), Arg::I32(1)],
    )
    .unwrap();
}

#[test]
fn every_order_runs_every_block_and_thread_once() {
    let mut rng = Rng::new(8);
    let n = 5 * 96;
    let x = rng.vec_f32(n, -1.0, 1.0);
    for order in [
        ExecOrder::Ascending,
        ExecOrder::Descending,
        ExecOrder::Random(3),
        ExecOrder::All(4),
    ] {
        let dev = Device::emulator_with(EmulatorOptions {
            checks: Some(true),
            order: Some(order),
            ..EmulatorOptions::default()
        })
        .unwrap();
        let xb = dev.htod(&x).unwrap();
        let mut out = poisoned(&dev, n);
        // SAFETY: 5 blocks of 96 threads scale n = 480 elements.
        unsafe {
            dev.launch(&Launch {
                kernel: kernels_cu::kernels::SCALE_F32,
                grid: Dim3::x(5),
                block: Dim3::x(96),
                shared_bytes: 0,
                args: &[out.arg_mut(), xb.arg(), Arg::F32(3.0), Arg::I32(n as i32)],
            })
            .unwrap();
        }
        let got = dev.dtoh::<f32>(&out).unwrap();
        for i in 0..n {
            assert_eq!(got[i], 3.0 * x[i], "{order:?}: element {i}");
        }
    }
}

#[test]
fn invalid_order_in_the_environment_is_a_clear_error() {
    assert_eq!(ExecOrder::parse("random:42"), Some(ExecOrder::Random(42)));
    assert_eq!(ExecOrder::parse("descending"), Some(ExecOrder::Descending));
    assert_eq!(ExecOrder::parse("all"), Some(ExecOrder::All(1)));
    assert_eq!(ExecOrder::parse("sideways"), None);
    assert_eq!(ExecOrder::parse("random:x"), None);
}
