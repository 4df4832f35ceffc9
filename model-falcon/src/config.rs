//! `FalconConfig`: the architecture of a Falcon checkpoint, read from its `config.json`.
//!
//! Semantics follow transformers' `FalconConfig` (field names, legacy aliases, defaults) and
//! the layer construction in `modeling_falcon.py`:
//!
//! * 7B layout (`new_decoder_architecture = false`, `multi_query = true`): one K and one V head
//!   shared by all query heads, fused QKV columns `[q_0 … q_{n-1} | k | v]`, one
//!   `input_layernorm` feeding attention and MLP in parallel.
//! * new decoder architecture (40B/180B): `g = num_kv_heads` groups of `n/g` query heads plus
//!   one K and one V head each, fused QKV columns `[(q × n/g, k, v) × g]`; two LayerNorms
//!   (`ln_attn`, `ln_mlp`) unless `num_ln_in_parallel_attn = 1`.
//!
//! ALiBi, the sequential block (falcon-rw) and the per-head interleaved QKV of
//! `multi_query = false` are refused with an error naming the field.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{read_json, FalconError, Result};

/// How query heads share keys and values, which also fixes the fused QKV column layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionLayout {
    /// Falcon-7B: one K head and one V head for all query heads.
    /// QKV output columns: `[q (n·d) | k (d) | v (d)]`, `n + 2` heads of size `d`.
    MultiQuery,
    /// new_decoder_architecture: `num_kv_heads` groups; group `j` serves query heads
    /// `j·(n/g) … (j+1)·(n/g) − 1`. QKV output columns: `g` blocks of `(n/g + 2)·d`, each block
    /// `[q × n/g | k | v]`.
    Grouped { num_kv_heads: usize },
}

/// Which LayerNorms a decoder layer has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormLayout {
    /// `input_layernorm` feeds attention and MLP: `out = x + Attn(LN(x)) + MLP(LN(x))`.
    Single,
    /// `ln_attn` and `ln_mlp`: `out = x + Attn(LN_attn(x)) + MLP(LN_mlp(x))`.
    Separate,
}

/// 4-bit quantization settings of a bitsandbytes pre-quantized checkpoint
/// (`quantization_config` in config.json).
#[derive(Clone, Debug, PartialEq)]
pub struct BnbQuantizationConfig {
    /// `bnb_4bit_quant_type`: `"nf4"` or `"fp4"`.
    pub quant_type: String,
    /// `bnb_4bit_use_double_quant`.
    pub use_double_quant: bool,
    /// `bnb_4bit_compute_dtype`, e.g. `"bfloat16"` (None when absent).
    pub compute_dtype: Option<String>,
    /// `bnb_4bit_quant_storage`, e.g. `"uint8"`.
    pub quant_storage: Option<String>,
    /// `llm_int8_skip_modules`: modules kept unquantized besides the embeddings / lm_head.
    pub skip_modules: Vec<String>,
}

/// The architecture of a Falcon checkpoint. All sizes are in elements.
#[derive(Clone, Debug, PartialEq)]
pub struct FalconConfig {
    /// `model_type` as written: `falcon`, or the legacy `RefinedWeb` / `RefinedWebModel`.
    pub model_type: String,
    pub vocab_size: usize,
    /// `hidden_size` (legacy `n_embed`).
    pub hidden_size: usize,
    /// `num_hidden_layers` (legacy `n_layer`).
    pub num_hidden_layers: usize,
    /// `num_attention_heads` (legacy `n_head`): query heads.
    pub num_attention_heads: usize,
    /// `num_kv_heads` (legacy `n_head_kv`) as written, defaulting to `num_attention_heads`.
    /// Only meaningful for the grouped layout: Falcon-7B re-saved says 71 but uses 1.
    pub declared_num_kv_heads: usize,
    pub attention: AttentionLayout,
    pub norms: NormLayout,
    /// `ffn_hidden_size`, default `4 · hidden_size`.
    pub ffn_hidden_size: usize,
    pub layer_norm_epsilon: f64,
    /// Bias on all four linear types (false for 7B and 40B).
    pub bias: bool,
    pub max_position_embeddings: usize,
    /// RoPE base: `rope_parameters.rope_theta` (5.x) or `rope_theta`, default 10000.
    pub rope_theta: f64,
    /// lm_head shares the embedding matrix (default true).
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (an int or a list in config.json; empty when null).
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    /// `torch_dtype` (4.x) or `dtype` (5.x), e.g. `"bfloat16"`.
    pub torch_dtype: Option<String>,
    /// Present when the checkpoint is bitsandbytes 4-bit pre-quantized.
    pub quantization: Option<BnbQuantizationConfig>,
}

/// The largest model a config may describe: 2^40 ≈ 1.1e12 parameters, six times Falcon-180B.
/// Anything larger is a corrupt or hostile config.json, and sizes derived from it must not
/// reach an allocation (or wrap in `usize` arithmetic).
pub const MAX_PARAMETERS: u64 = 1 << 40;
/// The most decoder layers a config may declare (Falcon-180B has 80).
pub const MAX_LAYERS: usize = 4096;
/// The most positions a config may declare.
pub const MAX_POSITIONS: usize = 1 << 24;

impl FalconConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("config.json"))
    }

    /// Reads a config.json file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let value = read_json(path)?;
        Self::from_value(&value, path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let value: Value = serde_json::from_str(text).map_err(|source| FalconError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(&value, path)
    }

    /// Parses an already decoded config.json; `path` is only used in error messages.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let obj = value.as_object().ok_or_else(|| {
            FalconError::field(path, "<root>", "config.json must be a JSON object")
        })?;
        let f = Fields { obj, path };

        let model_type = f
            .string(&["model_type"])?
            .unwrap_or_else(|| "falcon".to_string());
        // The custom-code era called 40B "RefinedWeb" (grouped KV) and 7B "RefinedWebModel".
        let legacy_new_arch = match model_type.as_str() {
            "falcon" => None,
            "RefinedWeb" => Some(true),
            "RefinedWebModel" => Some(false),
            other => {
                return Err(FalconError::field(
                    path,
                    "model_type",
                    format!("is `{other}`, expected `falcon`, `RefinedWeb` or `RefinedWebModel`"),
                ))
            }
        };

        let vocab_size = f.positive(&["vocab_size"], Some(65024))?;
        let hidden_size = f.positive(&["hidden_size", "n_embed"], Some(4544))?;
        let num_hidden_layers = f.positive(&["num_hidden_layers", "n_layer"], Some(32))?;
        let num_attention_heads = f.positive(&["num_attention_heads", "n_head"], Some(71))?;
        let declared_num_kv_heads =
            f.positive(&["num_kv_heads", "n_head_kv"], Some(num_attention_heads))?;

        if hidden_size % num_attention_heads != 0 {
            return Err(FalconError::field(
                path,
                "hidden_size",
                format!(
                    "{hidden_size} is not divisible by num_attention_heads = {num_attention_heads}"
                ),
            ));
        }
        let head_dim = hidden_size / num_attention_heads;
        if head_dim % 2 != 0 {
            return Err(FalconError::field(
                path,
                "hidden_size",
                format!("head_dim = {hidden_size}/{num_attention_heads} = {head_dim} is odd; rotary embeddings need an even head_dim"),
            ));
        }

        if f.bool(&["alibi"])?.unwrap_or(false) {
            return Err(FalconError::unsupported(
                path,
                "alibi",
                "is true (ALiBi position bias, as in falcon-rw); only rotary embeddings (alibi = false) are supported",
            ));
        }
        let new_arch = f
            .bool(&["new_decoder_architecture"])?
            .or(legacy_new_arch)
            .unwrap_or(false);
        let parallel_attn = f.bool(&["parallel_attn"])?.unwrap_or(true);
        if !parallel_attn {
            return Err(FalconError::unsupported(
                path,
                "parallel_attn",
                "is false (sequential attention then MLP, as in falcon-rw); only the parallel block is supported",
            ));
        }
        let multi_query = f.bool(&["multi_query"])?.unwrap_or(true);
        let num_ln = f.usize(&["num_ln_in_parallel_attn"])?;

        let (attention, norms) = if new_arch {
            if num_attention_heads % declared_num_kv_heads != 0 {
                return Err(FalconError::field(
                    path,
                    "num_kv_heads",
                    format!("{declared_num_kv_heads} does not divide num_attention_heads = {num_attention_heads}"),
                ));
            }
            let norms = match num_ln {
                None | Some(2) => NormLayout::Separate,
                Some(1) => NormLayout::Single,
                Some(other) => {
                    return Err(FalconError::field(
                        path,
                        "num_ln_in_parallel_attn",
                        format!("is {other}, expected 1 or 2"),
                    ))
                }
            };
            (
                AttentionLayout::Grouped {
                    num_kv_heads: declared_num_kv_heads,
                },
                norms,
            )
        } else {
            if !multi_query {
                return Err(FalconError::unsupported(
                    path,
                    "multi_query",
                    "is false without new_decoder_architecture (per-head interleaved QKV with full multi-head attention); supported: multi_query = true or new_decoder_architecture = true",
                ));
            }
            match num_ln {
                None | Some(1) => {}
                Some(other) => {
                    // transformers builds ln_attn/ln_mlp here but its forward reads
                    // input_layernorm, so such a checkpoint cannot run there either.
                    return Err(FalconError::unsupported(
                        path,
                        "num_ln_in_parallel_attn",
                        format!("is {other} without new_decoder_architecture; only 1 (one input_layernorm) is possible in the multi-query layout"),
                    ));
                }
            }
            (AttentionLayout::MultiQuery, NormLayout::Single)
        };

        let ffn_hidden_size =
            f.positive(&["ffn_hidden_size"], Some(hidden_size.saturating_mul(4)))?;
        let activation = f.string(&["activation"])?.unwrap_or_else(|| "gelu".into());
        if activation != "gelu" {
            return Err(FalconError::unsupported(
                path,
                "activation",
                format!("is `{activation}`; only `gelu` (exact, erf) is supported"),
            ));
        }
        let layer_norm_epsilon = f.f64(&["layer_norm_epsilon"])?.unwrap_or(1e-5);
        if !(layer_norm_epsilon > 0.0 && layer_norm_epsilon.is_finite()) {
            return Err(FalconError::field(
                path,
                "layer_norm_epsilon",
                format!("is {layer_norm_epsilon}, expected a positive number"),
            ));
        }
        let rope_theta = rope_theta(&f)?;
        let hidden_dropout = f.probability("hidden_dropout")?;
        let attention_dropout = f.probability("attention_dropout")?;

        let config = FalconConfig {
            model_type,
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            declared_num_kv_heads,
            attention,
            norms,
            ffn_hidden_size,
            layer_norm_epsilon,
            bias: f.bool(&["bias"])?.unwrap_or(false),
            max_position_embeddings: f.positive(&["max_position_embeddings"], Some(2048))?,
            rope_theta,
            tie_word_embeddings: f.bool(&["tie_word_embeddings"])?.unwrap_or(true),
            bos_token_id: f.token_id("bos_token_id")?,
            eos_token_ids: f.token_ids("eos_token_id")?,
            pad_token_id: f.token_id("pad_token_id")?,
            hidden_dropout,
            attention_dropout,
            torch_dtype: f.string(&["dtype", "torch_dtype"])?,
            quantization: quantization_config(&f)?,
        };
        config.check_size(path)?;
        Ok(config)
    }

    /// The parameter count in checked arithmetic; `None` when it does not fit in a u64.
    pub fn checked_num_parameters(&self) -> Option<u64> {
        let h = self.hidden_size as u64;
        let ffn = self.ffn_hidden_size as u64;
        let qkv = (self.num_attention_heads as u64)
            .checked_add((self.num_kv_heads() as u64).checked_mul(2)?)?
            .checked_mul(self.head_dim() as u64)?;
        let b = u64::from(self.bias);
        let linear = |out: u64, inp: u64| out.checked_mul(inp)?.checked_add(b.checked_mul(out)?);
        let norms = match self.norms {
            NormLayout::Single => 2u64,
            NormLayout::Separate => 4,
        }
        .checked_mul(h)?;
        let per_layer = norms
            .checked_add(linear(qkv, h)?)?
            .checked_add(linear(h, h)?)?
            .checked_add(linear(ffn, h)?)?
            .checked_add(linear(h, ffn)?)?;
        let embed = (self.vocab_size as u64).checked_mul(h)?;
        let untied = if self.tie_word_embeddings { 0 } else { embed };
        per_layer
            .checked_mul(self.num_hidden_layers as u64)?
            .checked_add(embed)?
            .checked_add(untied)?
            .checked_add(2u64.checked_mul(h)?)
    }

    /// Refuses configs no machine could hold (the sizes multiply out past
    /// [`MAX_PARAMETERS`] or overflow), before anything sized by them is allocated.
    fn check_size(&self, path: &Path) -> Result<()> {
        // Per-layer and per-position host structures exist even for tiny widths.
        if self.num_hidden_layers > MAX_LAYERS {
            return Err(FalconError::field(
                path,
                "num_hidden_layers",
                format!(
                    "is {}, more than the {MAX_LAYERS} this tool accepts",
                    self.num_hidden_layers
                ),
            ));
        }
        if self.max_position_embeddings > MAX_POSITIONS {
            return Err(FalconError::field(
                path,
                "max_position_embeddings",
                format!(
                    "is {}, more than the {MAX_POSITIONS} this tool accepts",
                    self.max_position_embeddings
                ),
            ));
        }
        match self.checked_num_parameters() {
            Some(n) if n <= MAX_PARAMETERS => Ok(()),
            found => Err(FalconError::field(
                path,
                "<sizes>",
                format!(
                    "vocab_size {}, hidden_size {}, num_hidden_layers {} and ffn_hidden_size {} \
                     make {} parameters, more than the {MAX_PARAMETERS} this tool accepts",
                    self.vocab_size,
                    self.hidden_size,
                    self.num_hidden_layers,
                    self.ffn_hidden_size,
                    found.map_or("over 2^64".to_string(), |n| n.to_string())
                ),
            )),
        }
    }

    /// Size of one attention head: `hidden_size / num_attention_heads` (64 for 7B and 40B).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// K/V heads the attention really uses: 1 for multi-query (whatever `num_kv_heads` says),
    /// `num_kv_heads` for the grouped layout.
    pub fn num_kv_heads(&self) -> usize {
        match self.attention {
            AttentionLayout::MultiQuery => 1,
            AttentionLayout::Grouped { num_kv_heads } => num_kv_heads,
        }
    }

    /// Query heads served by one K/V head: `n / kv`.
    pub fn queries_per_kv(&self) -> usize {
        self.num_attention_heads / self.num_kv_heads()
    }

    /// Output features of the fused `query_key_value` projection:
    /// multi-query `hidden + 2·d` (4672 for 7B); grouped `(n + 2·g)·d` (9216 for 40B).
    pub fn qkv_out_features(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_kv_heads()) * self.head_dim()
    }

    /// The eos id the config declares first (`eos_token_id`, int or first of a list).
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_ids.first().copied()
    }

    /// Total parameter count of the model as transformers counts it (tied lm_head once).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let norm = 2 * h;
        let norms_per_layer = match self.norms {
            NormLayout::Single => norm,
            NormLayout::Separate => 2 * norm,
        };
        let b = usize::from(self.bias);
        let linear = |out: usize, inp: usize| out * inp + b * out;
        let per_layer = norms_per_layer
            + linear(self.qkv_out_features(), h)
            + linear(h, h)
            + linear(self.ffn_hidden_size, h)
            + linear(h, self.ffn_hidden_size);
        let lm_head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + self.num_hidden_layers * per_layer + norm + lm_head
    }
}

fn rope_theta(f: &Fields<'_>) -> Result<f64> {
    if let Some(v) = f.obj.get("rope_scaling") {
        if !v.is_null() {
            return Err(FalconError::unsupported(
                f.path,
                "rope_scaling",
                "is set; RoPE scaling (linear / dynamic) is not supported",
            ));
        }
    }
    let mut theta = f.f64(&["rope_theta"])?;
    match f.obj.get("rope_parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(p)) => {
            if let Some(kind) = p.get("rope_type") {
                if kind.as_str() != Some("default") {
                    return Err(FalconError::unsupported(
                        f.path,
                        "rope_parameters.rope_type",
                        format!("is {kind}; only `default` RoPE is supported"),
                    ));
                }
            }
            if let Some(t) = p.get("rope_theta") {
                theta = Some(t.as_f64().ok_or_else(|| {
                    FalconError::field(f.path, "rope_parameters.rope_theta", "must be a number")
                })?);
            }
        }
        Some(_) => {
            return Err(FalconError::field(
                f.path,
                "rope_parameters",
                "must be an object",
            ))
        }
    }
    let theta = theta.unwrap_or(10000.0);
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(FalconError::field(
            f.path,
            "rope_theta",
            format!("is {theta}, expected a positive number"),
        ));
    }
    Ok(theta)
}

fn quantization_config(f: &Fields<'_>) -> Result<Option<BnbQuantizationConfig>> {
    let q = match f.obj.get("quantization_config") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(q)) => q,
        Some(_) => {
            return Err(FalconError::field(
                f.path,
                "quantization_config",
                "must be an object",
            ))
        }
    };
    let qf = Fields {
        obj: q,
        path: f.path,
    };
    let method = qf.string(&["quant_method"])?.unwrap_or_default();
    if method != "bitsandbytes" {
        return Err(FalconError::unsupported(
            f.path,
            "quantization_config.quant_method",
            format!(
                "is `{method}`; only bitsandbytes 4-bit pre-quantized checkpoints are supported"
            ),
        ));
    }
    if qf.bool(&["load_in_8bit"])?.unwrap_or(false) {
        return Err(FalconError::unsupported(
            f.path,
            "quantization_config.load_in_8bit",
            "is true; 8-bit (LLM.int8) checkpoints are not supported, only 4-bit",
        ));
    }
    if !qf.bool(&["load_in_4bit"])?.unwrap_or(false) {
        return Err(FalconError::unsupported(
            f.path,
            "quantization_config.load_in_4bit",
            "is not true; only bitsandbytes 4-bit checkpoints are supported",
        ));
    }
    let quant_type = qf
        .string(&["bnb_4bit_quant_type"])?
        .unwrap_or_else(|| "fp4".into());
    if quant_type != "nf4" && quant_type != "fp4" {
        return Err(FalconError::field(
            f.path,
            "quantization_config.bnb_4bit_quant_type",
            format!("is `{quant_type}`, expected `nf4` or `fp4`"),
        ));
    }
    let skip_modules = match q.get("llm_int8_skip_modules") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    FalconError::field(
                        f.path,
                        "quantization_config.llm_int8_skip_modules",
                        "must be a list of strings",
                    )
                })
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(FalconError::field(
                f.path,
                "quantization_config.llm_int8_skip_modules",
                "must be a list of strings",
            ))
        }
    };
    Ok(Some(BnbQuantizationConfig {
        quant_type,
        use_double_quant: qf.bool(&["bnb_4bit_use_double_quant"])?.unwrap_or(false),
        compute_dtype: qf.string(&["bnb_4bit_compute_dtype"])?,
        quant_storage: qf.string(&["bnb_4bit_quant_storage"])?,
        skip_modules,
    }))
}

/// Typed access to config.json fields with legacy aliases; every error names the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl<'a> Fields<'a> {
    /// The value under the first present key of `keys` (canonical name first, then legacy
    /// aliases). Two present keys with different values are an error.
    fn get<'k>(&self, keys: &[&'k str]) -> Result<Option<(&'k str, &'a Value)>> {
        let mut found: Option<(&'k str, &'a Value)> = None;
        for key in keys {
            match (self.obj.get(*key), found) {
                (None | Some(Value::Null), _) => {}
                (Some(v), None) => found = Some((key, v)),
                (Some(v), Some((first, fv))) => {
                    if v != fv {
                        return Err(FalconError::field(
                            self.path,
                            *key,
                            format!("is {v} but its alias `{first}` is {fv}"),
                        ));
                    }
                }
            }
        }
        Ok(found)
    }

    fn usize(&self, keys: &[&str]) -> Result<Option<usize>> {
        match self.get(keys)? {
            None => Ok(None),
            Some((key, v)) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    FalconError::field(
                        self.path,
                        key,
                        format!("is {v}, expected a non-negative integer"),
                    )
                }),
        }
    }

    fn positive(&self, keys: &[&str], default: Option<usize>) -> Result<usize> {
        match self.usize(keys)?.or(default) {
            Some(0) => Err(FalconError::field(
                self.path,
                keys[0],
                "must be positive, found 0",
            )),
            Some(x) => Ok(x),
            None => Err(FalconError::field(self.path, keys[0], "is missing")),
        }
    }

    fn bool(&self, keys: &[&str]) -> Result<Option<bool>> {
        match self.get(keys)? {
            None => Ok(None),
            Some((key, v)) => v.as_bool().map(Some).ok_or_else(|| {
                FalconError::field(self.path, key, format!("is {v}, expected true or false"))
            }),
        }
    }

    fn f64(&self, keys: &[&str]) -> Result<Option<f64>> {
        match self.get(keys)? {
            None => Ok(None),
            Some((key, v)) => v.as_f64().map(Some).ok_or_else(|| {
                FalconError::field(self.path, key, format!("is {v}, expected a number"))
            }),
        }
    }

    fn string(&self, keys: &[&str]) -> Result<Option<String>> {
        match self.get(keys)? {
            None => Ok(None),
            Some((key, v)) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                FalconError::field(self.path, key, format!("is {v}, expected a string"))
            }),
        }
    }

    fn probability(&self, key: &str) -> Result<f64> {
        let p = self.f64(&[key])?.unwrap_or(0.0);
        if (0.0..1.0).contains(&p) {
            Ok(p)
        } else {
            Err(FalconError::field(
                self.path,
                key,
                format!("is {p}, expected 0 <= p < 1"),
            ))
        }
    }

    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        match self.get(&[key])? {
            None => Ok(None),
            Some((_, v)) => self.one_id(key, v).map(Some),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(&[key])? {
            None => Ok(Vec::new()),
            Some((_, Value::Array(items))) => items.iter().map(|v| self.one_id(key, v)).collect(),
            Some((_, v)) => Ok(vec![self.one_id(key, v)?]),
        }
    }

    fn one_id(&self, key: &str, v: &Value) -> Result<u32> {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| {
                FalconError::field(self.path, key, format!("is {v}, expected a token id"))
            })
    }
}
