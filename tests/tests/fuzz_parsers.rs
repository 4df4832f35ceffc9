//! Property-based fuzzing of every parser that reads user files: safetensors headers and the
//! sharded index, config.json, tokenizer.json, adapter_config.json, FinQA JSON and JSONL, and
//! the training checkpoint's state files. Inputs are random bytes and random edits of a
//! valid file (byte flips, insertions, truncation, extreme numbers in JSON fields).
//!
//! Each parser must return (Ok or a clear error) without panicking, and no single case may
//! raise this thread's live heap by more than [`ALLOC_BOUND`] bytes: a header that claims a
//! huge length must be refused, not allocated. Inputs are at most a few KiB, so anything near
//! the bound is an input-controlled allocation.
//!
//! Cases per target: [`CASES`] in a normal `cargo test` (bounded time); set `PROPTEST_CASES`
//! for a longer run.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

/// The most one parse of a few-KiB input may add to the live heap.
const ALLOC_BOUND: usize = 64 << 20;
const CASES: u32 = 96;

/// Counts live heap bytes and their peak per thread (each test runs on its own thread).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns how far it raised this thread's live heap above the start.
fn peak_growth(f: impl FnOnce()) -> usize {
    let start = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(start));
    f();
    (PEAK.with(|p| p.get()) - start).max(0) as usize
}

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    TestRunner::new(Config {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Random edits of `seed`: byte replacements, insertions, and a truncation.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = seed.len().max(1);
    (
        prop::collection::vec((0..n, any::<u8>(), any::<bool>()), 0..8),
        prop::option::of(0..n),
    )
        .prop_map(move |(edits, cut)| {
            let mut v = seed.clone();
            for (pos, byte, insert) in edits {
                let pos = pos.min(v.len());
                if insert || pos == v.len() {
                    v.insert(pos, byte);
                } else {
                    v[pos] = byte;
                }
            }
            if let Some(c) = cut {
                v.truncate(c);
            }
            v
        })
}

/// Random bytes, or random edits of `seed`.
fn inputs(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        mutated(seed.clone()),
        mutated(seed),
    ]
}

/// JSON numbers and values that break naive arithmetic and allocation.
fn extreme_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1u64 << 62)),
        Just(json!(1e300)),
        Just(json!(-0.0)),
        Just(json!(1.5)),
        Just(json!("")),
        Just(json!(null)),
        Just(json!([])),
        Just(json!({})),
        any::<u32>().prop_map(|x| json!(x)),
        any::<i64>().prop_map(|x| json!(x)),
    ]
}

/// A JSON object with random fields replaced by extreme values.
fn json_edits(seed: Value) -> impl Strategy<Value = Vec<u8>> {
    let keys: Vec<String> = seed
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let k = keys.len().max(1);
    prop::collection::vec((0..k, extreme_value()), 1..4).prop_map(move |edits| {
        let mut v = seed.clone();
        if let Some(o) = v.as_object_mut() {
            for (i, val) in edits {
                if let Some(key) = keys.get(i) {
                    o.insert(key.clone(), val);
                }
            }
        }
        serde_json::to_vec(&v).unwrap()
    })
}

/// Checks one parser over `strategy`: no panic, bounded allocation.
fn fuzz<S: Strategy<Value = Vec<u8>>>(name: &str, strategy: S, parse: impl Fn(&[u8])) {
    let mut r = runner();
    let result = r.run(&strategy, |bytes| {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            peak_growth(|| parse(&bytes))
        }));
        match caught {
            Err(_) => Err(TestCaseError::fail(format!("{name}: panicked"))),
            Ok(grown) if grown > ALLOC_BOUND => Err(TestCaseError::fail(format!(
                "{name}: one parse allocated {grown} bytes"
            ))),
            Ok(_) => Ok(()),
        }
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

const CONFIG_JSON: &str = r#"{"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
 "num_hidden_layers": 2, "multi_query": true, "new_decoder_architecture": false,
 "parallel_attn": true, "bias": false, "alibi": false, "vocab_size": 100,
 "layer_norm_epsilon": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
 "max_position_embeddings": 128, "ffn_hidden_size": 256}"#;

#[test]
fn config_json() {
    let seed: Value = serde_json::from_str(CONFIG_JSON).unwrap();
    let parse = |b: &[u8]| {
        if let Ok(text) = std::str::from_utf8(b) {
            let _ = model_falcon::FalconConfig::from_json_str(text, "config.json");
        }
    };
    fuzz("config.json bytes", inputs(CONFIG_JSON.into()), parse);
    fuzz("config.json fields", json_edits(seed), parse);
}

const ADAPTER_CONFIG: &str = r#"{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8,
 "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["query_key_value"],
 "bias": "none", "fan_in_fan_out": false, "use_rslora": false,
 "base_model_name_or_path": "tiiuae/falcon-7b"}"#;

#[test]
fn adapter_config_json() {
    let seed: Value = serde_json::from_str(ADAPTER_CONFIG).unwrap();
    let parse = |b: &[u8]| {
        if let Ok(text) = std::str::from_utf8(b) {
            let _ = model_falcon::peft::LoraConfig::from_json_str(text, "adapter_config.json");
        }
    };
    fuzz(
        "adapter_config.json bytes",
        inputs(ADAPTER_CONFIG.into()),
        parse,
    );
    fuzz("adapter_config.json fields", json_edits(seed), parse);
}

fn small_safetensors(dir: &Path) -> Vec<u8> {
    use model_falcon::checkpoint::{write_safetensors_file, StDType, TensorSpec};
    let path = dir.join("seed.safetensors");
    let specs = vec![
        TensorSpec::new("a", StDType::F32, vec![2, 3]),
        TensorSpec::new("b", StDType::BF16, vec![4]),
    ];
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors_file(&path, &specs, &meta, &mut |s| {
        Ok(vec![7u8; s.size_in_bytes()])
    })
    .unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn safetensors_header() {
    let dir = tempfile::tempdir().unwrap();
    let seed = small_safetensors(dir.path());
    let path = dir.path().join("model.safetensors");
    // Also claims of huge header lengths and tensor extents.
    let mut huge = seed.clone();
    huge[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let strategy = prop_oneof![inputs(seed), mutated(huge)];
    fuzz("safetensors header", strategy, |b| {
        std::fs::write(&path, b).unwrap();
        if let Ok(f) = model_falcon::checkpoint::SafetensorsFile::open(&path) {
            for t in f.tensors() {
                let _ = f.bytes(t).len();
            }
        }
    });
}

#[test]
fn sharded_index_and_checkpoint_directory() {
    let dir = tempfile::tempdir().unwrap();
    let seed_index = json!({
        "metadata": {"total_size": 24},
        "weight_map": {"transformer.word_embeddings.weight": "model-00001-of-00002.safetensors",
                       "transformer.ln_f.weight": "model-00002-of-00002.safetensors"}
    });
    std::fs::write(dir.path().join("config.json"), CONFIG_JSON).unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    let parse = |b: &[u8]| {
        std::fs::write(&index, b).unwrap();
        let _ = model_falcon::FalconCheckpoint::open(dir.path());
    };
    fuzz(
        "safetensors index bytes",
        inputs(serde_json::to_vec(&seed_index).unwrap()),
        parse,
    );
    fuzz("safetensors index fields", json_edits(seed_index), parse);
}

fn tokenizer_seed() -> Vec<u8> {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<|endoftext|>", "a", "b", "c", "ab", "Ġ", "Ġa"]
        .iter()
        .enumerate()
    {
        vocab.insert(t.to_string(), json!(i));
    }
    serde_json::to_vec(&json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "vocab": vocab,
            "merges": ["a b", "Ġ a"]}
    }))
    .unwrap()
}

#[test]
fn tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let seed = tokenizer_seed();
    std::fs::write(&path, &seed).unwrap();
    model_falcon::FalconTokenizer::from_dir(dir.path()).expect("the seed tokenizer loads");
    fuzz("tokenizer.json", mutated(seed), |b| {
        std::fs::write(&path, b).unwrap();
        if let Ok(t) = model_falcon::FalconTokenizer::from_dir(dir.path()) {
            let _ = t.encode("a ab c", false);
        }
    });
}

fn finqa_seed() -> Value {
    json!({
        "id": "r1",
        "pre_text": ["revenue was 10"],
        "post_text": ["in 2019"],
        "table": [["", "2019", "2018"], ["revenue", "10", "8"]],
        "qa": {"question": "what was the change?", "answer": "2", "exe_ans": 2.0}
    })
}

#[test]
fn finqa_json_and_jsonl() {
    use data_finqa::{parse_bytes, BadRecordPolicy, DataFormat, LoadOptions};
    let record = finqa_seed();
    let array = serde_json::to_vec(&json!([record.clone(), record.clone()])).unwrap();
    let flat = json!({"id": "r2", "question": "q?", "answer": "1", "context": "c",
        "pre_text": "a", "post_text": "b", "table": "x | y"});
    let jsonl = format!(
        "{}\n{}\n{{\"prompt\": \"p\", \"completion\": \"c\"}}\n",
        serde_json::to_string(&record).unwrap(),
        serde_json::to_string(&flat).unwrap()
    );
    let parse = |b: &[u8]| {
        for format in [
            DataFormat::Auto,
            DataFormat::FinqaOriginal,
            DataFormat::HfFlat,
            DataFormat::PromptCompletion,
        ] {
            for bad_records in [BadRecordPolicy::Skip, BadRecordPolicy::Fail] {
                let opts = LoadOptions {
                    format,
                    bad_records,
                };
                let _ = parse_bytes(Path::new("data.json"), b, &opts);
            }
        }
    };
    fuzz("FinQA JSON", inputs(array), parse);
    fuzz("FinQA JSONL", inputs(jsonl.into_bytes()), parse);
    fuzz("FinQA record fields", json_edits(record), |b| {
        let mut v = b"[".to_vec();
        v.extend_from_slice(b);
        v.push(b']');
        parse(&v)
    });
}

/// A real checkpoint of the built-in tiny model, written once.
fn checkpoint_seed(root: &Path) -> std::path::PathBuf {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let mut session =
        trainer::session::builtin_session(7, &model_falcon::BaseOptions::default()).unwrap();
    let records = data_finqa::synthetic::generate(8, 7);
    let opts = data_finqa::TokenizeOptions {
        max_length: 64,
        eos_id: session.eos_id,
        policy: data_finqa::TruncationPolicy::KeepAnswer,
    };
    let set = data_finqa::tokenize_records(&session.tokenizer, &records, &opts).unwrap();
    let mut args = trainer::args::TrainArgs::defaults();
    args.output_dir = root.join("run");
    args.max_steps = 1;
    args.per_device_train_batch_size = 2;
    args.gradient_accumulation_steps = 1;
    args.no_progress = true;
    trainer::train::train(
        &mut session,
        &args,
        &set.examples,
        &[],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    root.join("run/checkpoint-1")
}

#[test]
fn checkpoint_state_files() {
    use trainer::state::{self, OPTIMIZER_FILE, RNG_FILE, SCHEDULER_FILE, STATE_FILE};
    let root = tempfile::tempdir().unwrap();
    let ckpt = checkpoint_seed(root.path());
    state::verify_checkpoint(&ckpt).expect("the seed checkpoint verifies");
    // Without the manifest, each file reaches its own parser instead of failing the hash.
    std::fs::remove_file(ckpt.join(trainer::manifest::MANIFEST_FILE)).unwrap();
    for file in [STATE_FILE, RNG_FILE, SCHEDULER_FILE, OPTIMIZER_FILE] {
        let path = ckpt.join(file);
        let seed = std::fs::read(&path).unwrap();
        let strategy: BoxedStrategy<Vec<u8>> = match serde_json::from_slice::<Value>(&seed) {
            Ok(v) if v.is_object() => prop_oneof![inputs(seed.clone()), json_edits(v)].boxed(),
            _ => inputs(seed.clone()).boxed(),
        };
        fuzz(file, strategy, |b| {
            std::fs::write(&path, b).unwrap();
            let _ = state::verify_checkpoint(&ckpt);
        });
        std::fs::write(&path, &seed).unwrap();
    }
    // The manifest itself.
    trainer::manifest::write(&ckpt).unwrap();
    let path = ckpt.join(trainer::manifest::MANIFEST_FILE);
    let seed = std::fs::read(&path).unwrap();
    fuzz("manifest.json", inputs(seed), |b| {
        std::fs::write(&path, b).unwrap();
        let _ = trainer::manifest::verify(&ckpt);
    });
}
