//! What every GPU benchmark shares: opening the device (or saying why it is skipped), a
//! criterion group that refuses to time a kernel before it was checked, and the achieved rate
//! against the device's published peak.
//!
//! A benchmark file reads as: build the inputs at the benchmark's shape, [`GpuBench::check`]
//! each kernel once against its CPU reference (a failure panics before anything is timed),
//! then [`GpuBench::time`] it. `time` hands the closure to criterion (its usual statistics and
//! report), then times it again with `Instant` over a fixed wall-clock budget and prints one
//! line: the rate in the unit that matters (TFLOP/s for GEMMs and attention, GB/s for the
//! memory-bound kernels) and its fraction of the peak from [`crate::peaks::peak_for`].

use std::fmt;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use kernels_cu::Device;

use crate::peaks::{peak_for, Peaks};

/// CUDA device 0, or `None` after printing "`<bench>`: skipped, no GPU (`<reason>`)".
///
/// With `KERNELS_CU_REQUIRE_GPU=1` (set by `scripts/gpu-check.sh` on the GPU machine) a GPU
/// that does not open is a failure, not a skip, so a broken driver cannot pass as "no GPU".
pub fn open_gpu_or_skip(bench: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) if std::env::var("KERNELS_CU_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("{bench}: KERNELS_CU_REQUIRE_GPU=1 but CUDA device 0 does not open: {e}")
        }
        Err(e) => {
            println!("{bench}: skipped, no GPU ({e})");
            None
        }
    }
}

/// The work one call of a benchmarked closure does, in the unit its rate is judged by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    /// Floating-point operations (a multiply-add counts 2): compute-bound kernels.
    Flop(f64),
    /// Bytes that must cross DRAM (each input read once, each output written once):
    /// memory-bound kernels.
    Bytes(f64),
}

impl Work {
    /// Criterion's throughput for the same work (elements stand for FLOPs, so criterion's
    /// "elem/s" reads as FLOP/s).
    pub fn throughput(self) -> Throughput {
        match self {
            Work::Flop(f) => Throughput::Elements(f as u64),
            Work::Bytes(b) => Throughput::Bytes(b as u64),
        }
    }
}

/// Work done in a measured time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub work: Work,
    /// Seconds per call.
    pub seconds: f64,
}

impl Rate {
    /// TFLOP/s (10¹²) for [`Work::Flop`], GB/s (10⁹ bytes) for [`Work::Bytes`].
    pub fn value(&self) -> f64 {
        match self.work {
            Work::Flop(f) => f / self.seconds * 1e-12,
            Work::Bytes(b) => b / self.seconds * 1e-9,
        }
    }

    pub fn unit(&self) -> &'static str {
        match self.work {
            Work::Flop(_) => "TFLOP/s",
            Work::Bytes(_) => "GB/s",
        }
    }

    /// The matching peak: bf16 tensor TFLOP/s for FLOPs, DRAM GB/s for bytes.
    pub fn peak(&self, peaks: &Peaks) -> f64 {
        match self.work {
            Work::Flop(_) => peaks.bf16_tflops,
            Work::Bytes(_) => peaks.hbm_gbps,
        }
    }

    /// The fraction of the peak achieved.
    pub fn fraction_of(&self, peaks: &Peaks) -> f64 {
        self.value() / self.peak(peaks)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1} {} ({:.3} ms)",
            self.value(),
            self.unit(),
            self.seconds * 1e3
        )
    }
}

/// The printed result line: `<bench> <case>: <rate> = <x>% of <device> peak <p> <unit>`, or
/// `peak unknown` for a device not in [`crate::peaks`].
pub fn report_line(
    bench: &str,
    case: &str,
    rate: &Rate,
    device: &str,
    peaks: Option<&Peaks>,
) -> String {
    match peaks {
        Some(p) => format!(
            "{bench} {case}: {rate} = {:.1}% of {device} peak {} {}",
            100.0 * rate.fraction_of(p),
            rate.peak(p),
            rate.unit()
        ),
        None => format!("{bench} {case}: {rate}, {device}: peak unknown"),
    }
}

/// Wall-clock time spent per case on the printed rate, after criterion's own measurement.
const RATE_BUDGET: Duration = Duration::from_millis(300);

/// Mean seconds per call of `f` (each followed by a device synchronize): one warm-up call, a
/// probe call that sizes the run to `budget`, then that many calls timed together (at least
/// 3, at most 10 000).
pub fn mean_seconds(dev: &Device, f: &mut dyn FnMut(), budget: Duration) -> f64 {
    let sync = || dev.synchronize().expect("device synchronize");
    f();
    sync();
    let t0 = Instant::now();
    f();
    sync();
    let probe = t0.elapsed().as_secs_f64().max(1e-7);
    let n = ((budget.as_secs_f64() / probe) as usize).clamp(3, 10_000);
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    sync();
    t0.elapsed().as_secs_f64() / n as f64
}

/// One GPU benchmark: the device, its peaks and a criterion group of the same name.
pub struct GpuBench<'c> {
    name: &'static str,
    dev: Device,
    peaks: Option<Peaks>,
    group: BenchmarkGroup<'c, WallTime>,
    checks: usize,
}

impl<'c> GpuBench<'c> {
    /// Opens CUDA device 0 ([`open_gpu_or_skip`]); `None` when the benchmark is skipped.
    pub fn open(c: &'c mut Criterion, name: &'static str) -> Option<Self> {
        let dev = open_gpu_or_skip(name)?;
        let peaks = peak_for(dev.info());
        let info = dev.info();
        println!(
            "{name}: {} (compute capability {}.{}), {}",
            info.name,
            info.compute_capability.0,
            info.compute_capability.1,
            match &peaks {
                Some(p) => format!("peaks {} TFLOP/s bf16, {} GB/s", p.bf16_tflops, p.hbm_gbps),
                None => "peak unknown".to_string(),
            }
        );
        Some(GpuBench {
            name,
            dev,
            peaks,
            group: c.benchmark_group(name),
            checks: 0,
        })
    }

    pub fn dev(&self) -> &Device {
        &self.dev
    }

    /// The criterion group, for settings such as `sample_size`.
    pub fn group(&mut self) -> &mut BenchmarkGroup<'c, WallTime> {
        &mut self.group
    }

    /// Runs `check` (which runs a kernel once at the benchmark's shape and panics when its
    /// output disagrees with the CPU reference) and records that a check happened.
    pub fn check(&mut self, what: &str, check: impl FnOnce(&Device)) {
        let t0 = Instant::now();
        check(&self.dev);
        self.checks += 1;
        println!(
            "{} {what}: matches the CPU reference (checked in {:.1} s)",
            self.name,
            t0.elapsed().as_secs_f64()
        );
    }

    /// Times `f` (one call of the kernel(s) doing `work`; the device is synchronized after
    /// each call) with criterion, then prints the achieved rate and its fraction of the peak.
    ///
    /// Panics when no [`GpuBench::check`] has run yet: a kernel is never timed unchecked.
    pub fn time(&mut self, case: &str, work: Work, mut f: impl FnMut()) {
        assert!(
            self.checks > 0,
            "{}: `{case}` timed before any check against the CPU reference",
            self.name
        );
        let dev = self.dev.clone();
        self.group.throughput(work.throughput());
        self.group.bench_function(case, |b| {
            b.iter(|| {
                f();
                dev.synchronize().expect("device synchronize");
            })
        });
        let seconds = mean_seconds(&self.dev, &mut f, RATE_BUDGET);
        let rate = Rate { work, seconds };
        println!(
            "{}",
            report_line(
                self.name,
                case,
                &rate,
                &self.dev.info().name,
                self.peaks.as_ref()
            )
        );
    }

    pub fn finish(self) {
        self.group.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_their_units() {
        // 2·1024·4544·4544 FLOP in 1 ms: 42.29 TFLOP/s.
        let flop = 2.0 * 1024.0 * 4544.0 * 4544.0;
        let r = Rate {
            work: Work::Flop(flop),
            seconds: 1e-3,
        };
        assert!((r.value() - flop * 1e-9).abs() < 1e-9 * r.value());
        assert_eq!(r.unit(), "TFLOP/s");
        // 40M f32 AdamW moves 28 bytes per parameter: 1.174 GB in 0.5 ms = 2348.8 GB/s.
        let bytes = 28.0 * (40 << 20) as f64;
        let r = Rate {
            work: Work::Bytes(bytes),
            seconds: 5e-4,
        };
        assert!((r.value() - bytes / 5e-4 / 1e9).abs() < 1e-9);
        assert_eq!(r.unit(), "GB/s");
        assert_eq!(Work::Bytes(1e6).throughput(), Throughput::Bytes(1_000_000));
        assert_eq!(
            Work::Flop(2e9).throughput(),
            Throughput::Elements(2_000_000_000)
        );
    }

    #[test]
    fn fraction_of_the_matching_peak() {
        let h200 = Peaks {
            bf16_tflops: 989.4,
            hbm_gbps: 4800.0,
        };
        let compute = Rate {
            work: Work::Flop(494.7e12 * 2e-3),
            seconds: 2e-3,
        };
        assert!((compute.fraction_of(&h200) - 0.5).abs() < 1e-12);
        let memory = Rate {
            work: Work::Bytes(3600e9 * 1e-3),
            seconds: 1e-3,
        };
        assert!((memory.fraction_of(&h200) - 0.75).abs() < 1e-12);
        let line = report_line("adamw_gpu", "step", &memory, "NVIDIA H200", Some(&h200));
        assert_eq!(
            line,
            "adamw_gpu step: 3600.0 GB/s (1.000 ms) = 75.0% of NVIDIA H200 peak 4800 GB/s"
        );
        let line = report_line("gemm_gpu", "qkv", &compute, "NVIDIA L4", None);
        assert_eq!(
            line,
            "gemm_gpu qkv: 494.7 TFLOP/s (2.000 ms), NVIDIA L4: peak unknown"
        );
    }

    #[test]
    fn mean_seconds_times_the_closure() {
        // On the emulator: a closure that sleeps 2 ms per call measures at least that.
        let dev = Device::emulator().expect("emulator");
        let mut calls = 0usize;
        let s = mean_seconds(
            &dev,
            &mut || {
                calls += 1;
                std::thread::sleep(Duration::from_millis(2));
            },
            Duration::from_millis(20),
        );
        assert!(s >= 2e-3, "{s}");
        // Warm-up, probe, and the timed calls (at least 3).
        assert!(calls >= 5, "{calls}");
    }
}
