//! `LoraConfig` as PEFT reads and writes it in `adapter_config.json`.
//!
//! Writing produces every field PEFT 0.21 writes (sorted keys, indent 2), with PEFT's defaults
//! for the fields this crate does not use; fields read from a file that this crate does not
//! model are kept and written back unchanged. Reading refuses (naming the field) every setting
//! that would change the math this crate implements: DoRA, LoRA bias, biases trained,
//! fan_in_fan_out, rank/alpha patterns, modules_to_save, regex target_modules, and so on.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::checkpoint::{linear_modules, LinearModule};
use crate::config::FalconConfig;
use crate::error::{read_json, FalconError, Result};

/// The PEFT release whose adapter_config.json layout [`LoraConfig::to_json_string`] follows.
pub const PEFT_FORMAT_VERSION: &str = "0.21.2";

/// `target_modules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetModules {
    /// Module names; a module matches if its path equals a name or ends with `.name`.
    Names(Vec<String>),
    /// `"all-linear"`: every linear layer except the output layer (lm_head).
    AllLinear,
}

impl TargetModules {
    /// Parses a command-line value: `all-linear`, or comma-separated module names (blank
    /// entries and surrounding spaces ignored).
    pub fn from_flag(s: &str) -> Self {
        if s.trim() == "all-linear" {
            TargetModules::AllLinear
        } else {
            TargetModules::Names(
                s.split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
            )
        }
    }
}

/// `init_lora_weights`.
#[derive(Clone, Debug, PartialEq)]
pub enum InitLoraWeights {
    /// `true`: A ~ kaiming-uniform(a = √5) = U(−1/√in, 1/√in), B = 0.
    Default,
    /// `false`: A and B both random (PEFT: for tests only).
    Random,
    /// `"gaussian"`: A ~ N(0, (1/r)²), B = 0.
    Gaussian,
    /// Any other method (pissa, olora, loftq, …), kept as written.
    Other(Value),
}

/// The LoRA settings of an adapter (PEFT's `LoraConfig`, the fields that matter here).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    /// Dropout probability on the input of lora_A.
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    /// Module names excluded from targeting (same matching as `target_modules`).
    pub exclude_modules: Vec<String>,
    /// Only adapt these decoder layers (None: all).
    pub layers_to_transform: Option<Vec<usize>>,
    /// scaling = alpha/√r instead of alpha/r.
    pub use_rslora: bool,
    pub init_lora_weights: InitLoraWeights,
    pub task_type: Option<String>,
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
    pub inference_mode: bool,
    /// Fields read from a file that are not modelled above, written back unchanged.
    pub extra: BTreeMap<String, Value>,
}

impl LoraConfig {
    /// A config with PEFT's defaults for everything but the given fields, for a causal LM.
    pub fn new(
        r: usize,
        lora_alpha: f64,
        lora_dropout: f64,
        target_modules: TargetModules,
    ) -> Self {
        LoraConfig {
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            exclude_modules: Vec::new(),
            layers_to_transform: None,
            use_rslora: false,
            init_lora_weights: InitLoraWeights::Default,
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: None,
            revision: None,
            inference_mode: true,
            extra: BTreeMap::new(),
        }
    }

    /// The multiplier of the LoRA branch: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Reads an `adapter_config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_value(&read_json(path)?, path)
    }

    /// Parses adapter_config.json text; `path` is only used in messages.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let v: Value = serde_json::from_str(text).map_err(|source| FalconError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(&v, path)
    }

    /// Parses and validates a decoded adapter_config.json.
    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| adapter_err(path, "adapter_config.json must be a JSON object"))?;
        let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
        let bad = |name: &str, msg: String| adapter_err(path, format!("field `{name}` {msg}"));

        let peft_type = field("peft_type").and_then(Value::as_str).unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(
                "peft_type",
                format!("is `{peft_type}`; only LORA adapters are supported"),
            ));
        }
        let r = field("r")
            .and_then(Value::as_u64)
            .and_then(|r| usize::try_from(r).ok())
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r", "must be a positive integer".into()))?;
        let lora_alpha = match field("lora_alpha") {
            None => 8.0,
            Some(a) => a
                .as_f64()
                .ok_or_else(|| bad("lora_alpha", format!("is {a}, expected a number")))?,
        };
        let lora_dropout = match field("lora_dropout") {
            None => 0.0,
            Some(p) => p
                .as_f64()
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| bad("lora_dropout", format!("is {p}, expected 0 <= p < 1")))?,
        };
        let target_modules = match field("target_modules") {
            None => TargetModules::Names(vec!["query_key_value".into()]),
            Some(Value::String(s)) if s == "all-linear" => TargetModules::AllLinear,
            Some(Value::String(s)) => {
                return Err(bad(
                    "target_modules",
                    format!("is the regular expression `{s}`; only a list of module names or \"all-linear\" is supported"),
                ))
            }
            Some(Value::Array(items)) => TargetModules::Names(string_list(items).ok_or_else(|| bad("target_modules", "must be a list of strings".into()))?),
            Some(other) => return Err(bad("target_modules", format!("is {other}, expected a list"))),
        };
        let exclude_modules = match field("exclude_modules") {
            None => Vec::new(),
            Some(Value::Array(items)) => string_list(items)
                .ok_or_else(|| bad("exclude_modules", "must be a list of strings".into()))?,
            Some(other) => {
                return Err(bad(
                    "exclude_modules",
                    format!("is {other}; only a list of module names is supported"),
                ))
            }
        };
        let layers_to_transform = match field("layers_to_transform") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        bad(
                            "layers_to_transform",
                            "must be a list of layer indices".into(),
                        )
                    })?,
            ),
            Some(x) => Some(vec![x
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| {
                    bad(
                        "layers_to_transform",
                        format!("is {x}, expected layer indices"),
                    )
                })?]),
        };
        let flag = |name: &str, default: bool| -> Result<bool> {
            match field(name) {
                None => Ok(default),
                Some(b) => b
                    .as_bool()
                    .ok_or_else(|| bad(name, format!("is {b}, expected true or false"))),
            }
        };
        let use_rslora = flag("use_rslora", false)?;
        let inference_mode = flag("inference_mode", true)?;

        // Settings that change the math or the saved tensors: refuse rather than ignore.
        let bias = field("bias").and_then(Value::as_str).unwrap_or("none");
        if bias != "none" {
            return Err(bad(
                "bias",
                format!("is `{bias}`; only \"none\" (no trained biases) is supported"),
            ));
        }
        for (name, what) in [
            ("use_dora", "DoRA"),
            ("lora_bias", "a bias on lora_B"),
            ("fan_in_fan_out", "transposed (Conv1D) weights"),
            ("use_qalora", "QA-LoRA"),
        ] {
            if flag(name, false)? {
                return Err(bad(name, format!("is true; {what} is not supported")));
            }
        }
        for name in ["rank_pattern", "alpha_pattern"] {
            if let Some(p) = field(name) {
                if p.as_object().is_none_or(|m| !m.is_empty()) {
                    return Err(bad(
                        name,
                        "is not empty; per-module ranks/alphas are not supported".into(),
                    ));
                }
            }
        }
        for name in [
            "modules_to_save",
            "layer_replication",
            "trainable_token_indices",
            "target_parameters",
            "alora_invocation_tokens",
        ] {
            if let Some(v) = field(name) {
                let empty = v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(|m| m.is_empty());
                if !empty {
                    return Err(bad(name, format!("is {v}; not supported")));
                }
            }
        }
        let task_type = field("task_type")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(t) = &task_type {
            if t != "CAUSAL_LM" {
                return Err(bad(
                    "task_type",
                    format!("is `{t}`; only CAUSAL_LM is supported"),
                ));
            }
        }
        let init_lora_weights = match field("init_lora_weights") {
            None | Some(Value::Bool(true)) => InitLoraWeights::Default,
            Some(Value::Bool(false)) => InitLoraWeights::Random,
            Some(Value::String(s)) if s == "gaussian" => InitLoraWeights::Gaussian,
            Some(other) => InitLoraWeights::Other(other.clone()),
        };
        let string = |name: &str| field(name).and_then(Value::as_str).map(str::to_string);

        const MODELLED: [&str; 13] = [
            "r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "exclude_modules",
            "layers_to_transform",
            "use_rslora",
            "init_lora_weights",
            "task_type",
            "base_model_name_or_path",
            "revision",
            "inference_mode",
            "peft_type",
        ];
        let extra = obj
            .iter()
            .filter(|(k, _)| !MODELLED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(LoraConfig {
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            exclude_modules,
            layers_to_transform,
            use_rslora,
            init_lora_weights,
            task_type,
            base_model_name_or_path: string("base_model_name_or_path"),
            revision: string("revision"),
            inference_mode,
            extra,
        })
    }

    /// The JSON object PEFT 0.21 writes for this config (all of its fields, sorted keys).
    pub fn to_json(&self) -> Value {
        let mut m: BTreeMap<String, Value> = peft_defaults();
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        let number = |x: f64| -> Value {
            // PEFT writes what the user passed; an integral alpha is an int there (16, not 16.0).
            if x.fract() == 0.0 && x.abs() < 1e15 {
                json!(x as i64)
            } else {
                json!(x)
            }
        };
        m.insert("r".into(), json!(self.r));
        m.insert("lora_alpha".into(), number(self.lora_alpha));
        m.insert("lora_dropout".into(), json!(self.lora_dropout));
        m.insert(
            "target_modules".into(),
            match &self.target_modules {
                TargetModules::AllLinear => json!("all-linear"),
                TargetModules::Names(names) => json!(names),
            },
        );
        m.insert(
            "exclude_modules".into(),
            if self.exclude_modules.is_empty() {
                Value::Null
            } else {
                json!(self.exclude_modules)
            },
        );
        m.insert(
            "layers_to_transform".into(),
            json!(self.layers_to_transform),
        );
        m.insert("use_rslora".into(), json!(self.use_rslora));
        m.insert(
            "init_lora_weights".into(),
            match &self.init_lora_weights {
                InitLoraWeights::Default => json!(true),
                InitLoraWeights::Random => json!(false),
                InitLoraWeights::Gaussian => json!("gaussian"),
                InitLoraWeights::Other(v) => v.clone(),
            },
        );
        m.insert("task_type".into(), json!(self.task_type));
        m.insert(
            "base_model_name_or_path".into(),
            json!(self.base_model_name_or_path),
        );
        m.insert("revision".into(), json!(self.revision));
        m.insert("inference_mode".into(), json!(self.inference_mode));
        m.insert("peft_type".into(), json!("LORA"));
        // BTreeMap -> sorted keys, whatever map type serde_json is built with.
        Value::Object(m.into_iter().collect())
    }

    /// adapter_config.json text as PEFT writes it: indent 2, sorted keys.
    pub fn to_json_string(&self) -> String {
        let sorted = sort_keys(&self.to_json());
        serde_json::to_string_pretty(&sorted).unwrap_or_default()
    }

    /// Whether a module is adapted, as PEFT decides it: name match on the module path (equal,
    /// or ending in `.name`; all-linear = every decoder linear), then `layers_to_transform`,
    /// then `exclude_modules`.
    pub fn matches(&self, module: &LinearModule) -> bool {
        let name_match = |names: &[String]| {
            names
                .iter()
                .any(|t| module.name == *t || module.name.ends_with(&format!(".{t}")))
        };
        let targeted = match &self.target_modules {
            TargetModules::AllLinear => true,
            TargetModules::Names(names) => name_match(names),
        };
        let in_layers = self
            .layers_to_transform
            .as_ref()
            .is_none_or(|layers| layers.contains(&module.layer));
        targeted && in_layers && !name_match(&self.exclude_modules)
    }

    /// The adapted modules of a model, in model order. Errors when a name targets lm_head
    /// (tied to the embedding; not supported) or when nothing matches (PEFT raises too).
    pub fn targets(&self, model: &FalconConfig, path: &Path) -> Result<Vec<LinearModule>> {
        if let TargetModules::Names(names) = &self.target_modules {
            if let Some(t) = names.iter().find(|t| t.as_str() == "lm_head") {
                return Err(adapter_err(path, format!("target_modules names `{t}` (lm_head): LoRA on the tied output layer is not supported")));
            }
        }
        let targets: Vec<LinearModule> = linear_modules(model)
            .into_iter()
            .filter(|m| self.matches(m))
            .collect();
        if targets.is_empty() {
            return Err(adapter_err(
                path,
                format!("target_modules {:?} match no module of the model (Falcon linears: query_key_value, dense, dense_h_to_4h, dense_4h_to_h)", self.target_modules),
            ));
        }
        Ok(targets)
    }
}

fn string_list(items: &[Value]) -> Option<Vec<String>> {
    items
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

pub(crate) fn adapter_err(path: &Path, message: impl Into<String>) -> FalconError {
    FalconError::Adapter {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn sort_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, sort_keys(v))).collect();
            let mut out = serde_json::Map::new();
            for (k, v) in sorted {
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}

/// Every field PEFT 0.21 writes into adapter_config.json, with its default value.
fn peft_defaults() -> BTreeMap<String, Value> {
    let pairs: [(&str, Value); 41] = [
        ("alora_invocation_tokens", Value::Null),
        ("alpha_pattern", json!({})),
        ("arrow_config", Value::Null),
        ("auto_mapping", Value::Null),
        ("base_model_name_or_path", Value::Null),
        ("bias", json!("none")),
        ("corda_config", Value::Null),
        ("ensure_weight_tying", json!(false)),
        ("eva_config", Value::Null),
        ("exclude_modules", Value::Null),
        ("fan_in_fan_out", json!(false)),
        ("inference_mode", json!(true)),
        ("init_lora_weights", json!(true)),
        ("kasa_config", Value::Null),
        ("layer_replication", Value::Null),
        ("layers_pattern", Value::Null),
        ("layers_to_transform", Value::Null),
        ("loftq_config", json!({})),
        ("lora_alpha", json!(8)),
        ("lora_bias", json!(false)),
        ("lora_dropout", json!(0.0)),
        ("lora_ga_config", Value::Null),
        ("megatron_config", Value::Null),
        ("megatron_core", json!("megatron.core")),
        ("modules_to_save", Value::Null),
        ("monteclora_config", Value::Null),
        ("peft_type", json!("LORA")),
        ("peft_version", json!(PEFT_FORMAT_VERSION)),
        ("qalora_group_size", json!(16)),
        ("r", json!(8)),
        ("rank_pattern", json!({})),
        ("revision", Value::Null),
        ("target_modules", Value::Null),
        ("target_parameters", Value::Null),
        ("task_type", Value::Null),
        ("trainable_token_indices", Value::Null),
        ("use_bdlora", Value::Null),
        ("use_dora", json!(false)),
        ("use_qalora", json!(false)),
        ("use_rslora", json!(false)),
        ("velora_config", Value::Null),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
