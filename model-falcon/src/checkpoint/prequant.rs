//! Detection and grouping of bitsandbytes pre-quantized 4-bit weights.
//!
//! bitsandbytes serializes one `Linear4bit` weight of module `m` as (docs/nf4-spec.md §4.1):
//!
//! | key | content |
//! |---|---|
//! | `m.weight` | packed 4-bit codes, `ceil(out·in/2)` bytes (uint8 `[n/2, 1]` by default) |
//! | `m.weight.absmax` | per-block absmax: uint8 codes with double quantization, else f32 |
//! | `m.weight.quant_map` | f32 `[16]` code table |
//! | `m.weight.nested_absmax` | f32, double quantization only |
//! | `m.weight.nested_quant_map` | f32 `[256]`, double quantization only |
//! | `m.weight.quant_state.bitsandbytes__nf4` (or `__fp4`) | uint8 UTF-8 JSON of the rest of the state |
//!
//! This module only finds and checks these groups; decoding them is the NF4 format's job.

use std::collections::{BTreeMap, BTreeSet};

use super::manifest::LinearModule;
use super::safetensors_file::{StDType, TensorInfo};
use super::store::TensorStore;
use crate::error::{FalconError, Result};

const QUANT_STATE_INFIX: &str = ".weight.quant_state.bitsandbytes__";

/// The tensor names of one pre-quantized linear weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bnb4bitModule {
    /// Module path, e.g. `transformer.h.0.self_attention.query_key_value`.
    pub module: String,
    /// `"nf4"` or `"fp4"`, from the quant_state key suffix.
    pub quant_type: String,
    /// `[out_features, in_features]` of the original weight (from the config).
    pub shape: [usize; 2],
    pub weight: String,
    pub absmax: String,
    pub quant_map: String,
    pub nested_absmax: Option<String>,
    pub nested_quant_map: Option<String>,
    pub quant_state: String,
}

impl Bnb4bitModule {
    /// Double quantization (`compress_statistics`) was used.
    pub fn is_double_quant(&self) -> bool {
        self.nested_absmax.is_some()
    }

    /// All component tensor names.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut v = vec![
            self.weight.as_str(),
            self.absmax.as_str(),
            self.quant_map.as_str(),
            self.quant_state.as_str(),
        ];
        v.extend(self.nested_absmax.as_deref());
        v.extend(self.nested_quant_map.as_deref());
        v
    }
}

/// Stored keys that mark a bitsandbytes 4-bit weight, by module.
pub(crate) fn find_quant_states(store: &TensorStore) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for t in store.tensors() {
        if let Some(pos) = t.name.find(QUANT_STATE_INFIX) {
            let module = t.name[..pos].to_string();
            let quant_type = t.name[pos + QUANT_STATE_INFIX.len()..].to_string();
            out.insert(module, (t.name.clone(), quant_type));
        }
    }
    out
}

/// Checks the component tensors of every quantized module and returns the groups.
/// `consumed` receives every component name.
pub(crate) fn group_modules(
    store: &TensorStore,
    linears: &[LinearModule],
    consumed: &mut BTreeSet<String>,
) -> Result<BTreeMap<String, Bnb4bitModule>> {
    let by_name: BTreeMap<&str, &LinearModule> =
        linears.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut groups = BTreeMap::new();
    for (module, (state_key, quant_type)) in find_quant_states(store) {
        let state_info = store
            .get(&state_key)
            .ok_or_else(|| FalconError::UnknownTensor(state_key.clone()))?;
        let Some(linear) = by_name.get(module.as_str()) else {
            return Err(FalconError::UnexpectedTensor {
                path: state_info.file.clone(),
                tensor: state_key,
                model: "Falcon 4-bit (no such linear module)".into(),
            });
        };
        if quant_type != "nf4" && quant_type != "fp4" {
            return Err(FalconError::Header {
                path: state_info.file.clone(),
                message: format!("tensor `{state_key}`: unknown bitsandbytes quant type `{quant_type}`, expected nf4 or fp4"),
            });
        }
        expect_dtype(state_info, &[StDType::U8])?;
        let need = |suffix: &str| -> Result<&TensorInfo> {
            let name = format!("{module}.weight{suffix}");
            store.get(&name).ok_or_else(|| FalconError::Header {
                path: state_info.file.clone(),
                message: format!(
                    "module `{module}` is 4-bit quantized but its component `{name}` is missing"
                ),
            })
        };
        let weight = need("")?;
        let absmax = need(".absmax")?;
        let quant_map = need(".quant_map")?;
        let nested_absmax = store.get(&format!("{module}.weight.nested_absmax"));
        let nested_quant_map = store.get(&format!("{module}.weight.nested_quant_map"));
        if nested_absmax.is_some() != nested_quant_map.is_some() {
            let present = nested_absmax
                .or(nested_quant_map)
                .map(|t| t.file.clone())
                .unwrap_or_default();
            return Err(FalconError::Header {
                path: present,
                message: format!("module `{module}`: double quantization needs both weight.nested_absmax and weight.nested_quant_map"),
            });
        }
        // Packed storage: two 4-bit codes per byte, whatever the storage dtype.
        let numel = linear.out_features * linear.in_features;
        let packed_bytes = numel.div_ceil(2);
        if weight.size_in_bytes() != packed_bytes {
            return Err(FalconError::ShapeMismatch {
                path: weight.file.clone(),
                tensor: weight.name.clone(),
                found: weight.shape.clone(),
                expected: vec![packed_bytes, 1],
            });
        }
        expect_dtype(quant_map, &[StDType::F32])?;
        if let Some(t) = nested_absmax {
            expect_dtype(t, &[StDType::F32])?;
            expect_dtype(absmax, &[StDType::U8])?;
        } else {
            expect_dtype(absmax, &[StDType::F32])?;
        }
        let group = Bnb4bitModule {
            module: module.clone(),
            quant_type,
            shape: [linear.out_features, linear.in_features],
            weight: weight.name.clone(),
            absmax: absmax.name.clone(),
            quant_map: quant_map.name.clone(),
            nested_absmax: nested_absmax.map(|t| t.name.clone()),
            nested_quant_map: nested_quant_map.map(|t| t.name.clone()),
            quant_state: state_key,
        };
        consumed.extend(group.tensor_names().into_iter().map(str::to_string));
        groups.insert(module, group);
    }
    Ok(groups)
}

fn expect_dtype(info: &TensorInfo, allowed: &[StDType]) -> Result<()> {
    if allowed.contains(&info.dtype) {
        return Ok(());
    }
    Err(FalconError::WrongDType {
        path: info.file.clone(),
        tensor: info.name.clone(),
        found: info.dtype.to_string(),
        expected: allowed
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(" or "),
    })
}
