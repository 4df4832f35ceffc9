//! The fragment layout of 4-bit weight codes: the order in which the NF4 GEMM's lanes consume
//! them as `mma.m16n8k16` B fragments, made once when a weight is uploaded so that the kernel
//! decodes straight from a 16-byte load into registers (see `cuda/gemm.cu`).
//!
//! `W[N][K]` (K a multiple of 64) is cut into 64 × 64 super-tiles (rows padded to a multiple of
//! 64 with code 0), super-tile `(sn, sk)` at byte `(sn·K/64 + sk)·2048`; inside it, 16 × 16
//! patches `(j, p)` (patch row, patch column). Lane `l = 4g + t` owns the u32 at byte
//! `((4j + p)·32 + l)·4` whose nibble `i` (bits `4i..4i+3`) is the code of patch element
//! `(row g + 8·(i / 4), column 2t + i%2 + 8·((i / 2) % 2))`.
//!
//! bitsandbytes' layout: element `e = n·K + k` has the high nibble of byte `e / 2` when `e` is
//! even, the low nibble when odd. [`to_fragment`] and [`from_fragment`] convert between the two
//! and are inverse on the real rows.

/// Columns (and rows) of a super-tile.
pub const TILE: usize = 64;
/// Bytes of a super-tile.
pub const TILE_BYTES: usize = TILE * TILE / 2;

/// Bytes of a `[n][k]` weight in the fragment layout (rows padded to a multiple of 64).
pub fn fragment_bytes(n: usize, k: usize) -> usize {
    n.div_ceil(TILE) * TILE * k / 2
}

/// Byte offset and nibble shift (0: low, 4: high) of element `(row, col)` in the fragment
/// layout of a weight with `k` columns.
pub fn fragment_position(row: usize, col: usize, k: usize) -> (usize, u32) {
    let st = (row / TILE) * (k / TILE) + col / TILE;
    let (r, c) = (row % TILE, col % TILE);
    let lane = 4 * (r % 8) + (c % 8) / 2;
    let nib = 4 * ((r % 16) / 8) + 2 * ((c % 16) / 8) + c % 2;
    let word = ((r / 16) * 4 + c / 16) * 32 + lane;
    (st * TILE_BYTES + word * 4 + nib / 2, 4 * (nib as u32 % 2))
}

fn bnb_code(packed: &[u8], e: usize) -> u8 {
    let b = packed[e / 2];
    if e.is_multiple_of(2) {
        b >> 4
    } else {
        b & 15
    }
}

/// Reorders bitsandbytes-layout codes of a `[n][k]` weight (`k % 64 == 0`, `ceil(n·k/2)`
/// bytes) into the fragment layout.
pub fn to_fragment(packed: &[u8], n: usize, k: usize) -> Vec<u8> {
    debug_assert!(k.is_multiple_of(TILE) && packed.len() == (n * k).div_ceil(2));
    let mut out = vec![0u8; fragment_bytes(n, k)];
    for row in 0..n {
        for col in 0..k {
            let (byte, shift) = fragment_position(row, col, k);
            out[byte] |= bnb_code(packed, row * k + col) << shift;
        }
    }
    out
}

/// The inverse of [`to_fragment`]: bitsandbytes-layout codes of the `n` real rows.
pub fn from_fragment(frag: &[u8], n: usize, k: usize) -> Vec<u8> {
    let mut out = vec![0u8; (n * k).div_ceil(2)];
    for row in 0..n {
        for col in 0..k {
            let (byte, shift) = fragment_position(row, col, k);
            let code = (frag[byte] >> shift) & 15;
            let e = row * k + col;
            out[e / 2] |= if e.is_multiple_of(2) { code << 4 } else { code };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for fresh codes per case.
    fn codes(len: usize, mut s: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn fragment_layout_round_trips_and_is_a_bijection() {
        let cases: [(usize, usize, u64); 4] =
            [(64, 64, 1), (70, 128, 2), (1, 192, 3), (131, 64, 4)];
        for (n, k, seed) in cases {
            let bnb = codes(
                (n * k).div_ceil(2),
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let frag = to_fragment(&bnb, n, k);
            assert_eq!(frag.len(), fragment_bytes(n, k));
            assert_eq!(from_fragment(&frag, n, k), bnb, "{n}x{k}");
            // Every real element has its own nibble.
            let mut seen = vec![false; 2 * frag.len()];
            for row in 0..n {
                for col in 0..k {
                    let (b, sh) = fragment_position(row, col, k);
                    let slot = 2 * b + (sh / 4) as usize;
                    assert!(!seen[slot], "({row}, {col}) shares a nibble");
                    seen[slot] = true;
                }
            }
        }
    }

    /// The nibbles of lane (g, t)'s word of patch (0, 0) are the m16n8k16 B-fragment elements
    /// B[k][n] = W[n][k] of the PTX ISA tables: b0 = (k 2t, 2t+1; n g), b1 = (k 2t+8, 2t+9).
    #[test]
    fn lane_words_hold_the_mma_b_fragments() {
        let (n, k) = (64, 64);
        let bnb = codes(n * k / 2, 77);
        let frag = to_fragment(&bnb, n, k);
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            let w = u32::from_le_bytes(frag[lane * 4..lane * 4 + 4].try_into().unwrap());
            let nib = |i: u32| ((w >> (4 * i)) & 15) as u8;
            let code = |r: usize, c: usize| bnb_code(&bnb, r * k + c);
            assert_eq!(nib(0), code(g, 2 * t));
            assert_eq!(nib(1), code(g, 2 * t + 1));
            assert_eq!(nib(2), code(g, 2 * t + 8));
            assert_eq!(nib(3), code(g, 2 * t + 9));
            assert_eq!(nib(4), code(g + 8, 2 * t));
            assert_eq!(nib(7), code(g + 8, 2 * t + 9));
        }
    }
}
