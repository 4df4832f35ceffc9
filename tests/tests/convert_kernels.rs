//! Conversion kernels (kernels-cu `convert.cu`) on the emulator (and a GPU when one is present):
//! f32 → bf16 bit-identical to `half::bf16::from_f32` (random f32 bit patterns, rounding ties,
//! NaN payloads, infinities, subnormals); bf16 → f32 for every bf16 bit pattern (the bits
//! shifted up, NaN payloads included; `half` agrees except that it quiets signalling NaNs); the
//! axis-1/2 swap bit-identical to a host permutation for random shapes, both dtypes, aligned
//! buffers and unaligned views. Outputs are poisoned before every launch.

use engine::testing::Rng;
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::convert;
use kernels_cu::{Buffer, DType, Device, Error};
use proptest::prelude::*;

/// f32 values that exercise every rounding case: random bit patterns (all exponents, NaN
/// payloads of both signs), exact ties with odd and even bf16 mantissas, values just above and
/// below ties, infinities, zeros, subnormals and the largest finite values (which round to ∞).
fn f32_cases(rng: &mut Rng, n_random: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n_random)
        .map(|_| f32::from_bits(rng.next_u64() as u32))
        .collect();
    for k in 0..64u32 {
        let hi = (rng.next_u64() as u32) & 0xffff_0000;
        for lo in [0x8000u32, 0x7fff, 0x8001, 0x0000, 0xffff] {
            v.push(f32::from_bits(hi | lo));
            v.push(f32::from_bits((hi & 0x807f_0000) | (k << 16) | lo)); // small exponents
        }
    }
    v.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x7f80_0001), // signalling NaN, payload only in the low bits
        f32::from_bits(0xff80_0001),
        f32::from_bits(0x7fc0_0000),
        f32::from_bits(0xffff_ffff),
        f32::from_bits(0x7f7f_8000), // tie at the top: rounds to infinity
        f32::from_bits(0x7f7f_7fff),
    ]);
    v
}

fn poisoned(dev: &Device, dtype: DType, n: usize) -> Buffer {
    match dtype {
        DType::F32 => dev.htod(&vec![f32::from_bits(0x7fa5_a5a5); n]),
        _ => dev.htod(&vec![bf16::from_bits(0x7fa5); n]),
    }
    .unwrap()
}

/// Runs `f32 → bf16` on `x` placed at element `offset` of a larger buffer, writing into a view
/// at `out_offset`, and checks bits against `half`, and that nothing outside the view changed.
fn check_cast_f32_bf16(dev: &Device, x: &[f32], offset: usize, out_offset: usize) {
    let n = x.len();
    let mut host = vec![1.5f32; offset];
    host.extend_from_slice(x);
    host.push(2.5);
    let xb = dev.htod(&host).unwrap();
    let mut out = poisoned(dev, DType::BF16, out_offset + n + 3);
    {
        let xv = xb.view(offset, n).unwrap();
        let mut ov = out.view_mut(out_offset, n).unwrap();
        convert::cast(dev, &mut ov, &xv).unwrap();
    }
    let got = dev.dtoh::<bf16>(&out).unwrap();
    for (i, g) in got.iter().enumerate() {
        let want = if (out_offset..out_offset + n).contains(&i) {
            bf16::from_f32(x[i - out_offset]).to_bits()
        } else {
            0x7fa5
        };
        assert_eq!(
            g.to_bits(),
            want,
            "f32->bf16 (n {n}, offsets {offset}/{out_offset}) element {i}: input {:#010x}",
            if (out_offset..out_offset + n).contains(&i) {
                x[i - out_offset].to_bits()
            } else {
                0
            }
        );
    }
}

#[test]
fn cast_f32_to_bf16_is_bit_identical_to_half() {
    let mut rng = Rng::from_state(1);
    for dev in devices() {
        let x = f32_cases(&mut rng, 20_000);
        // Aligned (vector path), then views 4 and 2 bytes off (scalar path), odd lengths.
        check_cast_f32_bf16(&dev, &x, 0, 0);
        check_cast_f32_bf16(&dev, &x[..x.len() - 3], 1, 0);
        check_cast_f32_bf16(&dev, &x[5..], 4, 1);
        for n in [1usize, 7, 8, 9, 17] {
            check_cast_f32_bf16(&dev, &x[100..100 + n], 0, 0);
        }
    }
}

#[test]
fn cast_bf16_to_f32_is_exact_for_every_bit_pattern() {
    for dev in devices() {
        let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        for (offset, n) in [(0usize, all.len()), (3, all.len() - 3), (8, 1001)] {
            let xb = dev.htod(&all).unwrap();
            let mut out = poisoned(&dev, DType::F32, n + 2);
            {
                let xv = xb.view(offset, n).unwrap();
                let mut ov = out.view_mut(1, n).unwrap();
                convert::cast(&dev, &mut ov, &xv).unwrap();
            }
            let got = dev.dtoh::<f32>(&out).unwrap();
            assert_eq!(got[0].to_bits(), 0x7fa5_a5a5, "written before the view");
            assert_eq!(got[n + 1].to_bits(), 0x7fa5_a5a5, "written after the view");
            for i in 0..n {
                let want = (all[offset + i].to_bits() as u32) << 16;
                assert_eq!(got[1 + i].to_bits(), want, "bf16 {:#06x}", all[offset + i]);
                // `half` agrees except that it sets the quiet bit of signalling NaNs; the
                // kernel keeps the bits (still a NaN).
                let h = all[offset + i].to_f32();
                if h.is_nan() {
                    assert!(got[1 + i].is_nan());
                } else {
                    assert_eq!(want, h.to_bits());
                }
            }
        }
        // Aligned, both directions round trip exactly through bf16-representable values.
        let xs: Vec<f32> = all.iter().map(|b| b.to_f32()).collect();
        let xb = dev.htod(&xs).unwrap();
        let mut mid = poisoned(&dev, DType::BF16, xs.len());
        let mut back = poisoned(&dev, DType::F32, xs.len());
        convert::cast(&dev, &mut mid, &xb).unwrap();
        convert::cast(&dev, &mut back, &mid).unwrap();
        let got = dev.dtoh::<f32>(&back).unwrap();
        for i in 0..xs.len() {
            let want = bf16::from_f32(xs[i]).to_f32().to_bits();
            assert_eq!(got[i].to_bits(), want, "round trip of {:#06x}", all[i]);
        }
    }
}

#[test]
fn cast_rejects_other_dtype_pairs_and_lengths() {
    let dev = Device::emulator().unwrap();
    let f = dev.alloc(DType::F32, 10).unwrap();
    let b = dev.alloc(DType::BF16, 10).unwrap();
    let mut f_out = dev.alloc(DType::F32, 10).unwrap();
    let mut b_out = dev.alloc(DType::BF16, 10).unwrap();
    let mut i_out = dev.alloc(DType::I32, 10).unwrap();
    let mut short = dev.alloc(DType::BF16, 9).unwrap();
    let r = convert::cast(&dev, &mut f_out, &f);
    assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
    let r = convert::cast(&dev, &mut b_out, &b);
    assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
    let r = convert::cast(&dev, &mut i_out, &f);
    assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
    let r = convert::cast(&dev, &mut f_out, &i_out);
    assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
    let r = convert::cast(&dev, &mut short, &f);
    assert!(
        matches!(
            r,
            Err(Error::Length {
                expected: 10,
                got: 9,
                ..
            })
        ),
        "{r:?}"
    );
}

/// Host reference: `out[a][c][b][e] = x[a][b][c][e]`.
fn swap_ref<T: Copy>(x: &[T], [d0, d1, d2, d3]: [usize; 4]) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for a in 0..d0 {
        for c in 0..d2 {
            for b in 0..d1 {
                let row = ((a * d1 + b) * d2 + c) * d3;
                out.extend_from_slice(&x[row..row + d3]);
            }
        }
    }
    out
}

/// Runs the swap with `x` and `out` as views at element offsets (`x_off`, `out_off`) and
/// checks it bit for bit, and that the poison around the output view is untouched.
fn check_swap(dev: &Device, dims: [usize; 4], bf: bool, x_off: usize, out_off: usize, seed: u64) {
    let n: usize = dims.iter().product();
    let mut rng = Rng::from_state(seed);
    let bits: Vec<u32> = (0..x_off + n).map(|_| rng.next_u64() as u32).collect();
    let (got, want): (Vec<u32>, Vec<u32>) = if bf {
        let host: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b as u16)).collect();
        let xb = dev.htod(&host).unwrap();
        let mut out = poisoned(dev, DType::BF16, out_off + n + 1);
        {
            let mut ov = out.view_mut(out_off, n).unwrap();
            convert::swap_axes12(dev, &mut ov, &xb.view(x_off, n).unwrap(), dims).unwrap();
        }
        let got = dev.dtoh::<bf16>(&out).unwrap();
        let mut want = vec![bf16::from_bits(0x7fa5); out_off];
        want.extend(swap_ref(&host[x_off..], dims));
        want.push(bf16::from_bits(0x7fa5));
        (
            got.iter().map(|b| b.to_bits() as u32).collect(),
            want.iter().map(|b| b.to_bits() as u32).collect(),
        )
    } else {
        let host: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let xb = dev.htod(&host).unwrap();
        let mut out = poisoned(dev, DType::F32, out_off + n + 1);
        {
            let mut ov = out.view_mut(out_off, n).unwrap();
            convert::swap_axes12(dev, &mut ov, &xb.view(x_off, n).unwrap(), dims).unwrap();
        }
        let got = dev.dtoh::<f32>(&out).unwrap();
        let mut want = vec![f32::from_bits(0x7fa5_a5a5); out_off];
        want.extend(swap_ref(&host[x_off..], dims));
        want.push(f32::from_bits(0x7fa5_a5a5));
        (
            got.iter().map(|f| f.to_bits()).collect(),
            want.iter().map(|f| f.to_bits()).collect(),
        )
    };
    for i in 0..want.len() {
        assert_eq!(
            got[i], want[i],
            "swap {dims:?} bf16={bf} offsets {x_off}/{out_off}: element {i}"
        );
    }
}

#[test]
fn swap_axes12_at_attention_shapes_and_back() {
    for dev in devices() {
        for bf in [true, false] {
            // [b, heads, t, hd] -> [b, t, heads, hd] with hd 64 and 128, ragged t.
            check_swap(&dev, [2, 3, 17, 64], bf, 0, 0, 1);
            check_swap(&dev, [1, 5, 9, 128], bf, 0, 0, 2);
            // Unaligned views take the scalar path.
            check_swap(&dev, [2, 3, 7, 64], bf, 1, 3, 3);
        }
        // The inverse swap restores the input exactly.
        let dims = [2usize, 4, 11, 64];
        let n: usize = dims.iter().product();
        let mut rng = Rng::from_state(9);
        let x: Vec<bf16> = (0..n)
            .map(|_| bf16::from_bits(rng.next_u64() as u16))
            .collect();
        let xb = dev.htod(&x).unwrap();
        let mut t = poisoned(&dev, DType::BF16, n);
        let mut back = poisoned(&dev, DType::BF16, n);
        convert::swap_axes12(&dev, &mut t, &xb, dims).unwrap();
        convert::swap_axes12(&dev, &mut back, &t, [2, 11, 4, 64]).unwrap();
        let got = dev.dtoh::<bf16>(&back).unwrap();
        assert!(got.iter().zip(&x).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[test]
fn swap_axes12_rejects_bad_shapes_and_dtypes() {
    let dev = Device::emulator().unwrap();
    let x = dev.alloc(DType::BF16, 2 * 3 * 4 * 8).unwrap();
    let mut out = dev.alloc(DType::BF16, 2 * 3 * 4 * 8).unwrap();
    let mut out_f = dev.alloc(DType::F32, 2 * 3 * 4 * 8).unwrap();
    let r = convert::swap_axes12(&dev, &mut out, &x, [2, 3, 4, 9]);
    assert!(matches!(r, Err(Error::Length { .. })), "{r:?}");
    let r = convert::swap_axes12(&dev, &mut out_f, &x, [2, 3, 4, 8]);
    assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
    let r = convert::swap_axes12(&dev, &mut out, &x, [usize::MAX, 3, 4, 8]);
    assert!(matches!(r, Err(Error::Length { .. })), "{r:?}");
    let xi = dev.alloc(DType::I32, 8).unwrap();
    let mut oi = dev.alloc(DType::I32, 8).unwrap();
    let r = convert::swap_axes12(&dev, &mut oi, &xi, [1, 2, 2, 2]);
    assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random shapes (any d3 ≥ 1, including ones that are not whole 16-byte chunks), both
    /// dtypes, aligned and unaligned offsets.
    #[test]
    fn swap_axes12_matches_the_host_permutation(
        d0 in 1usize..4, d1 in 1usize..6, d2 in 1usize..9,
        d3 in prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 12, 16, 24, 64]),
        bf in any::<bool>(), x_off in prop::sample::select(vec![0usize, 1, 8, 16]),
        out_off in prop::sample::select(vec![0usize, 3, 8, 16]), seed in any::<u64>(),
    ) {
        let dev = Device::emulator().unwrap();
        check_swap(&dev, [d0, d1, d2, d3], bf, x_off, out_off, seed);
    }
}
