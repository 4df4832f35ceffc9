//! The fixed-order sum behind the host-memory all-reduce: the root gathers every rank's buffer
//! and adds them element by element in rank order (0, 1, ..., N-1) in f64, rounding once to
//! the element type; the result is then broadcast, so every rank holds the same bits and a
//! rerun with the same inputs gives the same adapters.
//!
//! MPI's own `MPI_Allreduce` may combine partial sums in an order that depends on the
//! algorithm the library picks (and on the message size), and need not give the same bits on
//! every rank; the gather/sum/broadcast costs more bandwidth at the root (see BENCHMARKS.md)
//! but is reproducible by construction.

/// `out[i] = Σ_r parts[r·n + i]` for `r = 0..N`, summed in rank order in f64. `parts` holds N
/// buffers of `out.len()` elements back to back. (Rank by rank over whole buffers, so the
/// memory is read in order; each element still sees the ranks in order 0, 1, ..., N-1.)
pub fn sum_in_rank_order_f32(parts: &[f32], out: &mut [f32]) {
    let n = out.len();
    if n == 0 {
        return;
    }
    let mut acc = vec![0f64; n];
    for chunk in parts.chunks_exact(n) {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += f64::from(x);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

/// As [`sum_in_rank_order_f32`] for f64 values.
pub fn sum_in_rank_order_f64(parts: &[f64], out: &mut [f64]) {
    let n = out.len();
    if n == 0 {
        return;
    }
    out.fill(0.0);
    for chunk in parts.chunks_exact(n) {
        for (o, &x) in out.iter_mut().zip(chunk) {
            *o += x;
        }
    }
}

/// As [`sum_in_rank_order_f32`] for counts (a saturating sum keeps an absurd input from
/// panicking; token counts never come near it).
pub fn sum_in_rank_order_u64(parts: &[u64], out: &mut [u64]) {
    let n = out.len();
    if n == 0 {
        return;
    }
    out.fill(0);
    for chunk in parts.chunks_exact(n) {
        for (o, &x) in out.iter_mut().zip(chunk) {
            *o = o.saturating_add(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::rng::normal_f64;

    #[test]
    fn the_sum_is_the_f64_sum_in_rank_order_rounded_once() {
        let (ranks, n) = (3, 257);
        let parts: Vec<f32> = (0..ranks * n)
            .map(|i| (normal_f64(11, i as u64) * 10f64.powi((i % 7) as i32 - 3)) as f32)
            .collect();
        let mut out = vec![f32::NAN; n];
        sum_in_rank_order_f32(&parts, &mut out);
        for i in 0..n {
            let want = (0..ranks).map(|r| f64::from(parts[r * n + i])).sum::<f64>() as f32;
            assert_eq!(out[i].to_bits(), want.to_bits(), "element {i}");
        }
        // One rank: the buffer itself.
        let mut one = vec![f32::NAN; n];
        sum_in_rank_order_f32(&parts[..n], &mut one);
        assert_eq!(one, parts[..n]);
    }

    #[test]
    fn counts_and_f64_sums() {
        let mut c = [0u64; 2];
        sum_in_rank_order_u64(&[1, 10, 2, 20, 3, 30], &mut c);
        assert_eq!(c, [6, 60]);
        let mut f = [f64::NAN];
        sum_in_rank_order_f64(&[0.5, 0.25, 2.0], &mut f);
        assert_eq!(f, [2.75]);
    }
}
