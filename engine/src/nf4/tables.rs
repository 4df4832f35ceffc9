//! The code tables of bitsandbytes' 4-bit and 8-bit blockwise formats.
//!
//! Every value is given as its fp32 bit pattern, exactly as bitsandbytes 0.50 holds it
//! (`get_4bit_type`, `create_dynamic_map`); none is regenerated from a formula, because the
//! formulas depend on scipy's normal quantiles and torch's fp32 `linspace`.

/// Which 4-bit code table a weight uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 4-bit NormalFloat: 16 quantiles of N(0, 1) scaled to [-1, 1] (QLoRA).
    Nf4,
    /// bitsandbytes' 4-bit float (sign + 3-bit magnitude, exponent bias 2, divided by 12).
    Fp4,
}

impl QuantType {
    /// The name bitsandbytes uses (`quant_type` in the serialized state).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }

    /// Parses bitsandbytes' name (`"nf4"` / `"fp4"`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "nf4" => Some(QuantType::Nf4),
            "fp4" => Some(QuantType::Fp4),
            _ => None,
        }
    }

    /// The value of each 4-bit code: `table()[nibble]`.
    pub fn table(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4,
            QuantType::Fp4 => &FP4,
        }
    }

    /// The value each code dequantizes to: [`table`](Self::table), except that FP4 code 8
    /// decodes to -0.0 as in bitsandbytes' CUDA and C++ CPU kernels (its `quant_map` holds
    /// +0.0 there). Only the sign of a zero differs.
    pub fn dequant_table(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4,
            QuantType::Fp4 => &FP4_DEQUANT,
        }
    }

    /// The 15 decision thresholds, ascending: midpoints of adjacent values of the sorted table.
    pub(crate) fn thresholds(self) -> &'static [f32; 15] {
        match self {
            QuantType::Nf4 => &NF4_THRESHOLDS,
            QuantType::Fp4 => &FP4_THRESHOLDS,
        }
    }

    /// Maps a bucket index (number of thresholds below the scaled value) to the stored code.
    pub(crate) fn bucket_to_code(self) -> &'static [u8; 16] {
        match self {
            QuantType::Nf4 => &IDENTITY,
            QuantType::Fp4 => &FP4_SORT_ORDER,
        }
    }
}

const fn from_bits<const N: usize>(bits: [u32; N]) -> [f32; N] {
    let mut out = [0.0f32; N];
    let mut i = 0;
    while i < N {
        out[i] = f32::from_bits(bits[i]);
        i += 1;
    }
    out
}

/// The 16 NF4 values, indexed by the stored nibble; ascending, code 7 is exactly 0.
pub const NF4: [f32; 16] = from_bits([
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
    0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
]);

/// NF4 decision thresholds: `NF4_THRESHOLDS[j] = fp32((NF4[j] + NF4[j+1]) / 2)`.
pub const NF4_THRESHOLDS: [f32; 15] = from_bits([
    0xbf591cd8, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871, 0x3d22faff,
    0x3df64862, 0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d04, 0x3f248daf, 0x3f5c89da,
]);

/// The 16 FP4 values, indexed by the stored nibble. Bit 3 is the sign; the magnitudes of
/// codes 0..7 are 0, 0.0625, 8, 12, 4, 6, 2, 3 divided by 12. Code 8 is +0.0 in
/// bitsandbytes' `quant_map` (the CUDA lookup table decodes it as -0.0).
pub const FP4: [f32; 16] = from_bits([
    0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000, 0x3e2aaaab, 0x3e800000,
    0x00000000, 0xbbaaaaab, 0xbf2aaaab, 0xbf800000, 0xbeaaaaab, 0xbf000000, 0xbe2aaaab, 0xbe800000,
]);

/// [`FP4`] with code 8 as -0.0: the table bitsandbytes' kernels decode with.
const FP4_DEQUANT: [f32; 16] = {
    let mut t = FP4;
    t[8] = -0.0;
    t
};

/// `FP4[FP4_SORT_ORDER[k]]` is ascending: the permutation bitsandbytes' reference quantizer
/// gets from `argsort(code)`. Its two zeros sort as code 0 then code 8, so a scaled value of
/// exactly 0 gets code 0 and a value in (0, 0.0026] gets code 8.
const FP4_SORT_ORDER: [u8; 16] = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3];

const IDENTITY: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// FP4 thresholds: fp32 midpoints of the sorted FP4 values (one of them is exactly 0).
const FP4_THRESHOLDS: [f32; 15] = {
    let mut out = [0.0f32; 15];
    let mut j = 0;
    while j < 15 {
        let a = FP4[FP4_SORT_ORDER[j] as usize];
        let b = FP4[FP4_SORT_ORDER[j + 1] as usize];
        out[j] = (a + b) / 2.0;
        j += 1;
    }
    out
};

/// Positive half of the signed 8-bit dynamic map, indices 128..=255.
const DYNAMIC_POSITIVE: [u32; 128] = [
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`), ascending:
/// index 127 is 0, index 255 is +1, index 0 is -0.99296875 (there is no -1), and
/// `DYNAMIC_MAP[126 - j] = -DYNAMIC_MAP[128 + j]` for j in 0..127.
pub const DYNAMIC_MAP: [f32; 256] = {
    let mut out = [0.0f32; 256];
    let mut j = 0;
    while j < 128 {
        out[128 + j] = f32::from_bits(DYNAMIC_POSITIVE[j]);
        j += 1;
    }
    let mut j = 0;
    while j < 127 {
        out[126 - j] = -out[128 + j];
        j += 1;
    }
    out
};

/// The 256-entry dynamic map double quantization uses for the absmax statistics
/// (bitsandbytes' `create_dynamic_map()` with its defaults), as an owned table.
pub fn create_dynamic_map() -> [f32; 256] {
    DYNAMIC_MAP
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_fp32_midpoints_of_the_sorted_tables() {
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            let order = qt.bucket_to_code();
            let sorted: Vec<f32> = order.iter().map(|&c| qt.table()[c as usize]).collect();
            assert!(
                sorted.windows(2).all(|w| w[0] <= w[1]),
                "{qt:?} order does not sort"
            );
            for j in 0..15 {
                let mid = (sorted[j] + sorted[j + 1]) / 2.0;
                assert_eq!(
                    qt.thresholds()[j].to_bits(),
                    mid.to_bits(),
                    "{qt:?} threshold {j}"
                );
            }
        }
    }

    #[test]
    fn nf4_structure() {
        assert!(NF4.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(NF4[7].to_bits(), 0);
        assert_eq!(NF4[0], -1.0);
        assert_eq!(NF4[15], 1.0);
    }

    #[test]
    fn fp4_is_sign_magnitude_over_twelve() {
        let magnitudes = [0.0f32, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0];
        for (c, m) in magnitudes.iter().enumerate() {
            assert_eq!(FP4[c], m / 12.0, "code {c}");
            assert_eq!(FP4[c + 8], -(m / 12.0), "code {}", c + 8);
        }
    }

    #[test]
    fn dynamic_map_structure() {
        let map = create_dynamic_map();
        assert!(
            map.windows(2).all(|w| w[0] < w[1]),
            "not strictly ascending"
        );
        assert_eq!(map[127], 0.0);
        assert_eq!(map[255], 1.0);
        assert_eq!(map[0], -0.99296875);
        assert!(
            (map[128] - 5.5e-7).abs() < 1e-12,
            "smallest positive entry {}",
            map[128]
        );
        assert_eq!(map[173], 0.05078125);
        assert_eq!(map[192], 0.12109375);
        assert_eq!(map[254], 0.99296875);
    }
}
