//! The AddressSanitizer build of the emulator (`--features asan`) catches out-of-bounds
//! accesses in kernels. The out-of-bounds launch runs in a child process (this same test
//! binary), because ASan aborts the process that it reports on.
#![cfg(feature = "asan")]

mod common;

use kernels_cu::{kernels::SELFTEST_OUT_OF_BOUNDS, Arg, DType, Dim3, Launch};

const CHILD_VAR: &str = "KERNELS_CU_ASAN_CHILD";

/// In the child: writes out[10] of a 10-element buffer. In a normal run: does nothing.
#[test]
fn child_writes_past_the_end() {
    if std::env::var(CHILD_VAR).is_err() {
        return;
    }
    let dev = common::emulator();
    let mut out = dev.alloc(DType::F32, 10).unwrap();
    // SAFETY: deliberately violated (one element past the end) to be caught by ASan.
    let r = unsafe {
        dev.launch(&Launch {
            kernel: SELFTEST_OUT_OF_BOUNDS,
            grid: Dim3::x(1),
            block: Dim3::x(32),
            shared_bytes: 0,
            args: &[out.arg_mut(), Arg::I32(10)],
        })
    };
    eprintln!("out-of-bounds launch returned {r:?} without an AddressSanitizer report");
}

#[test]
fn address_sanitizer_reports_an_out_of_bounds_kernel_write() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "child_writes_past_the_end",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the child should have been stopped by ASan:\n{stderr}"
    );
    assert!(
        stderr.contains("ERROR: AddressSanitizer: heap-buffer-overflow"),
        "no ASan report:\n{stderr}"
    );
    assert!(
        stderr.contains("selftest_out_of_bounds"),
        "the report should name the kernel:\n{stderr}"
    );
}
