//! Bit-exactness against bitsandbytes: the committed fixtures in tests/fixtures/nf4 were
//! produced by scripts/fixtures/nf4_golden.py (bitsandbytes 0.50.2 on the CPU), plus the
//! formula-defined golden vectors of the NF4 spec.

use std::path::PathBuf;

use engine::nf4::{
    Absmax, DoubleQuantState, Nf4Error, QuantConfig, QuantElement, QuantType, QuantizedWeight,
    DYNAMIC_MAP, NF4,
};
use engine::DType;
use half::{bf16, f16};
use safetensors::SafeTensors;
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nf4")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn tensor_bytes<'a>(st: &'a SafeTensors<'a>, name: &str) -> &'a [u8] {
    st.tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"))
        .data()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn bits<T: QuantElement>(v: &[T]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

/// Bitwise equality (NaN matching NaN) with the first mismatch in the message.
fn assert_same_bits<T: QuantElement>(got: &[T], want: &[T], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) =
        (0..got.len()).find(|&i| got[i].to_f32().to_bits() != want[i].to_f32().to_bits())
    {
        panic!(
            "{what}: element {i}: got {} want {}",
            got[i].to_f32(),
            want[i].to_f32()
        );
    }
}

struct Case {
    name: String,
    dtype: String,
    shape: [usize; 2],
    cfg: QuantConfig,
}

fn cases() -> Vec<Case> {
    let manifest: Value = serde_json::from_slice(&fixture("quantize.json")).expect("quantize.json");
    manifest["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            dtype: c["dtype"].as_str().expect("dtype").to_string(),
            shape: [
                c["shape"][0].as_u64().expect("shape") as usize,
                c["shape"][1].as_u64().expect("shape") as usize,
            ],
            cfg: QuantConfig {
                quant_type: QuantType::from_name(c["quant_type"].as_str().expect("qt"))
                    .expect("qt"),
                blocksize: c["blocksize"].as_u64().expect("bs") as usize,
                double_quant: c["double_quant"].as_bool().expect("dq"),
            },
        })
        .collect()
}

/// Checks one fixture case whose source has element type `T`.
fn check_case<T: QuantElement + bytemuck::Pod>(st: &SafeTensors<'_>, case: &Case) {
    let name = &case.name;
    let get = |suffix: &str| tensor_bytes(st, &format!("{name}.{suffix}"));
    let src: Vec<T> = bytemuck::pod_collect_to_vec(get("source"));
    let [out_f, in_f] = case.shape;
    let want_packed = get("packed");
    let want_absmax = f32s(get("absmax_f32"));

    // The 4-bit codes and fp32 absmax, without double quantization.
    let plain = QuantizedWeight::quantize(
        &src,
        out_f,
        in_f,
        QuantConfig {
            double_quant: false,
            ..case.cfg
        },
    )
    .expect("quantize");
    assert_eq!(plain.packed(), want_packed, "{name}: packed codes");
    assert_same_bits(
        &plain.absmax_f32(),
        &want_absmax,
        &format!("{name}: fp32 absmax"),
    );
    assert_eq!(plain.dtype(), T::DTYPE);

    // Dequantizing bitsandbytes' own state reproduces its output bit for bit.
    let bnb_absmax = if case.cfg.double_quant {
        Absmax::Double(DoubleQuantState {
            codes: get("absmax_codes").to_vec(),
            nested_absmax: f32s(get("nested_absmax")),
            offset: f32s(get("offset"))[0],
            code: f32s(get("nested_code")),
            nested_blocksize: 256,
        })
    } else {
        Absmax::Plain(want_absmax.clone())
    };
    let bnb = QuantizedWeight::from_parts(
        want_packed.to_vec(),
        out_f,
        in_f,
        case.cfg.quant_type,
        case.cfg.blocksize,
        bnb_absmax,
        T::DTYPE,
    )
    .expect("bnb state");
    let want_deq: Vec<T> = bytemuck::pod_collect_to_vec(get("dequant"));
    // FP4 code 8 is a zero whose sign bitsandbytes itself does not agree on: its C++ CPU
    // and CUDA kernels decode -0.0 (as we do), its PyTorch fallback (used on the CPU for an
    // odd last dimension) +0.0. Everything else must match bit for bit.
    let torch_fallback = case.cfg.quant_type == QuantType::Fp4 && in_f % 2 == 1;
    let canon = |v: Vec<T>| -> Vec<T> {
        v.into_iter()
            .map(|x| {
                if torch_fallback && x.to_f32() == 0.0 {
                    T::from_f32(0.0)
                } else {
                    x
                }
            })
            .collect()
    };
    let got_deq = bnb.dequantize_all::<T>();
    assert_same_bits(
        &canon(got_deq),
        &canon(want_deq),
        &format!("{name}: dequantized"),
    );

    if !case.cfg.double_quant {
        return;
    }
    let offset = f32s(get("offset"))[0];
    let nested_code = f32s(get("nested_code"));
    assert_eq!(
        bits(&nested_code),
        bits(&DYNAMIC_MAP),
        "{name}: bnb's nested_quant_map is our dynamic map"
    );
    let want_ref_codes = get("absmax_codes_ref");
    let want_nested = f32s(get("nested_absmax"));

    // With bitsandbytes' offset injected, the double quantization is exact.
    let ours = QuantizedWeight::quantize_with_offset(&src, out_f, in_f, case.cfg, offset)
        .expect("quantize");
    assert_eq!(ours.packed(), want_packed, "{name}: packed codes (DQ)");
    let Absmax::Double(dq) = ours.absmax() else {
        panic!("{name}: expected double quantization")
    };
    assert_eq!(
        dq.codes, want_ref_codes,
        "{name}: absmax codes vs the reference path"
    );
    assert_eq!(
        bits(&dq.nested_absmax),
        bits(&want_nested),
        "{name}: nested absmax"
    );
    assert_eq!(dq.offset.to_bits(), offset.to_bits());

    // Where bitsandbytes' CPU lookup table picked another code, ours is the nearer one
    // (or equally near) and the two are neighbours.
    for (b, (&o, &l)) in dq.codes.iter().zip(get("absmax_codes")).enumerate() {
        if o != l {
            let m = want_nested[b / 256];
            let r = f64::from(want_absmax[b] - offset) / f64::from(m);
            let d = |c: u8| (r - f64::from(DYNAMIC_MAP[c as usize])).abs();
            assert!(
                d(o) <= d(l) && o.abs_diff(l) == 1,
                "{name}: block {b}: ours {o}, bnb LUT {l}, r {r}"
            );
        }
    }

    // Our own mean offset: the f64 mean rounded once to fp32. torch sums in fp32 in an order
    // that depends on the CPU's vector width, so the two may differ by one ulp (spec §3.5).
    let own = QuantizedWeight::quantize(&src, out_f, in_f, case.cfg).expect("quantize");
    let Absmax::Double(own_dq) = own.absmax() else {
        panic!("{name}: expected double quantization")
    };
    let exact_mean =
        want_absmax.iter().map(|&a| f64::from(a)).sum::<f64>() / want_absmax.len() as f64;
    assert_eq!(
        own_dq.offset, exact_mean as f32,
        "{name}: offset is the correctly rounded mean"
    );
    assert!(
        own_dq.offset.to_bits().abs_diff(offset.to_bits()) <= 1,
        "{name}: offset {} vs bnb {offset}",
        own_dq.offset
    );
    if own_dq.offset == offset {
        assert_eq!(own, ours, "{name}: computed-offset weight");
    } else {
        for (b, &a) in want_absmax.iter().enumerate() {
            let rec = own.absmax().get(b);
            assert!(
                (rec - a).abs() <= 0.01 * a.abs() + 1e-6,
                "{name}: block {b}: absmax {rec} vs {a}"
            );
        }
    }
}

#[test]
fn quantize_matches_bitsandbytes_fixtures() {
    let bytes = fixture("quantize.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("quantize.safetensors");
    let cases = cases();
    assert!(
        cases.len() >= 14,
        "fixture manifest lists {} cases",
        cases.len()
    );
    for case in &cases {
        match case.dtype.as_str() {
            "f32" => check_case::<f32>(&st, case),
            "bf16" => check_case::<bf16>(&st, case),
            "f16" => check_case::<f16>(&st, case),
            other => panic!("unknown fixture dtype {other}"),
        }
    }
}

// ---- Linear4bit state dicts ----------------------------------------------------------------

struct LinearFixture {
    file: &'static str,
    prefix: &'static str,
    shape: [usize; 2],
    qt: QuantType,
    dtype: DType,
    dq: bool,
}

const LINEARS: [LinearFixture; 2] = [
    LinearFixture {
        file: "linear4bit_query_key_value.safetensors",
        prefix: "model.layers.0.query_key_value",
        shape: [96, 72],
        qt: QuantType::Nf4,
        dtype: DType::BF16,
        dq: true,
    },
    LinearFixture {
        file: "linear4bit_dense.safetensors",
        prefix: "model.layers.0.dense",
        shape: [40, 51],
        qt: QuantType::Fp4,
        dtype: DType::F16,
        dq: false,
    },
];

fn requantize(st: &SafeTensors<'_>, lf: &LinearFixture, offset: Option<f32>) -> QuantizedWeight {
    let src = tensor_bytes(st, "source.weight");
    let cfg = QuantConfig {
        quant_type: lf.qt,
        blocksize: 64,
        double_quant: lf.dq,
    };
    let [o, i] = lf.shape;
    match (lf.dtype, offset) {
        (DType::BF16, Some(off)) => QuantizedWeight::quantize_with_offset(
            &bytemuck::pod_collect_to_vec::<u8, bf16>(src),
            o,
            i,
            cfg,
            off,
        ),
        (DType::F16, None) => {
            QuantizedWeight::quantize(&bytemuck::pod_collect_to_vec::<u8, f16>(src), o, i, cfg)
        }
        other => panic!("fixture combination {other:?} not covered"),
    }
    .expect("quantize")
}

#[test]
fn linear4bit_state_dicts_parse_and_reserialize_identically() {
    for lf in &LINEARS {
        let bytes = fixture(lf.file);
        let st = SafeTensors::deserialize(&bytes).expect(lf.file);
        let parsed =
            QuantizedWeight::from_safetensors(&st, lf.prefix).expect("parse bnb state dict");
        assert_eq!(parsed.shape(), lf.shape);
        assert_eq!(parsed.quant_type(), lf.qt);
        assert_eq!(parsed.dtype(), lf.dtype);
        assert_eq!(parsed.blocksize(), 64);
        assert_eq!(matches!(parsed.absmax(), Absmax::Double(_)), lf.dq);

        let offset = match parsed.absmax() {
            Absmax::Double(dq) => Some(dq.offset),
            Absmax::Plain(_) => None,
        };
        let ours = requantize(&st, lf, offset);
        assert_eq!(
            ours, parsed,
            "{}: our quantization equals bitsandbytes' state",
            lf.file
        );

        // Every tensor we would write equals the one bitsandbytes wrote (name, dtype, shape, bytes).
        let written = ours.to_state_dict(lf.prefix);
        let fixture_names: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| n.starts_with(lf.prefix))
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            written.len(),
            fixture_names.len(),
            "{}: tensor count",
            lf.file
        );
        for t in &written {
            let theirs = st
                .tensor(&t.name)
                .unwrap_or_else(|_| panic!("{}: bnb has no `{}`", lf.file, t.name));
            assert_eq!(
                format!("{:?}", theirs.dtype()),
                t.dtype.safetensors_name(),
                "{}",
                t.name
            );
            assert_eq!(theirs.shape(), t.shape.as_slice(), "{}", t.name);
            assert_eq!(theirs.data(), t.data.as_slice(), "{}", t.name);
        }

        // Round trip through a safetensors file of our own.
        let file = safetensors::serialize(written.iter().map(|t| (t.name.as_str(), t)), None)
            .expect("serialize");
        let back = QuantizedWeight::from_safetensors(
            &SafeTensors::deserialize(&file).expect("ours"),
            lf.prefix,
        )
        .expect("parse ours");
        assert_eq!(back, ours);
    }
}

#[test]
fn json_matches_bitsandbytes_text() {
    let bytes = fixture("linear4bit_query_key_value.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let w =
        QuantizedWeight::from_safetensors(&st, "model.layers.0.query_key_value").expect("parse");
    let theirs = tensor_bytes(
        &st,
        "model.layers.0.query_key_value.weight.quant_state.bitsandbytes__nf4",
    );
    assert_eq!(w.quant_state_json().as_bytes(), theirs);
    assert!(w
        .quant_state_json()
        .starts_with("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\""));
}

// ---- Clear errors on bad state dicts -------------------------------------------------------

/// Parses the nf4 fixture with tensor `victim` replaced by `replace(t)` (None = removed).
fn parse_modified(
    victim: &str,
    replace: impl Fn(&[u8]) -> Option<(DType, Vec<usize>, Vec<u8>)>,
) -> Nf4Error {
    let bytes = fixture("linear4bit_query_key_value.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let prefix = "model.layers.0.query_key_value";
    let full = format!("{prefix}.weight{victim}");
    let replacement = replace(tensor_bytes(&st, &full));
    QuantizedWeight::from_state_dict(prefix, |name| {
        if name == full {
            return Ok(replacement
                .as_ref()
                .map(|(dtype, shape, data)| engine::nf4::TensorRef {
                    dtype: *dtype,
                    shape: shape.clone(),
                    data: data.as_slice(),
                }));
        }
        Ok(st.tensor(name).ok().map(|v| engine::nf4::TensorRef {
            dtype: match v.dtype() {
                safetensors::Dtype::U8 => DType::U8,
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::BF16 => DType::BF16,
                d => panic!("unexpected {d:?}"),
            },
            shape: v.shape().to_vec(),
            data: v.data(),
        }))
    })
    .expect_err("must fail")
}

#[test]
fn bad_state_dicts_give_errors_naming_the_tensor() {
    let p = "model.layers.0.query_key_value.weight";
    for victim in [
        "",
        ".absmax",
        ".quant_map",
        ".nested_absmax",
        ".nested_quant_map",
    ] {
        let e = parse_modified(victim, |_| None);
        assert_eq!(
            e,
            Nf4Error::MissingTensor(format!("{p}{victim}")),
            "removing `{victim}`"
        );
    }
    let e = parse_modified(".quant_state.bitsandbytes__nf4", |_| None);
    assert!(matches!(e, Nf4Error::QuantStateKey { found: 0, .. }), "{e}");

    let e = parse_modified(".absmax", |d| {
        Some((DType::U8, vec![d.len() - 1], d[1..].to_vec()))
    });
    assert!(
        matches!(&e, Nf4Error::TensorShape { name, .. } if name == &format!("{p}.absmax")),
        "{e}"
    );
    let e = parse_modified(".absmax", |d| {
        Some((DType::F32, vec![d.len() / 4], d[..d.len() / 4 * 4].to_vec()))
    });
    assert!(
        matches!(&e, Nf4Error::TensorDtype { name, .. } if name == &format!("{p}.absmax")),
        "{e}"
    );
    let e = parse_modified("", |d| {
        Some((DType::U8, vec![d.len() - 1, 1], d[1..].to_vec()))
    });
    assert!(
        matches!(&e, Nf4Error::TensorData { name, .. } if name == p),
        "{e}"
    );
    let e = parse_modified(".nested_quant_map", |d| {
        Some((DType::F32, vec![255], d[4..].to_vec()))
    });
    assert!(
        matches!(&e, Nf4Error::TensorShape { name, .. } if name == &format!("{p}.nested_quant_map")),
        "{e}"
    );
    let e = parse_modified(".quant_map", |d| {
        let mut d = d.to_vec();
        d[4] ^= 1;
        Some((DType::F32, vec![16], d))
    });
    assert!(
        matches!(&e, Nf4Error::TensorData { name, .. } if name == &format!("{p}.quant_map")),
        "{e}"
    );
    let e = parse_modified(".quant_state.bitsandbytes__nf4", |d| {
        let s = String::from_utf8(d.to_vec())
            .expect("utf8")
            .replace("\"blocksize\": 64", "\"blocksize\": 48");
        Some((DType::U8, vec![s.len()], s.into_bytes()))
    });
    assert!(
        matches!(&e, Nf4Error::QuantStateJson { reason, .. } if reason.contains("48")),
        "{e}"
    );
    let e = parse_modified(".quant_state.bitsandbytes__nf4", |d| {
        Some((DType::U8, vec![d.len() - 1], d[..d.len() - 1].to_vec()))
    });
    assert!(matches!(e, Nf4Error::QuantStateJson { .. }), "{e}");
    // The Display text names the tensor.
    let e = parse_modified(".nested_absmax", |_| None);
    assert!(e.to_string().contains(&format!("{p}.nested_absmax")), "{e}");
}

// ---- Spec golden vectors (formula inputs) ----------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn spec_vector_a_nf4_no_dq() {
    let x: Vec<f32> = (0..130)
        .map(|i| (((37 * i) % 101) as f32 - 50.0) / 16.0)
        .collect();
    let cfg = QuantConfig {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        double_quant: false,
    };
    let w = QuantizedWeight::quantize(&x, 1, 130, cfg).expect("quantize");
    assert_eq!(w.absmax_f32(), vec![3.125, 3.125, 2.5]);
    assert_eq!(
        hex(w.packed()),
        "04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d17e29f3b05d18e2af4c16d18e3b04c17e29f3b05d17e2af4c06d18e2a04c16e29f3b05d17e29f3c05d18f2"
    );
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(
        QuantizedWeight::quantize(&xb, 1, 130, cfg)
            .expect("bf16")
            .packed(),
        w.packed()
    );
    // Dequantized values are NF4[code] · absmax of their block.
    let deq = w.dequantize_f32();
    for (i, v) in deq.iter().enumerate() {
        let byte = w.packed()[i / 2];
        let code = if i.is_multiple_of(2) {
            byte >> 4
        } else {
            byte & 15
        };
        assert_eq!(*v, NF4[code as usize] * w.absmax_f32()[i / 64]);
    }
}

#[test]
fn spec_vector_c_nf4_dq() {
    let x: Vec<f32> = (0..38400u64)
        .map(|i| (((7919 * i) % 2003) as f32 - 1001.0) * (1 + ((i / 64) % 7)) as f32 / 8192.0)
        .collect();
    let w = QuantizedWeight::quantize(&x, 600, 64, QuantConfig::default()).expect("quantize");
    let plain = QuantizedWeight::quantize(
        &x,
        600,
        64,
        QuantConfig {
            double_quant: false,
            ..QuantConfig::default()
        },
    )
    .expect("quantize");
    // The spec's values are exact in fp32; compared in f64 to keep every digit.
    let first: Vec<f64> = plain.absmax_f32()[..8]
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let want = [
        0.1221923828125,
        0.240966796875,
        0.35888671875,
        0.4853515625,
        0.6109619140625,
        0.728759765625,
        0.8382568359375,
        0.120361328125,
    ];
    assert_eq!(first, want);
    let Absmax::Double(dq) = w.absmax() else {
        panic!("expected DQ")
    };
    assert_eq!(f64::from(dq.offset), 0.483_056_843_280_792_24);
    assert_eq!(
        dq.nested_absmax
            .iter()
            .map(|&v| f64::from(v))
            .collect::<Vec<_>>(),
        vec![0.372_289_836_406_707_76; 3]
    );
    assert_eq!(
        dq.codes[..16],
        [2, 24, 47, 152, 208, 230, 251, 1, 25, 48, 117, 206, 230, 254, 1, 24]
    );
    assert_eq!(w.packed(), plain.packed());
}

#[test]
fn code_tables_equal_bitsandbytes_maps() {
    let nf4 = fixture("linear4bit_query_key_value.safetensors");
    let st = SafeTensors::deserialize(&nf4).expect("fixture");
    let p = "model.layers.0.query_key_value.weight";
    assert_eq!(
        bits(&f32s(tensor_bytes(&st, &format!("{p}.quant_map")))),
        bits(&NF4)
    );
    assert_eq!(
        bits(&f32s(tensor_bytes(&st, &format!("{p}.nested_quant_map")))),
        bits(&DYNAMIC_MAP)
    );
    assert_eq!(bits(&engine::nf4::create_dynamic_map()), bits(&DYNAMIC_MAP));
    let fp4 = fixture("linear4bit_dense.safetensors");
    let st = SafeTensors::deserialize(&fp4).expect("fixture");
    let got = f32s(tensor_bytes(&st, "model.layers.0.dense.weight.quant_map"));
    assert_eq!(bits(&got), bits(&engine::nf4::FP4));
}
