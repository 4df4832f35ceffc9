//! Matrix products: the GEMM kernel (all transpose variants, through the `gemm` crate's
//! blocked SIMD kernels), batched `matmul_t`, and `linear` (`y = x·Wᵀ`).

use super::{same_dtype, with_float};
use crate::autograd::record;
use crate::element::Float;
use crate::{Element, Error, Result, Shape, Tensor, Var};
use std::mem::MaybeUninit;

/// Work (m·n·k) above which a single GEMM is split across the rayon pool.
const PARALLEL_MIN_WORK: usize = 48 * 48 * 48;

/// `C (m x n) = op(A) · op(B)`, or `C += ...` when `accumulate`.
///
/// `op(A)` is `A` stored row-major as `[m, k]`, or with `trans_a` its transpose stored as
/// `[k, m]`; likewise `op(B)` is `[k, n]` or, with `trans_b`, stored as `[n, k]`. `parallel`
/// lets the kernel use the rayon pool; callers already inside a parallel loop pass false.
/// Results do not depend on the number of threads (the split is over output tiles).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
) {
    check_lengths(m, n, k, a, b, c.len());
    // SAFETY: C spans the m*n elements `gemm_dense` may write (checked above).
    unsafe {
        gemm_dense(
            trans_a,
            trans_b,
            m,
            n,
            k,
            a,
            b,
            c.as_mut_ptr(),
            accumulate,
            parallel,
        )
    }
}

/// `op(A) · op(B)` as a new `m x n` row-major buffer ([`gemm`] without accumulation). The
/// buffer is not zero-filled first: the kernel writes every element of C without reading it
/// when not accumulating (the `gemm` crate reads C only when told to), which saves a pass of
/// stores over every product's output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_new<T: Float>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    parallel: bool,
) -> Vec<T> {
    let len = m * n;
    check_lengths(m, n, k, a, b, len);
    if k == 0 {
        return vec![T::ZERO; len];
    }
    let mut c = Vec::with_capacity(len);
    // SAFETY: the capacity holds the m*n elements `gemm_dense` writes; with k > 0 and no
    // accumulation it writes each of them exactly as a zero-filled C would end up (the
    // crate's kernels store `beta·Σ` without reading C when `read_dst` is false), so every
    // element is initialized before `set_len` exposes it.
    unsafe {
        gemm_dense(
            trans_a,
            trans_b,
            m,
            n,
            k,
            a,
            b,
            c.as_mut_ptr(),
            false,
            parallel,
        );
        c.set_len(len);
    }
    c
}

fn check_lengths<T>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c_len: usize) {
    assert_eq!(
        a.len(),
        m * k,
        "gemm: A has {} elements, expected {m}x{k}",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "gemm: B has {} elements, expected {k}x{n}",
        b.len()
    );
    assert_eq!(
        c_len,
        m * n,
        "gemm: C has {c_len} elements, expected {m}x{n}"
    );
}

/// `C (m x n) = scale · A·B`, or `C += scale · A·B` when `accumulate`, for operands given by
/// their element strides: `A[i][p]` at `a[i·a_rs + p·a_cs]`, `B[p][j]` at `b[p·b_rs + j·b_cs]`,
/// `C[i][j]` at `c[i·c_rs + j]`. Sub-matrices of larger row-major buffers (a tile's first
/// columns, a row-major matrix read transposed) need no copy. `scale` multiplies each finished
/// dot product once, so the result is bitwise that of an unscaled product scaled afterwards.
/// Single-threaded: for callers inside parallel loops.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    c: (&mut [T], usize),
    accumulate: bool,
    scale: T,
) {
    let (c, c_rs) = c;
    // SAFETY: an initialized C may be read (accumulating) and written.
    unsafe {
        gemm_strided_raw(
            m,
            n,
            k,
            a,
            b,
            (c.as_mut_ptr(), c.len(), c_rs),
            accumulate,
            scale,
        )
    }
}

/// [`gemm_strided`] without accumulation into a C that may be uninitialized: every element
/// `(i, j)` is written (as into a zero-filled C) and none is read, so a buffer the caller fills
/// anyway needs no zero fill first.
pub(crate) fn gemm_strided_uninit<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    c: (&mut [MaybeUninit<T>], usize),
    scale: T,
) {
    let (c, c_rs) = c;
    let c_ptr = c.as_mut_ptr().cast::<T>();
    // SAFETY: without accumulation C is only written, never read (see `gemm_new`).
    unsafe { gemm_strided_raw(m, n, k, a, b, (c_ptr, c.len(), c_rs), false, scale) }
}

/// [`gemm_strided`] on C given as a pointer, its length and its row stride; checks that the
/// strided elements lie inside A, B and C.
///
/// # Safety
/// `c` must be valid for writes of `len` elements, and for reads when `accumulate`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided_raw<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    c: (*mut T, usize, usize),
    accumulate: bool,
    scale: T,
) {
    let ((a, a_rs, a_cs), (b, b_rs, b_cs), (c, c_len, c_rs)) = (a, b, c);
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        c_rs >= n && last(m, c_rs, n, 1) < c_len,
        "gemm_strided: C of {c_len} elements cannot hold {m}x{n} rows {c_rs} apart"
    );
    if k > 0 {
        assert!(
            last(m, a_rs, k, a_cs) < a.len() && last(k, b_rs, n, b_cs) < b.len(),
            "gemm_strided: A ({} elements) or B ({}) too short for {m}x{k} / {k}x{n}",
            a.len(),
            b.len()
        );
    }
    // SAFETY: the asserts above keep every strided access inside A, B and C.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            (a, a_rs as isize, a_cs as isize),
            (b, b_rs as isize, b_cs as isize),
            (c, c_rs as isize),
            accumulate,
            scale,
            false,
        )
    }
}

/// [`gemm`] on a raw C with strided operands (see [`gemm_strided`]).
///
/// # Safety
/// Every element `(i, p)` of A, `(p, j)` of B (i < m, p < k, j < n) must lie inside `a` and
/// `b` at the given strides, and `c` must be valid for reads (when `accumulate`) and writes of
/// every `(i, j)` at `i·c_rs + j`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: (&[T], isize, isize),
    b: (&[T], isize, isize),
    c: (*mut T, isize),
    accumulate: bool,
    scale: T,
    parallel: bool,
) {
    let ((a, a_rs, a_cs), (b, b_rs, b_cs), (c, c_rs)) = (a, b, c);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) is inside C (the caller's contract).
                    unsafe { c.offset(i as isize * c_rs + j as isize).write(T::ZERO) };
                }
            }
        }
        return;
    }
    let par = if parallel && m * n * k >= PARALLEL_MIN_WORK {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller guarantees the strided elements of A, B and C lie inside them. T is
    // f32 or f64, which `gemm` supports. The crate computes `dst = alpha·dst + beta·Σ` (only
    // `beta·Σ` without `read_dst`), with the scale as beta.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::ONE,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// Row and column strides of a row-major `[rows, cols]` operand, read transposed or not.
fn strides(trans: bool, rows_of_op: usize, cols_of_op: usize) -> (isize, isize) {
    if trans {
        // op(X) = Xᵀ with X stored [cols_of_op, rows_of_op].
        (1, rows_of_op as isize)
    } else {
        (cols_of_op as isize, 1)
    }
}

/// [`gemm`]'s operands as [`gemm_raw`] takes them.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_dense<T: Float>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: *mut T,
    accumulate: bool,
    parallel: bool,
) {
    let (a_rs, a_cs) = strides(trans_a, m, k);
    let (b_rs, b_cs) = strides(trans_b, k, n);
    // SAFETY: forwarded from the callers, which checked the lengths (`check_lengths`).
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            (a, a_rs, a_cs),
            (b, b_rs, b_cs),
            (c, n as isize),
            accumulate,
            T::ONE,
            parallel,
        )
    }
}

/// Batched product of tensors: `[.., p, q]` operands with equal leading (batch) dims, or a
/// rank-2 `b` shared by every batch of `a` (then `trans_a` must be false).
pub fn matmul_tensors(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let dt = same_dtype("matmul", &[a, b])?;
    let (ad, bd) = (a.dims(), b.dims());
    if ad.len() < 2 || bd.len() < 2 {
        return Err(Error::shapes("matmul", a.shape(), b.shape()));
    }
    let (ar, ac) = (ad[ad.len() - 2], ad[ad.len() - 1]);
    let (br, bc) = (bd[bd.len() - 2], bd[bd.len() - 1]);
    let (m, ka) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
    if ka != kb {
        return Err(Error::shape(
            "matmul",
            format!(
                "inner dimensions differ: {} (trans {trans_a}) x {} (trans {trans_b})",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let k = ka;
    let a_batch = &ad[..ad.len() - 2];
    let b_batch = &bd[..bd.len() - 2];
    let shared_b = b_batch.is_empty() && !a_batch.is_empty();
    if !shared_b && a_batch != b_batch {
        return Err(Error::shapes("matmul", a.shape(), b.shape()));
    }
    if shared_b && trans_a {
        return Err(Error::invalid(
            "matmul",
            "a shared rank-2 rhs needs an untransposed lhs",
        ));
    }
    let batch: usize = a_batch.iter().product();
    let mut out_dims = a_batch.to_vec();
    out_dims.extend([m, n]);
    with_float!(dt, "matmul", |T| {
        let (x, y) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
        let out = if shared_b {
            // All batches' rows form one tall matrix: a single large GEMM.
            gemm_new(false, trans_b, batch * m, n, k, x, y, true)
        } else if batch == 1 {
            gemm_new(trans_a, trans_b, m, n, k, x, y, true)
        } else {
            let mut out = vec![T::ZERO; batch * m * n];
            for i in 0..batch {
                gemm(
                    trans_a,
                    trans_b,
                    m,
                    n,
                    k,
                    &x[i * m * k..(i + 1) * m * k],
                    &y[i * k * n..(i + 1) * k * n],
                    &mut out[i * m * n..(i + 1) * m * n],
                    false,
                    true,
                );
            }
            out
        };
        Ok(Tensor::from_storage(T::wrap(out), Shape::new(out_dims)))
    })
}

/// Sums a batched `[.., p, q]` tensor over its batch dims into `[p, q]`.
fn sum_batches(t: &Tensor, p: usize, q: usize) -> Result<Tensor> {
    super::elementwise::sum_rows(&t.reshape([t.elem_count() / (p * q), p * q])?, p * q)?
        .reshape([p, q])
}

/// `C = op(A) · op(B)`, batched (see [`matmul_tensors`] for the shapes).
///
/// Backward, with `dC` the output gradient:
/// `d op(A) = dC · op(B)ᵀ` and `d op(B) = op(A)ᵀ · dC`, each written as one GEMM with the
/// transposes folded into the operands' strides.
pub fn matmul_t(a: &Var, b: &Var, trans_a: bool, trans_b: bool) -> Result<Var> {
    let out = matmul_tensors(&a.value(), &b.value(), trans_a, trans_b)?;
    Ok(record_matmul(a, b, trans_a, trans_b, out))
}

/// Records `out` as the product `op(a)·op(b)` with [`matmul_t`]'s backward.
fn record_matmul(a: &Var, b: &Var, trans_a: bool, trans_b: bool, out: Tensor) -> Var {
    let (av, bv) = (a.value(), b.value());
    let shared_b = bv.rank() == 2 && av.rank() > 2;
    record("matmul", out, &[a, b], move |g, needs, _| {
        let ga = if needs[0] {
            Some(if trans_a {
                // A is [k, m]: dA = op(B) · dCᵀ
                matmul_tensors(&bv, g, trans_b, true)?
            } else {
                // dA = dC · op(B)ᵀ
                matmul_tensors(g, &bv, false, !trans_b)?
            })
        } else {
            None
        };
        let gb = if needs[1] {
            let (gl, al) = if shared_b {
                // Flatten the batch into rows: one GEMM gives the summed gradient.
                let rows = av.elem_count() / av.dims()[av.rank() - 1];
                (
                    g.reshape([rows, g.dims()[g.rank() - 1]])?,
                    av.reshape([rows, av.dims()[av.rank() - 1]])?,
                )
            } else {
                (g.clone(), av.clone())
            };
            let gb = if trans_b {
                // B is [n, k]: dB = dCᵀ · op(A)
                matmul_tensors(&gl, &al, true, trans_a)?
            } else {
                // dB = op(A)ᵀ · dC
                matmul_tensors(&al, &gl, !trans_a, false)?
            };
            let bd = bv.dims();
            Some(if gb.shape() == bv.shape() {
                gb
            } else {
                sum_batches(&gb, bd[0], bd[1])?
            })
        } else {
            None
        };
        Ok(vec![ga, gb])
    })
}

/// `C = A · B` (batched).
pub fn matmul(a: &Var, b: &Var) -> Result<Var> {
    matmul_t(a, b, false, false)
}

/// A linear layer without bias, as `torch.nn.functional.linear`: `y[.., out] = x[.., in] · Wᵀ`
/// with `W` stored `[out, in]`. `dx = dy · W`; `dW = dyᵀ · x` only when `W` requires a gradient.
pub fn linear(x: &Var, w: &Var) -> Result<Var> {
    linear_impl(x, w, false)
}

/// [`linear`] whose output value will never be read, only differentiated: the backward is
/// the same (it reads `x` and `W`, never `y`), but the product is not computed and the value
/// is NaN, so a read would show. For a recomputed segment ([`crate::recomputing`]) whose
/// output projections feed only the (unread) segment output.
pub fn linear_unread(x: &Var, w: &Var) -> Result<Var> {
    linear_impl(x, w, true)
}

/// A NaN-filled float tensor: the value of an op whose value is never computed.
pub(crate) fn poison(shape: impl Into<Shape>, dtype: crate::DType) -> Result<Tensor> {
    let shape = shape.into();
    match dtype {
        crate::DType::F32 => Tensor::from_vec(vec![f32::NAN; shape.elem_count()], shape),
        crate::DType::F64 => Tensor::from_vec(vec![f64::NAN; shape.elem_count()], shape),
        d => Err(Error::DType {
            op: "linear",
            dtype: d,
            expected: "f32 or f64",
        }),
    }
}

fn linear_impl(x: &Var, w: &Var, unread: bool) -> Result<Var> {
    let wd = w.dims();
    if wd.len() != 2 {
        return Err(Error::shape(
            "linear",
            format!("weight must be [out, in], got {}", w.shape()),
        ));
    }
    let xd = x.dims();
    if xd.is_empty() || xd[xd.len() - 1] != wd[1] {
        return Err(Error::shape(
            "linear",
            format!("input {} does not end in {}", x.shape(), wd[1]),
        ));
    }
    let rows: usize = xd[..xd.len() - 1].iter().product();
    let x2 = super::reshape(x, [rows, wd[1]])?;
    let y2 = if unread {
        record_matmul(
            &x2,
            w,
            false,
            true,
            poison([rows, wd[0]], x.value().dtype())?,
        )
    } else {
        matmul_t(&x2, w, false, true)?
    };
    let mut od = xd[..xd.len() - 1].to_vec();
    od.push(wd[0]);
    super::reshape(&y2, od)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    /// `gemm_new` writes every element: its buffer is allocated right after a NaN-filled one
    /// of the same size is freed (so it most likely reuses that memory), and it must equal,
    /// bit for bit, the product written into a zero-filled buffer, on the crate's small-matrix,
    /// vector-times-vector (k <= 2), matrix-vector and blocked paths, every transpose.
    #[test]
    fn gemm_new_writes_every_element_as_gemm_does() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 2),
            (16, 16, 7),
            (37, 1, 40),
            (1, 29, 33),
            (70, 45, 3),
            (130, 96, 64),
            (257, 200, 96),
        ];
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            let a: Vec<f32> = (0..m * k)
                .map(|j| rng::normal_f64(i as u64, j as u64) as f32)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|j| rng::normal_f64(100 + i as u64, j as u64) as f32)
                .collect();
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let mut want = vec![0.0f32; m * n];
                gemm(ta, tb, m, n, k, &a, &b, &mut want, false, true);
                drop(std::hint::black_box(vec![f32::NAN; m * n]));
                let got = gemm_new(ta, tb, m, n, k, &a, &b, true);
                assert_eq!(got.len(), m * n);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{m}x{n}x{k} {ta} {tb} [{j}]");
                }
            }
        }
    }
}
