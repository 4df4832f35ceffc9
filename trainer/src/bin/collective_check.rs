//! `collective-check`: run under `mpirun -np N`, checks the data-parallel transport of this
//! machine and prints one line per check: the fixed-order all-reduce (same bits on every rank,
//! equal to the rank-order sum), the counts, the gather of per-rank states, and the NCCL
//! bootstrap as far as it goes without a GPU (the unique-id broadcast, and a failure on rank 0
//! reaching every rank instead of leaving them waiting). Exit status 1 on any failure.
//!
//! `collective-check bench [ELEMENTS...]` times the gradient all-reduce instead (rank 0 prints
//! one line per size: median and best of 20 timed calls after 3 untimed ones).

use anyhow::{bail, Result};
use engine::rng::normal_f64;
use trainer::distributed::mpi::MpiCollective;
use trainer::distributed::nccl::{self, ID_BYTES};
use trainer::distributed::reduce::sum_in_rank_order_f32;
use trainer::distributed::Collective;

/// Rank `r`'s test gradient: fresh normal values over six orders of magnitude.
fn gradient(rank: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let k = (rank * n + i) as u64;
            (normal_f64(0xd15c, k) * 10f64.powi((k % 6) as i32 - 3)) as f32
        })
        .collect()
}

fn check(dist: &MpiCollective) -> Result<()> {
    let (rank, size) = (dist.rank(), dist.size());
    // An odd length, so no chunking can hide an off-by-one.
    let n = 100_003;
    let mut g = gradient(rank, n);
    // An exactly representable value whose sum is known in closed form.
    g[7] = 0.25 * (rank as f32 + 1.0);
    dist.all_reduce_sum_f32(&mut g)?;
    let all: Vec<f32> = (0..size)
        .flat_map(|r| {
            let mut v = gradient(r, n);
            v[7] = 0.25 * (r as f32 + 1.0);
            v
        })
        .collect();
    let mut want = vec![f32::NAN; n];
    sum_in_rank_order_f32(&all, &mut want);
    if let Some(i) = (0..n).find(|&i| g[i].to_bits() != want[i].to_bits()) {
        bail!(
            "rank {rank}: element {i} of the all-reduce is {}, the rank-order sum is {}",
            g[i],
            want[i]
        );
    }
    // Every rank holds the same bits: compare a hash of the result across ranks.
    let hash = g.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(x.to_bits())).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let hashes = dist.all_gather_u64(&[hash])?;
    if hashes.iter().any(|&h| h != hash) {
        bail!("rank {rank}: the ranks hold different all-reduce results: {hashes:x?}");
    }
    println!("ok: f32 all-reduce of {n} values over {size} ranks equals the rank-order sum on every rank");

    let mut counts = [rank as u64 + 1, 1000 * (rank as u64 + 1)];
    dist.all_reduce_sum_u64(&mut counts)?;
    let s = (size * (size + 1) / 2) as u64;
    if counts != [s, 1000 * s] {
        bail!(
            "rank {rank}: count sum {counts:?}, expected [{s}, {}]",
            1000 * s
        );
    }
    let mut loss = [0.5f64.powi(rank as i32)];
    dist.all_reduce_sum_f64(&mut loss)?;
    let want: f64 = (0..size).map(|r| 0.5f64.powi(r as i32)).sum();
    if loss[0] != want {
        bail!("rank {rank}: f64 sum {}, expected {want}", loss[0]);
    }
    println!("ok: u64 and f64 sums");

    let states = dist.all_gather_u64(&[rank as u64, 7 * rank as u64])?;
    let want: Vec<u64> = (0..size as u64).flat_map(|r| [r, 7 * r]).collect();
    if states != want {
        bail!("rank {rank}: gathered {states:?}, expected {want:?}");
    }
    println!("ok: per-rank states gathered in rank order");

    // The NCCL bootstrap: rank 0's id reaches every rank byte for byte.
    let made: [u8; ID_BYTES] = std::array::from_fn(|i| (i as u8).wrapping_mul(31) ^ 0x5a);
    let id = nccl::bootstrap_id(dist, || Ok(made))?;
    if id != made {
        bail!("rank {rank}: the broadcast NCCL id differs from rank 0's");
    }
    // A failure to make the id on rank 0 reaches every rank as an error.
    match nccl::bootstrap_id(dist, || bail!("no NCCL here (test)")) {
        Ok(_) => bail!("rank {rank}: a failed NCCL id creation on rank 0 was not reported"),
        Err(e) if rank == 0 && !e.to_string().contains("no NCCL here") => {
            bail!("rank 0: its own error was replaced: {e}")
        }
        Err(_) => {}
    }
    println!("ok: NCCL unique-id broadcast, and rank 0's failure reaches every rank");
    let on_all = nccl::available_on_all_ranks(dist)?;
    println!(
        "nccl: libnccl {} on every rank{}",
        if on_all { "loads" } else { "does not load" },
        if on_all {
            ""
        } else {
            " (the GPU part of the bootstrap needs it and a GPU)"
        }
    );
    Ok(())
}

/// LoRA parameters of Falcon-7B at r = 8 (32 layers, hidden 4544, fused qkv 4672, MLP 18176):
/// on query_key_value only, and on all four linears; and of the built-in tiny model.
const BENCH_SIZES: [usize; 3] = [
    32 * 8 * (4544 + 4672),
    32 * 8 * ((4544 + 4672) + (4544 + 4544) + 2 * (4544 + 18176)),
    6_144,
];

fn bench(dist: &MpiCollective, sizes: &[usize]) -> Result<()> {
    for &n in sizes {
        let mut g = gradient(dist.rank(), n);
        let mut times = Vec::new();
        for i in 0..23 {
            dist.barrier();
            let t = std::time::Instant::now();
            dist.all_reduce_sum_f32(&mut g)?;
            if i >= 3 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        if dist.rank() == 0 {
            println!(
                "all-reduce {n} f32 ({:.2} MB) over {} ranks: median {:.3} ms, best {:.3} ms",
                n as f64 * 4.0 / 1e6,
                dist.size(),
                times[times.len() / 2],
                times[0]
            );
        }
    }
    Ok(())
}

fn main() {
    let dist = match MpiCollective::init() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => {
            let sizes: Result<Vec<usize>, _> = args[1..].iter().map(|a| a.parse()).collect();
            match sizes {
                Ok(s) if s.is_empty() => bench(&dist, &BENCH_SIZES),
                Ok(s) => bench(&dist, &s),
                Err(e) => Err(anyhow::anyhow!("bench sizes must be element counts: {e}")),
            }
        }
        Some(other) => Err(anyhow::anyhow!(
            "unknown argument `{other}` (expected bench)"
        )),
        None => check(&dist),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        dist.abort(1);
    }
}
