//! Order independence on the emulator: one launch run in three orders (ascending, descending,
//! random) from the same inputs, with every buffer the kernel can reach compared bytewise.
//! A kernel whose result depends on the order has a race that the hardware's scheduler may or
//! may not expose; a correct one (atomics included: the kernels here use only integer atomics)
//! gives identical bytes.

use crate::device::ArgValue;
use crate::error::{Error, Result};

/// A live device allocation that a pointer argument points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub base: u64,
    pub len: usize,
}

const ORDERS: [&str; 3] = ["ascending", "descending", "random"];

/// Runs `run(order)` for orders 0 (ascending), 1 (descending) and 2 (random), restoring the
/// regions' contents before each, and fails on the first byte that differs from the ascending
/// run. The regions end as the last run left them.
///
/// # Safety
/// Every region must be a live allocation of `len` bytes that nothing else accesses meanwhile.
pub(crate) unsafe fn run_in_every_order(
    kernel: &'static str,
    regions: &[Region],
    args: &[ArgValue],
    mut run: impl FnMut(u32) -> Result<()>,
) -> Result<()> {
    // SAFETY: forwarded contract.
    let snapshot = || -> Vec<Vec<u8>> { regions.iter().map(|r| unsafe { read(r) }).collect() };
    let inputs = snapshot();
    run(0)?;
    let reference = snapshot();
    for (order, name) in ORDERS.iter().enumerate().skip(1) {
        for (r, bytes) in regions.iter().zip(&inputs) {
            // SAFETY: forwarded contract; `bytes` has the region's length.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), r.base as *mut u8, r.len) };
        }
        run(order as u32)?;
        for (r, want) in regions.iter().zip(&reference) {
            // SAFETY: forwarded contract.
            let got = unsafe { read(r) };
            if let Some(i) = (0..r.len).find(|&i| got[i] != want[i]) {
                return Err(Error::Emulator {
                    kernel,
                    msg: format!(
                        "the result depends on the execution order: byte {i} of the {}-byte buffer \
                         of {} is {:#04x} after the {} run and {:#04x} after the {name} run",
                        r.len,
                        describe(r, args),
                        want[i],
                        ORDERS[0],
                        got[i],
                    ),
                });
            }
        }
    }
    Ok(())
}

/// # Safety
/// `r` is a live allocation of `r.len` bytes.
unsafe fn read(r: &Region) -> Vec<u8> {
    // SAFETY: forwarded contract.
    unsafe { std::slice::from_raw_parts(r.base as *const u8, r.len) }.to_vec()
}

fn describe(r: &Region, args: &[ArgValue]) -> String {
    let names: Vec<String> = args
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match *a {
            ArgValue::Ptr { addr, .. } if addr >= r.base && addr < r.base + r.len as u64 => {
                Some(format!("argument {i} (+{} bytes)", addr - r.base))
            }
            _ => None,
        })
        .collect();
    names.join(", ")
}
