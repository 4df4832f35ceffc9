//! Graceful stop on SIGINT, SIGTERM and SIGHUP, and the exit status of an interrupted run.
//!
//! Slurm preemption, `docker stop` and Kubernetes send SIGTERM, a closed terminal sends SIGHUP
//! and Ctrl-C sends SIGINT: all three ask the training loop to finish the current step, save a
//! checkpoint and exit with `128 + signal` (130, 143, 129) so that scripts can tell an
//! interrupted run from a finished one.
//!
//! A second signal aborts at once without saving, but only when it comes at least
//! [`ABORT_AFTER`] after the first: `timeout -s INT` and a terminal's Ctrl-C signal both the
//! process and its process group, so one request often arrives twice within microseconds, and
//! that must still save once.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long after the first signal a second one aborts without saving.
pub const ABORT_AFTER: Duration = Duration::from_secs(1);

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// CLOCK_MONOTONIC time of the first signal, in nanoseconds.
static FIRST_AT_NS: AtomicI64 = AtomicI64::new(0);

/// The signals that request a graceful stop.
pub const GRACEFUL: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// `128 + signal`, the shell's convention for a process ended by a signal.
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// The name of a graceful-stop signal, for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// The first graceful-stop signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn write_stderr(msg: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid buffer; async-signal-safe.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: atomics, clock_gettime, write, _exit.
    let now = monotonic_ns();
    if RECEIVED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        FIRST_AT_NS.store(now, Ordering::SeqCst);
        return;
    }
    let first = FIRST_AT_NS.load(Ordering::SeqCst);
    if now - first >= ABORT_AFTER.as_nanos() as i64 {
        write_stderr(b"\ninterrupted again: exiting without saving\n");
        // SAFETY: _exit is async-signal-safe and ends the process.
        unsafe { libc::_exit(exit_code(signal)) };
    }
}

/// Installs the graceful-stop handlers and returns the flag the training loop polls after
/// each step. A thread turns the signal into the flag and prints what will happen (printing
/// is not allowed inside a signal handler).
pub fn install() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for s in GRACEFUL {
        // SAFETY: a zeroed sigaction with an `extern "C"` handler and an empty mask is valid;
        // SA_RESTART keeps blocking reads and writes of the loop from failing with EINTR.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(s, &act, std::ptr::null_mut());
        }
    }
    let flag = stop.clone();
    std::thread::spawn(move || loop {
        if let Some(s) = received() {
            flag.store(true, Ordering::SeqCst);
            eprintln!(
                "\n{}: saving a checkpoint after the current step, then exiting with status {} \
                 (signal again after {} s to abort without saving)",
                name(s),
                exit_code(s),
                ABORT_AFTER.as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    stop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(libc::SIGINT), 130);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        assert_eq!(exit_code(libc::SIGHUP), 129);
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
    }
}
