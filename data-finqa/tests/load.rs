//! Loading: format detection, each loader, each bad-record case, the real samples.

mod common;

use std::path::Path;

use data_finqa::{
    load_file, parse_bytes, AnswerSource, BadRecordPolicy, DataError, DataFormat, ExeAns,
    LoadOptions,
};
use serde_json::{json, Value};

fn parse(text: &str, format: DataFormat) -> Result<data_finqa::LoadReport, DataError> {
    parse_bytes(
        Path::new("mem/data.json"),
        text.as_bytes(),
        &LoadOptions {
            format,
            bad_records: BadRecordPolicy::Skip,
        },
    )
}

fn original_record(id: &str, answer: Value) -> Value {
    json!({
        "pre_text": ["revenue rose .", "costs fell ."],
        "post_text": ["see note 3 ."],
        "filename": "X/2019/page_5.pdf",
        "table_ori": [["", "2019"], ["Revenue", "$1,000"]],
        "table": [["", "2019", "2018"], ["revenue", "$ 1000", "800"]],
        "qa": {
            "question": "what was the change in revenue?",
            "answer": answer,
            "exe_ans": 200.0,
            "program": "subtract(1000, 800)",
            "steps": [{"op": "minus1-1", "arg1": "1000", "arg2": "800", "res": "200"}],
            "gold_inds": {"table_1": "the revenue of 2019 is $ 1000 ;", "text_0": "revenue rose ."},
            "tfidftopn": {},
        },
        "id": id,
        "table_retrieved_all": [{"score": 1.0, "ind": "table_1"}],
    })
}

fn flat_record(id: &str) -> Value {
    json!({
        "id": id,
        "pre_text": ["revenue rose ."],
        "post_text": [],
        "table": [["", "2019"], ["revenue", "$ 1000"]],
        "question": "what was revenue in 2019?",
        "answer": "1000",
        "final_result": "1000",
        "program_re": "add(1000, const_0)",
        "gold_inds": ["the revenue of 2019 is $ 1000 ;"],
    })
}

fn jsonl(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn detects_each_format_in_arrays_and_lines() {
    let orig = vec![
        original_record("A/1/page_1.pdf-1", json!("200")),
        original_record("A/1/page_1.pdf-2", json!("200")),
    ];
    let flat = vec![flat_record("B-1"), flat_record("B-2")];
    let pc = vec![
        json!({"prompt": "2+2=", "completion": " 4"}),
        json!({"prompt": "3+3=", "completion": " 6", "id": "x"}),
    ];
    let cases = [
        (
            Value::Array(orig.clone()).to_string(),
            DataFormat::FinqaOriginal,
        ),
        (jsonl(&orig), DataFormat::FinqaOriginal),
        (Value::Array(flat.clone()).to_string(), DataFormat::HfFlat),
        (jsonl(&flat), DataFormat::HfFlat),
        (jsonl(&pc), DataFormat::PromptCompletion),
        (
            Value::Array(pc.clone()).to_string(),
            DataFormat::PromptCompletion,
        ),
    ];
    for (text, want) in cases {
        let r = parse(&text, DataFormat::Auto).unwrap();
        assert_eq!(r.format, want, "{text:.80}");
        assert_eq!(r.len(), 2);
        assert_eq!(r.total, 2);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        // Forcing the right format gives the same result.
        assert_eq!(parse(&text, want).unwrap(), r);
    }
    // A byte-order mark and blank lines are tolerated.
    let text = format!("\u{feff}\n{}\n\n", jsonl(&flat));
    assert_eq!(parse(&text, DataFormat::Auto).unwrap().len(), 2);
    // Unknown layout.
    let err = parse(&jsonl(&[json!({"text": "hello"})]), DataFormat::Auto).unwrap_err();
    assert!(matches!(err, DataError::UnknownFormat { .. }));
    assert!(err.to_string().contains("mem/data.json") && err.to_string().contains("\"text\""));
    // Names on the command line.
    assert_eq!(
        "finqa".parse::<DataFormat>().unwrap(),
        DataFormat::FinqaOriginal
    );
    assert_eq!("hf".parse::<DataFormat>().unwrap(), DataFormat::HfFlat);
    assert_eq!(
        "prompt-completion".parse::<DataFormat>().unwrap(),
        DataFormat::PromptCompletion
    );
    assert!("csv".parse::<DataFormat>().is_err());
}

#[test]
fn original_loader_reads_every_field() {
    let text = Value::Array(vec![original_record("A/1/page_1.pdf-1", json!("200"))]).to_string();
    let r = parse(&text, DataFormat::Auto).unwrap();
    let rec = &r.records[0];
    assert_eq!(rec.id, "A/1/page_1.pdf-1");
    assert_eq!(rec.pre_text, ["revenue rose .", "costs fell ."]);
    assert_eq!(rec.post_text, ["see note 3 ."]);
    assert_eq!(rec.table[1], ["revenue", "$ 1000", "800"]);
    assert_eq!(rec.question, "what was the change in revenue?");
    assert_eq!(rec.answer, "200");
    assert_eq!(rec.final_result.as_deref(), Some("200"));
    assert_eq!(rec.exe_ans, Some(ExeAns::Number(200.0)));
    assert_eq!(rec.program.as_deref(), Some("subtract(1000, 800)"));
    let facts = rec.gold_facts_in_document_order();
    assert_eq!(facts.len(), 2);
    assert_eq!(facts[0].key.as_deref(), Some("text_0"));
    assert_eq!(facts[1].key.as_deref(), Some("table_1"));
}

#[test]
fn flat_loader_reads_every_field_and_numeric_answers() {
    let mut rec = flat_record("B-1");
    rec["answer"] = json!(94.0);
    rec["exe_ans"] = json!(0.5);
    let r = parse(&jsonl(&[rec]), DataFormat::Auto).unwrap();
    let rec = &r.records[0];
    // A numeric answer is printed as Python prints it.
    assert_eq!(rec.answer, "94.0");
    assert_eq!(rec.exe_ans, Some(ExeAns::Number(0.5)));
    assert_eq!(rec.program.as_deref(), Some("add(1000, const_0)"));
    assert_eq!(
        rec.gold_inds.as_ref().unwrap()[0].text,
        "the revenue of 2019 is $ 1000 ;"
    );
    assert!(rec.post_text.is_empty());
}

#[test]
fn prompt_completion_loader() {
    let text = "{\"prompt\": \"Q: hi\\nA:\", \"completion\": \" hello\"}\n\n{\"id\": 7, \"prompt\": \"\", \"completion\": \"x\"}\n";
    let r = parse(text, DataFormat::Auto).unwrap();
    assert_eq!(r.pairs.len(), 2);
    assert_eq!(r.pairs[0].id, "line-1");
    assert_eq!(r.pairs[0].prompt, "Q: hi\nA:");
    assert_eq!(r.pairs[0].completion, " hello");
    assert_eq!(r.pairs[1].id, "7");
    assert!(r.records.is_empty());
}

#[test]
fn empty_answer_falls_back_like_the_seed() {
    let mut a = original_record("A-1", json!(""));
    a["qa"]["steps"] = json!([{"op": "x", "arg1": "1", "arg2": "2", "res": "22.5%"}]);
    let mut b = original_record("A-2", json!(""));
    b["qa"]["steps"] = json!([]);
    b["qa"]["exe_ans"] = json!(1393.0);
    let r = parse(&Value::Array(vec![a, b]).to_string(), DataFormat::Auto).unwrap();
    assert_eq!(
        r.records[0].resolved_answer(),
        Some(("22.5%".to_string(), AnswerSource::FinalResult))
    );
    assert_eq!(
        r.records[1].resolved_answer(),
        Some(("1393.0".to_string(), AnswerSource::ExeAns))
    );
}

/// Each malformed record, with the reason fragment it must report.
fn bad_cases() -> Vec<(Value, &'static str)> {
    let mut v = Vec::new();
    let mut r = flat_record("bad-missing-question");
    r.as_object_mut().unwrap().remove("question");
    v.push((r, "missing field `question`"));
    let mut r = flat_record("bad-pre-type");
    r["pre_text"] = json!("a string");
    v.push((
        r,
        "field `pre_text` must be an array of strings, found a string",
    ));
    let mut r = flat_record("bad-pre-elem");
    r["pre_text"] = json!(["ok", 3]);
    v.push((
        r,
        "field `pre_text` element 1 must be a string, found a number",
    ));
    let mut r = flat_record("bad-table-row");
    r["table"] = json!([["a"], "row"]);
    v.push((
        r,
        "field `table` row 1 must be an array of strings, found a string",
    ));
    let mut r = flat_record("bad-table-cell");
    r["table"] = json!([["a", null]]);
    v.push((r, "field `table` row 0 cell 1 must be a string, found null"));
    let mut r = flat_record("bad-empty-answer");
    r["answer"] = json!("");
    r["final_result"] = json!("");
    v.push((r, "empty answer"));
    let mut r = flat_record("bad-answer-type");
    r["answer"] = json!(["x"]);
    v.push((
        r,
        "field `answer` must be a string or a number, found an array",
    ));
    let mut r = flat_record("bad-question-type");
    r["question"] = json!(5);
    v.push((r, "field `question` must be a string, found a number"));
    let mut r = flat_record("bad-empty-question");
    r["question"] = json!("  ");
    v.push((r, "empty question"));
    let mut r = flat_record("bad-gold");
    r["gold_inds"] = json!(3);
    v.push((
        r,
        "field `gold_inds` must be an object or an array of strings",
    ));
    let mut r = flat_record("x");
    r.as_object_mut().unwrap().remove("id");
    v.push((r, "missing field `id`"));
    v
}

#[test]
fn every_bad_record_is_reported_with_file_index_line_and_id() {
    let good = flat_record("good-0");
    let cases = bad_cases();
    let mut lines = vec![good.to_string()];
    for (v, _) in &cases {
        lines.push(v.to_string());
    }
    lines.push("{not json".to_string());
    lines.push("42".to_string());
    let text = lines.join("\n");
    let r = parse(&text, DataFormat::Auto).unwrap();
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.total, cases.len() + 3);
    assert_eq!(r.skipped.len(), cases.len() + 2);
    for (k, (v, reason)) in cases.iter().enumerate() {
        let b = &r.skipped[k];
        assert_eq!(b.index, k + 1);
        assert_eq!(b.line, Some(k + 2));
        assert_eq!(b.id.as_deref(), v.get("id").and_then(Value::as_str));
        assert!(b.reason.contains(reason), "{}: {} !~ {reason}", k, b.reason);
        let shown = b.to_string();
        assert!(shown.starts_with("mem/data.json: record "), "{shown}");
    }
    let n = cases.len();
    assert!(r.skipped[n].reason.starts_with("invalid JSON"));
    assert_eq!(
        r.skipped[n + 1].reason,
        "expected a JSON object, found a number"
    );
    let warning = r.skipped_warning(3).unwrap();
    assert!(warning.contains(&format!("skipped {} bad record(s) of {}", n + 2, n + 3)));
    assert!(warning.contains("... and"));

    // The fail policy stops at the first bad record and names it.
    let err = parse_bytes(
        Path::new("mem/data.json"),
        text.as_bytes(),
        &LoadOptions {
            format: DataFormat::Auto,
            bad_records: BadRecordPolicy::Fail,
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::BadRecord(_)));
    assert!(
        msg.contains("mem/data.json: record 1 (line 2) id \"bad-missing-question\": missing field `question`"),
        "{msg}"
    );
}

#[test]
fn bad_original_records() {
    let mut no_qa = original_record("o-1", json!("1"));
    no_qa.as_object_mut().unwrap().remove("qa");
    no_qa["question"] = json!("q");
    let mut qa_type = original_record("o-2", json!("1"));
    qa_type["qa"] = json!("text");
    let mut no_answer = original_record("o-3", json!("1"));
    no_answer["qa"].as_object_mut().unwrap().remove("answer");
    let mut exe_type = original_record("o-4", json!("1"));
    exe_type["qa"]["exe_ans"] = json!([1]);
    let text = Value::Array(vec![
        original_record("o-0", json!("1")),
        no_qa,
        qa_type,
        no_answer,
        exe_type,
        json!([1, 2]),
    ])
    .to_string();
    let r = parse(&text, DataFormat::Auto).unwrap();
    assert_eq!(r.format, DataFormat::FinqaOriginal);
    let reasons: Vec<(usize, Option<&str>, &str)> = r
        .skipped
        .iter()
        .map(|b| (b.index, b.id.as_deref(), b.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (1, Some("o-1"), "missing field `qa`"),
            (
                2,
                Some("o-2"),
                "field `qa` must be an object, found a string"
            ),
            (3, Some("o-3"), "missing field `qa.answer`"),
            (
                4,
                Some("o-4"),
                "field `qa.exe_ans` must be a number or a string, found an array"
            ),
            (5, None, "expected a JSON object, found an array"),
        ]
    );
    assert!(r.skipped.iter().all(|b| b.line.is_none()));
}

#[test]
fn whole_file_errors() {
    let err = parse("[{\"id\": 1,", DataFormat::Auto).unwrap_err();
    assert!(matches!(err, DataError::Json { .. }), "{err}");
    let err = parse("   ", DataFormat::Auto).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }));
    let all_bad = jsonl(&[json!({"prompt": "p", "completion": ""})]);
    let err = parse(&all_bad, DataFormat::Auto).unwrap_err();
    assert!(
        err.to_string().contains("no usable records (1 skipped)"),
        "{err}"
    );
    let err = load_file("/nonexistent/finqa.json", &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/finqa.json"), "{err}");
    let err = parse_bytes(
        Path::new("bin.json"),
        &[0xff, 0xfe],
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn load_file_reads_from_disk() {
    let dir = std::env::temp_dir().join(format!("data-finqa-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("train.jsonl");
    std::fs::write(&path, jsonl(&[flat_record("d-1"), flat_record("d-2")])).unwrap();
    let r = load_file(&path, &LoadOptions::default()).unwrap();
    assert_eq!(r.path, path);
    assert_eq!(r.records.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn real_samples_load_in_both_schemas() {
    let Some(dir) = common::samples_dir() else {
        return;
    };
    for (file, n) in [
        ("train_sample100.json", 100),
        ("dev_sample200.json", 200),
        ("test_sample100.json", 100),
    ] {
        let r = load_file(dir.join(file), &LoadOptions::default()).unwrap();
        assert_eq!(r.format, DataFormat::FinqaOriginal, "{file}");
        assert_eq!(r.total, n);
        // Two records have an empty answer; they fall back and are kept.
        assert_eq!(r.records.len(), n, "{file}: {:?}", r.skipped);
        let raw: Vec<Value> =
            serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        for (rec, v) in r.records.iter().zip(&raw) {
            assert_eq!(rec.id, v["id"].as_str().unwrap());
            assert_eq!(rec.answer, v["qa"]["answer"].as_str().unwrap());
            let n_gold = v["qa"]["gold_inds"].as_object().unwrap().len();
            assert_eq!(rec.gold_inds.as_ref().unwrap().len(), n_gold);
            match (&rec.exe_ans, &v["qa"]["exe_ans"]) {
                (Some(ExeAns::Number(a)), Value::Number(b)) => assert_eq!(*a, b.as_f64().unwrap()),
                (Some(ExeAns::Text(a)), Value::String(b)) => assert_eq!(a, b),
                other => panic!("{file} {}: exe_ans {other:?}", rec.id),
            }
        }
        // The same records as a Hugging Face flat JSONL export load to the same prompts.
        let flat: Vec<Value> = raw
            .iter()
            .map(|v| {
                json!({
                    "id": v["id"], "pre_text": v["pre_text"], "post_text": v["post_text"],
                    "table": v["table"], "question": v["qa"]["question"], "answer": v["qa"]["answer"],
                    "final_result": v["qa"]["steps"].as_array().and_then(|s| s.last()).map(|s| s["res"].clone()).unwrap_or(json!("")),
                    "program_re": v["qa"]["program"],
                    "gold_inds": v["qa"]["gold_inds"].as_object().unwrap().values().cloned().collect::<Vec<_>>(),
                })
            })
            .collect();
        let hf = parse(&jsonl(&flat), DataFormat::Auto).unwrap();
        assert_eq!(hf.format, DataFormat::HfFlat);
        assert_eq!(hf.records.len(), n);
        for (a, b) in r.records.iter().zip(&hf.records) {
            assert_eq!(data_finqa::seed_example(a), data_finqa::seed_example(b));
        }
    }
    // The reduced-schema test file: numeric answers, no `qa`.
    let r = load_file(
        dir.join("test_first500_simplified.json"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(r.format, DataFormat::HfFlat);
    assert_eq!(r.records.len(), 500, "{:?}", r.skipped.first());
    assert_eq!(r.records[0].answer, "94.0");
}

#[test]
fn a_record_too_long_to_ever_fit_is_skipped_before_tokenizing() {
    let huge = "x".repeat(data_finqa::MAX_RECORD_TEXT_BYTES + 1);
    let text = jsonl(&[
        json!({"prompt": huge, "completion": "a"}),
        json!({"prompt": "p", "completion": "c"}),
    ]);
    let r = parse(&text, DataFormat::PromptCompletion).unwrap();
    assert_eq!(r.pairs.len(), 1);
    assert_eq!(r.skipped.len(), 1);
    assert!(
        r.skipped[0].reason.contains("bytes of text") && r.skipped[0].line == Some(1),
        "{:?}",
        r.skipped[0]
    );
}

#[test]
fn files_over_the_limit_are_refused_before_reading_and_all_skipped_lists_reasons() {
    let dir = std::env::temp_dir().join(format!("finqa-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("d.jsonl");
    std::fs::write(&path, jsonl(&[json!({"prompt": "p", "completion": "c"})])).unwrap();
    let opts = LoadOptions::default();
    let e = data_finqa::load_file_limited(&path, &opts, 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit"), "{e}");
    assert!(data_finqa::load_file_limited(&path, &opts, 1 << 20).is_ok());
    let e = parse(
        "{\"prompt\": 1}\n{\"completion\": \"c\"}\n",
        DataFormat::PromptCompletion,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("record 0") && e.contains("record 1"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
