//! The quant state of a 4-bit linear weight as bitsandbytes / transformers serialize it in a
//! state dict (`Linear4bit._save_to_state_dict`, `QuantState.as_dict(packed=True)`).
//!
//! For a module prefix `p` (e.g. `transformer.h.0.self_attention.query_key_value`):
//!
//! | name | dtype | shape |
//! |---|---|---|
//! | `p.weight` | u8 | `[ceil(n/2), 1]` packed codes |
//! | `p.weight.absmax` | f32 `[nb]`, or u8 `[nb]` codes with double quantization | |
//! | `p.weight.quant_map` | f32 | `[16]` |
//! | `p.weight.nested_absmax` | f32 | `[ceil(nb/256)]` (double quantization only) |
//! | `p.weight.nested_quant_map` | f32 | `[256]` (double quantization only) |
//! | `p.weight.quant_state.bitsandbytes__nf4` (or `__fp4`) | u8 | `[len]` UTF-8 JSON |
//!
//! The JSON is Python's `json.dumps` of `quant_type, blocksize, dtype, shape` and, with
//! double quantization, `nested_blocksize, nested_dtype, nested_offset`, in that order.

use std::borrow::Cow;

use serde_json::Value;

use super::error::Nf4Error;
use super::tables::QuantType;
use super::weight::{Absmax, DoubleQuantState, QuantizedWeight};
use crate::DType;

/// One tensor of a serialized state dict: little-endian bytes in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl safetensors::View for &StateTensor {
    fn dtype(&self) -> safetensors::Dtype {
        to_safetensors_dtype(self.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A borrowed tensor read from a checkpoint.
#[derive(Clone, Debug)]
pub struct TensorRef<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

fn to_safetensors_dtype(d: DType) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        DType::F64 => S::F64,
        DType::F32 => S::F32,
        DType::BF16 => S::BF16,
        DType::F16 => S::F16,
        DType::I32 => S::I32,
        DType::U32 => S::U32,
        DType::U8 => S::U8,
    }
}

fn from_safetensors_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F64 => DType::F64,
        S::F32 => DType::F32,
        S::BF16 => DType::BF16,
        S::F16 => DType::F16,
        S::I32 => DType::I32,
        S::U32 => DType::U32,
        S::U8 => DType::U8,
        _ => return None,
    })
}

/// torch's dtype name without the `torch.` prefix, as in the JSON `dtype` field.
fn torch_dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

fn dtype_from_torch_name(name: &str) -> Option<DType> {
    match name {
        "bfloat16" => Some(DType::BF16),
        "float16" => Some(DType::F16),
        "float32" => Some(DType::F32),
        _ => None,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Python's `repr(float)` (what `json.dumps` writes): the shortest digits that round-trip,
/// positional for exponents in [-4, 16), otherwise `d.ddde±XX`.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    // `{:e}` prints the shortest round-trip digits, e.g. "-1.2345e-5".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{sign}{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let frac = if digits.len() > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}{frac}e{esign}{:02}", &digits[..1], exp.abs())
    }
}

impl QuantizedWeight {
    /// The packed quant-state JSON, byte-identical to bitsandbytes' `json.dumps`.
    pub fn quant_state_json(&self) -> String {
        let [out_f, in_f] = self.shape();
        let mut s = format!(
            "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{out_f}, {in_f}]",
            self.quant_type().name(),
            self.blocksize(),
            torch_dtype_name(self.dtype()),
        );
        if let Absmax::Double(dq) = self.absmax() {
            s.push_str(&format!(
                ", \"nested_blocksize\": {}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                dq.nested_blocksize,
                python_float_repr(f64::from(dq.offset)),
            ));
        }
        s.push('}');
        s
    }

    /// The tensors bitsandbytes writes for this weight under module prefix `prefix`
    /// (see the module docs). Pass them to `safetensors::serialize` as `(&t.name, &t)`.
    pub fn to_state_dict(&self, prefix: &str) -> Vec<StateTensor> {
        let w = format!("{prefix}.weight");
        let t = |suffix: &str, dtype: DType, shape: Vec<usize>, data: Vec<u8>| StateTensor {
            name: format!("{w}{suffix}"),
            dtype,
            shape,
            data,
        };
        let mut out = vec![t(
            "",
            DType::U8,
            vec![self.packed().len(), 1],
            self.packed().to_vec(),
        )];
        let nb = self.num_blocks();
        match self.absmax() {
            Absmax::Plain(v) => out.push(t(".absmax", DType::F32, vec![nb], f32_bytes(v))),
            Absmax::Double(dq) => out.push(t(".absmax", DType::U8, vec![nb], dq.codes.clone())),
        }
        out.push(t(
            ".quant_map",
            DType::F32,
            vec![16],
            f32_bytes(self.quant_type().table()),
        ));
        if let Absmax::Double(dq) = self.absmax() {
            out.push(t(
                ".nested_absmax",
                DType::F32,
                vec![dq.nested_absmax.len()],
                f32_bytes(&dq.nested_absmax),
            ));
            out.push(t(
                ".nested_quant_map",
                DType::F32,
                vec![dq.code.len()],
                f32_bytes(&dq.code),
            ));
        }
        let json = self.quant_state_json().into_bytes();
        let key = format!(".quant_state.bitsandbytes__{}", self.quant_type().name());
        out.push(t(&key, DType::U8, vec![json.len()], json));
        out
    }

    /// Reads the weight of module `prefix` from a safetensors file.
    pub fn from_safetensors(
        st: &safetensors::SafeTensors<'_>,
        prefix: &str,
    ) -> Result<Self, Nf4Error> {
        Self::from_state_dict(prefix, |name| match st.tensor(name) {
            Ok(view) => {
                let dtype =
                    from_safetensors_dtype(view.dtype()).ok_or_else(|| Nf4Error::TensorData {
                        name: name.to_string(),
                        reason: format!("unsupported safetensors dtype {:?}", view.dtype()),
                    })?;
                Ok(Some(TensorRef {
                    dtype,
                    shape: view.shape().to_vec(),
                    data: view.data(),
                }))
            }
            Err(_) => Ok(None),
        })
    }

    /// Parses the weight of module `prefix` from state-dict tensors; `get(name)` returns the
    /// tensor of that name, `Ok(None)` if absent. Follows bitsandbytes' loading recipe:
    /// the JSON gives blocksize, shape, dtype and the nested fields; the packed weight may
    /// have any storage dtype (its bytes are used); `quant_map` must equal the built-in
    /// table; the stored `nested_quant_map` is the one used for dequantization.
    pub fn from_state_dict<'a, F>(prefix: &str, get: F) -> Result<Self, Nf4Error>
    where
        F: Fn(&str) -> Result<Option<TensorRef<'a>>, Nf4Error>,
    {
        let w = format!("{prefix}.weight");
        let require =
            |name: &str| get(name)?.ok_or_else(|| Nf4Error::MissingTensor(name.to_string()));

        // The quant state entry: exactly one of the nf4 / fp4 keys.
        let mut found = Vec::new();
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            let name = format!("{w}.quant_state.bitsandbytes__{}", qt.name());
            if let Some(t) = get(&name)? {
                found.push((qt, name, t));
            }
        }
        if found.len() != 1 {
            return Err(Nf4Error::QuantStateKey {
                prefix: prefix.to_string(),
                found: found.len(),
            });
        }
        let (key_qt, state_name, state) = found.remove(0);
        expect_dtype(&state_name, &state, DType::U8)?;
        let json = JsonState::parse(&state_name, state.data)?;
        if json.quant_type != key_qt {
            return Err(json_err(
                &state_name,
                format!(
                    "quant_type \"{}\" disagrees with the key",
                    json.quant_type.name()
                ),
            ));
        }
        let [out_f, in_f] = json.shape;
        let n = out_f
            .checked_mul(in_f)
            .ok_or_else(|| json_err(&state_name, format!("shape [{out_f}, {in_f}] overflows")))?;
        let nb = n.div_ceil(json.blocksize);

        let weight = require(&w)?;
        if weight.data.len() != n.div_ceil(2) {
            return Err(Nf4Error::TensorData {
                name: w.clone(),
                reason: format!(
                    "{} bytes of packed codes, but shape [{out_f}, {in_f}] needs {}",
                    weight.data.len(),
                    n.div_ceil(2)
                ),
            });
        }

        let map_name = format!("{w}.quant_map");
        let quant_map = read_f32(&map_name, &require(&map_name)?, 16)?;
        // Compared by value: bitsandbytes' own tables disagree on the sign of FP4 code 8.
        if quant_map
            .iter()
            .zip(json.quant_type.table())
            .any(|(a, b)| a != b)
        {
            return Err(Nf4Error::TensorData {
                name: map_name,
                reason: format!("differs from the {} code table", json.quant_type.name()),
            });
        }

        let absmax_name = format!("{w}.absmax");
        let absmax_t = require(&absmax_name)?;
        let nested_name = format!("{w}.nested_absmax");
        let absmax = match (&json.nested, get(&nested_name)?) {
            (Some(nested), Some(nested_t)) => {
                expect_dtype(&absmax_name, &absmax_t, DType::U8)?;
                expect_shape(&absmax_name, &absmax_t, &[nb])?;
                if nested.blocksize == 0 || nested.blocksize % 2 == 1 {
                    return Err(json_err(
                        &state_name,
                        format!(
                            "nested_blocksize {} is not a positive even number",
                            nested.blocksize
                        ),
                    ));
                }
                let nested_absmax =
                    read_f32(&nested_name, &nested_t, nb.div_ceil(nested.blocksize))?;
                let code_name = format!("{w}.nested_quant_map");
                let code = read_f32(&code_name, &require(&code_name)?, 256)?;
                Absmax::Double(DoubleQuantState {
                    codes: absmax_t.data.to_vec(),
                    nested_absmax,
                    offset: nested.offset,
                    code,
                    nested_blocksize: nested.blocksize,
                })
            }
            (None, None) => Absmax::Plain(read_f32(&absmax_name, &absmax_t, nb)?),
            (Some(_), None) => return Err(Nf4Error::MissingTensor(nested_name)),
            (None, Some(_)) => {
                return Err(json_err(
                    &state_name,
                    format!("`{nested_name}` is present but the JSON has no nested_offset"),
                ))
            }
        };
        QuantizedWeight::from_parts(
            weight.data.to_vec(),
            out_f,
            in_f,
            json.quant_type,
            json.blocksize,
            absmax,
            json.dtype,
        )
    }
}

fn json_err(name: &str, reason: String) -> Nf4Error {
    Nf4Error::QuantStateJson {
        name: name.to_string(),
        reason,
    }
}

fn expect_dtype(name: &str, t: &TensorRef<'_>, dtype: DType) -> Result<(), Nf4Error> {
    if t.dtype == dtype {
        Ok(())
    } else {
        Err(Nf4Error::TensorDtype {
            name: name.to_string(),
            expected: dtype,
            found: t.dtype,
        })
    }
}

fn expect_shape(name: &str, t: &TensorRef<'_>, shape: &[usize]) -> Result<(), Nf4Error> {
    if t.shape == shape {
        Ok(())
    } else {
        Err(Nf4Error::TensorShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            found: t.shape.clone(),
        })
    }
}

/// Reads an fp32 vector of `len` elements (shape `[len]`).
fn read_f32(name: &str, t: &TensorRef<'_>, len: usize) -> Result<Vec<f32>, Nf4Error> {
    expect_dtype(name, t, DType::F32)?;
    expect_shape(name, t, &[len])?;
    if t.data.len() != 4 * len {
        return Err(Nf4Error::TensorData {
            name: name.to_string(),
            reason: format!("{} bytes for {len} f32 values", t.data.len()),
        });
    }
    Ok(t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

struct NestedJson {
    blocksize: usize,
    offset: f32,
}

/// The fields of the packed quant-state JSON.
struct JsonState {
    quant_type: QuantType,
    blocksize: usize,
    dtype: DType,
    shape: [usize; 2],
    nested: Option<NestedJson>,
}

impl JsonState {
    fn parse(name: &str, bytes: &[u8]) -> Result<Self, Nf4Error> {
        let err = |reason: String| json_err(name, reason);
        let v: Value = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        let field = |key: &str| {
            v.get(key)
                .ok_or_else(|| err(format!("missing field `{key}`")))
        };
        let uint = |key: &str| -> Result<usize, Nf4Error> {
            field(key)?
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| err(format!("field `{key}` is not a non-negative integer")))
        };
        let string = |key: &str| -> Result<&str, Nf4Error> {
            field(key)?
                .as_str()
                .ok_or_else(|| err(format!("field `{key}` is not a string")))
        };
        let qt_name = string("quant_type")?;
        let quant_type = QuantType::from_name(qt_name)
            .ok_or_else(|| err(format!("quant_type \"{qt_name}\" is not nf4 or fp4")))?;
        let blocksize = uint("blocksize")?;
        super::weight::check_blocksize(blocksize).map_err(|e| err(e.to_string()))?;
        let dtype_name = string("dtype")?;
        let dtype = dtype_from_torch_name(dtype_name).ok_or_else(|| {
            err(format!(
                "dtype \"{dtype_name}\" is not bfloat16, float16 or float32"
            ))
        })?;
        let dims: Vec<usize> = field("shape")?
            .as_array()
            .ok_or_else(|| err("field `shape` is not an array".to_string()))?
            .iter()
            .map(|d| d.as_u64().and_then(|x| usize::try_from(x).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| err("field `shape` has a non-integer dimension".to_string()))?;
        let shape = match dims.as_slice() {
            [o, i] => [*o, *i],
            _ => {
                return Err(err(format!(
                    "shape {dims:?} is not a 2-D linear weight shape"
                )))
            }
        };
        let nested = match v.get("nested_offset") {
            None => None,
            Some(off) => {
                let offset = off
                    .as_f64()
                    .ok_or_else(|| err("field `nested_offset` is not a number".to_string()))?;
                let nested_dtype = string("nested_dtype")?;
                if nested_dtype != "float32" {
                    return Err(err(format!(
                        "nested_dtype \"{nested_dtype}\" is not float32"
                    )));
                }
                // The offset was written from an fp32 value, so this conversion is exact.
                Some(NestedJson {
                    blocksize: uint("nested_blocksize")?,
                    offset: offset as f32,
                })
            }
        };
        Ok(JsonState {
            quant_type,
            blocksize,
            dtype,
            shape,
            nested,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::python_float_repr as r;

    #[test]
    fn python_repr_matches_known_strings() {
        assert_eq!(r(0.01538532879203558), "0.01538532879203558");
        assert_eq!(r(1e-5), "1e-05");
        assert_eq!(r(1.5e-5), "1.5e-05");
        assert_eq!(r(0.0001), "0.0001");
        assert_eq!(r(12.499361038208008), "12.499361038208008");
        assert_eq!(r(3.0), "3.0");
        assert_eq!(r(-2.5), "-2.5");
        assert_eq!(r(1e16), "1e+16");
        assert_eq!(r(1234567890123456.0), "1234567890123456.0");
        assert_eq!(r(1.2345e20), "1.2345e+20");
        assert_eq!(r(100.0), "100.0");
        assert_eq!(r(0.0), "0.0");
        assert_eq!(r(f64::from(1e-38f32)), "9.999999350456404e-39");
    }
}
