//! FalconConfig from real Hub configs (docs/hf-semantics.md §1.2), legacy key names, the fixture
//! configs written by transformers 5.24, and configs that must be refused.

mod common;

use model_falcon::config::{AttentionLayout, FalconConfig, NormLayout};

/// tiiuae/falcon-7b config.json (in-library format); falcon-7b-instruct is identical.
const FALCON_7B: &str = r#"{
  "alibi": false,
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["FalconForCausalLM"],
  "attention_dropout": 0.0,
  "bias": false,
  "bos_token_id": 11,
  "eos_token_id": 11,
  "hidden_dropout": 0.0,
  "hidden_size": 4544,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "falcon",
  "multi_query": true,
  "new_decoder_architecture": false,
  "num_attention_heads": 71,
  "num_hidden_layers": 32,
  "parallel_attn": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.33.0.dev0",
  "use_cache": true,
  "vocab_size": 65024
}"#;

/// The custom-code era falcon-7b / 7b-instruct config (RefinedWebModel, legacy keys).
const FALCON_7B_RW: &str = r#"{
  "alibi": false,
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["RWForCausalLM"],
  "attention_dropout": 0.0,
  "auto_map": {"AutoConfig": "configuration_RW.RWConfig", "AutoModelForCausalLM": "modelling_RW.RWForCausalLM"},
  "bias": false,
  "bos_token_id": 11,
  "eos_token_id": 11,
  "hidden_dropout": 0.0,
  "hidden_size": 4544,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "RefinedWebModel",
  "multi_query": true,
  "n_head": 71,
  "n_layer": 32,
  "parallel_attn": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.27.4",
  "use_cache": true,
  "vocab_size": 65024
}"#;

/// tiiuae/falcon-40b config.json (in-library format).
const FALCON_40B: &str = r#"{
  "alibi": false,
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["FalconForCausalLM"],
  "attention_dropout": 0.0,
  "bias": false,
  "bos_token_id": 11,
  "eos_token_id": 11,
  "hidden_dropout": 0.0,
  "hidden_size": 8192,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "falcon",
  "new_decoder_architecture": true,
  "num_attention_heads": 128,
  "num_hidden_layers": 60,
  "num_kv_heads": 8,
  "parallel_attn": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.27.4",
  "use_cache": true,
  "vocab_size": 65024
}"#;

/// The custom-code era falcon-40b config (RefinedWeb: grouped KV implied, n_head_kv).
const FALCON_40B_RW: &str = r#"{
  "alibi": false,
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["RWForCausalLM"],
  "attention_dropout": 0.0,
  "bias": false,
  "bos_token_id": 11,
  "eos_token_id": 11,
  "hidden_dropout": 0.0,
  "hidden_size": 8192,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "RefinedWeb",
  "n_head": 128,
  "n_head_kv": 8,
  "n_layer": 60,
  "parallel_attn": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.27.4",
  "use_cache": true,
  "vocab_size": 65024
}"#;

/// falcon-rw-1b (ALiBi, sequential block, biases, full multi-head attention).
const FALCON_RW_1B: &str = r#"{
  "alibi": true,
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["FalconForCausalLM"],
  "attention_dropout": 0.0,
  "bias": true,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_dropout": 0.0,
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "falcon",
  "multi_query": false,
  "new_decoder_architecture": false,
  "num_attention_heads": 32,
  "num_hidden_layers": 24,
  "parallel_attn": false,
  "torch_dtype": "bfloat16",
  "vocab_size": 50304
}"#;

fn parse(text: &str) -> model_falcon::Result<FalconConfig> {
    FalconConfig::from_json_str(text, "config.json")
}

/// `text` with one top-level field replaced (or removed when `value` is None).
fn with_field(text: &str, key: &str, value: Option<&str>) -> String {
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    let obj = v.as_object_mut().unwrap();
    match value {
        Some(x) => {
            obj.insert(key.to_string(), serde_json::from_str(x).unwrap());
        }
        None => {
            obj.remove(key);
        }
    }
    v.to_string()
}

#[test]
fn falcon_7b_layout_and_derived_sizes() {
    for text in [FALCON_7B, FALCON_7B_RW] {
        let c = parse(text).unwrap();
        assert_eq!(c.hidden_size, 4544);
        assert_eq!(c.num_hidden_layers, 32);
        assert_eq!(c.num_attention_heads, 71);
        assert_eq!(c.head_dim(), 64);
        assert_eq!(c.attention, AttentionLayout::MultiQuery);
        assert_eq!(
            c.num_kv_heads(),
            1,
            "multi-query uses one KV head whatever num_kv_heads says"
        );
        assert_eq!(c.declared_num_kv_heads, 71);
        assert_eq!(c.queries_per_kv(), 71);
        assert_eq!(c.qkv_out_features(), 4672);
        assert_eq!(c.ffn_hidden_size, 18176);
        assert_eq!(c.norms, NormLayout::Single);
        assert_eq!(c.vocab_size, 65024);
        assert_eq!(c.layer_norm_epsilon, 1e-5);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.max_position_embeddings, 2048);
        assert!(!c.bias);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![11]);
        assert_eq!(c.bos_token_id, Some(11));
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert!(c.quantization.is_none());
        // docs/hf-semantics.md §0: 6,921,720,704 parameters.
        assert_eq!(c.num_parameters(), 6_921_720_704);
    }
}

#[test]
fn falcon_40b_grouped_layout() {
    for text in [FALCON_40B, FALCON_40B_RW] {
        let c = parse(text).unwrap();
        assert_eq!(c.head_dim(), 64);
        assert_eq!(c.attention, AttentionLayout::Grouped { num_kv_heads: 8 });
        assert_eq!(c.num_kv_heads(), 8);
        assert_eq!(c.queries_per_kv(), 16);
        assert_eq!(c.qkv_out_features(), 9216);
        assert_eq!(c.norms, NormLayout::Separate);
        assert_eq!(c.num_hidden_layers, 60);
        assert_eq!(c.ffn_hidden_size, 4 * 8192);
    }
}

#[test]
fn new_architecture_with_one_layernorm() {
    let c = parse(&with_field(
        FALCON_40B,
        "num_ln_in_parallel_attn",
        Some("1"),
    ))
    .unwrap();
    assert_eq!(c.norms, NormLayout::Single);
    let c = parse(&with_field(
        FALCON_40B,
        "num_ln_in_parallel_attn",
        Some("2"),
    ))
    .unwrap();
    assert_eq!(c.norms, NormLayout::Separate);
}

#[test]
fn transformers_5_fields() {
    let text = with_field(
        FALCON_7B,
        "rope_parameters",
        Some(r#"{"rope_theta": 500000.0, "rope_type": "default"}"#),
    );
    let text = with_field(&text, "ffn_hidden_size", Some("1000"));
    let text = with_field(&text, "eos_token_id", Some("[11, 193]"));
    let text = with_field(&text, "torch_dtype", None);
    let text = with_field(&text, "dtype", Some(r#""float32""#));
    let c = parse(&text).unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.ffn_hidden_size, 1000);
    assert_eq!(c.eos_token_ids, vec![11, 193]);
    assert_eq!(c.eos_token_id(), Some(11));
    assert_eq!(c.torch_dtype.as_deref(), Some("float32"));
}

#[test]
fn fixture_configs_written_by_transformers() {
    let c = FalconConfig::from_dir(common::checkpoint_dir("falcon7b_style")).unwrap();
    assert_eq!(
        (c.hidden_size, c.num_attention_heads, c.num_hidden_layers),
        (64, 4, 2)
    );
    assert_eq!(c.attention, AttentionLayout::MultiQuery);
    assert_eq!(
        c.declared_num_kv_heads, 4,
        "transformers re-saves num_kv_heads = n_head"
    );
    assert_eq!(c.qkv_out_features(), 64 + 2 * 16);
    assert_eq!(c.eos_token_ids, vec![11]);
    let c = FalconConfig::from_dir(common::checkpoint_dir("new_arch")).unwrap();
    assert_eq!(c.attention, AttentionLayout::Grouped { num_kv_heads: 2 });
    assert_eq!(c.norms, NormLayout::Separate);
    assert_eq!(c.qkv_out_features(), (4 + 2 * 2) * 16);
    assert_eq!(c.ffn_hidden_size, 96);
}

#[test]
fn unsupported_variants_name_the_field() {
    let e = parse(FALCON_RW_1B).unwrap_err().to_string();
    assert!(e.contains("unsupported") && e.contains("`alibi`"), "{e}");
    let e = parse(&with_field(FALCON_RW_1B, "alibi", Some("false")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`parallel_attn`"), "{e}");
    let e = parse(&with_field(FALCON_7B, "parallel_attn", Some("false")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`parallel_attn`") && e.contains("sequential"),
        "{e}"
    );
    let e = parse(&with_field(FALCON_40B, "parallel_attn", Some("false")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`parallel_attn`"), "{e}");
    let e = parse(&with_field(FALCON_7B, "multi_query", Some("false")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`multi_query`"), "{e}");
    let e = parse(&with_field(FALCON_7B, "num_ln_in_parallel_attn", Some("2")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`num_ln_in_parallel_attn`"), "{e}");
    let e = parse(&with_field(
        FALCON_7B,
        "rope_scaling",
        Some(r#"{"type": "linear", "factor": 2.0}"#),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`rope_scaling`"), "{e}");
    let e = parse(&with_field(FALCON_7B, "activation", Some(r#""gelu_new""#)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`activation`"), "{e}");
    let e = parse(&with_field(
        FALCON_7B,
        "quantization_config",
        Some(r#"{"quant_method": "gptq", "bits": 4}"#),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("quant_method") && e.contains("gptq"), "{e}");
}

#[test]
fn bad_values_name_the_field() {
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("hidden_size", Some("4545"), "hidden_size"),
        ("hidden_size", Some("0"), "hidden_size"),
        ("hidden_size", Some(r#""4544""#), "hidden_size"),
        ("num_attention_heads", Some("-71"), "num_attention_heads"),
        ("vocab_size", Some("1.5"), "vocab_size"),
        ("n_head", Some("64"), "n_head"),
        ("layer_norm_epsilon", Some("0"), "layer_norm_epsilon"),
        ("hidden_dropout", Some("1.5"), "hidden_dropout"),
        ("multi_query", Some(r#""yes""#), "multi_query"),
        ("eos_token_id", Some(r#""eos""#), "eos_token_id"),
        ("model_type", Some(r#""llama""#), "model_type"),
    ];
    for (key, value, field) in cases {
        let e = parse(&with_field(FALCON_7B, key, *value))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{field}`")), "{key}={value:?}: {e}");
    }
    // Grouped KV heads must divide the query heads.
    let e = parse(&with_field(FALCON_40B, "num_kv_heads", Some("7")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`num_kv_heads`"), "{e}");
    let e = parse(&with_field(
        FALCON_40B,
        "num_ln_in_parallel_attn",
        Some("3"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`num_ln_in_parallel_attn`"), "{e}");
    // Odd head_dim cannot be rotated.
    let text = with_field(FALCON_7B, "hidden_size", Some("71"));
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("head_dim"), "{e}");
    // Not JSON / not an object.
    assert!(parse("{").unwrap_err().to_string().contains("invalid JSON"));
    assert!(parse("[1]").is_err());
}

#[test]
fn sizes_no_machine_could_hold_are_refused_before_any_allocation() {
    // 2^62 x 4544 wraps a usize product; the checked count refuses it.
    let e = parse(&with_field(
        FALCON_7B,
        "vocab_size",
        Some("4611686018427387904"),
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("vocab_size 4611686018427387904") && e.contains("parameters"),
        "{e}"
    );
    let e = parse(&with_field(
        FALCON_7B,
        "num_hidden_layers",
        Some("1000000000"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`num_hidden_layers`"), "{e}");
    let e = parse(&with_field(
        FALCON_7B,
        "ffn_hidden_size",
        Some("100000000000"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("parameters"), "{e}");
    let e = parse(&with_field(
        FALCON_7B,
        "max_position_embeddings",
        Some("1000000000000"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`max_position_embeddings`"), "{e}");
    // Falcon-7B's own count is accepted and agrees with the unchecked formula.
    let c = parse(FALCON_7B).unwrap();
    assert_eq!(c.checked_num_parameters(), Some(c.num_parameters() as u64));
}

#[test]
fn missing_file_names_the_path() {
    let e = FalconConfig::from_dir("/nonexistent/falcon")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/falcon/config.json"), "{e}");
}
