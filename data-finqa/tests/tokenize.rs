//! Labels, truncation policies and the tokenized set, on synthetic and real records.

mod common;

use data_finqa::prompt::{context_pieces, prompt_from_pieces, seed_prompt};
use data_finqa::synthetic::generate;
use data_finqa::tokenize::tokenize_record;
use data_finqa::{
    load_file, summary, tokenize_pairs, tokenize_records, LoadOptions, PromptCompletion, Record,
    TokenizeOptions, TruncationPolicy, IGNORE_INDEX,
};
use tokenizers::Tokenizer;

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).unwrap().get_ids().to_vec()
}

fn opts(max_length: usize, policy: TruncationPolicy) -> TokenizeOptions {
    TokenizeOptions {
        max_length,
        eos_id: common::eos(),
        policy,
    }
}

fn real_records() -> Option<Vec<Record>> {
    let dir = common::samples_dir()?;
    let mut all = Vec::new();
    for f in [
        "train_sample100.json",
        "dev_sample200.json",
        "test_sample100.json",
    ] {
        all.extend(
            load_file(dir.join(f), &LoadOptions::default())
                .unwrap()
                .records,
        );
    }
    Some(all)
}

/// Checks the label invariants of every example and that the learned tokens are exactly the
/// answer followed by EOS (or a prefix when the answer was cut).
fn check_labels(tok: &Tokenizer, records: &[Record], set: &data_finqa::TokenizedSet) {
    let eos = common::eos();
    for e in &set.examples {
        let rec = records.iter().find(|r| r.id == e.id).unwrap();
        assert_eq!(e.input_ids.len(), e.labels.len());
        assert!(e.input_ids.len() <= set.options.max_length);
        let mut answer_eos = ids(tok, &format!(" {}", rec.resolved_answer().unwrap().0));
        answer_eos.push(eos);
        assert_eq!(e.full_target_len, answer_eos.len());
        for (i, (&t, &l)) in e.input_ids.iter().zip(&e.labels).enumerate() {
            if i < e.prompt_len {
                assert_eq!(l, IGNORE_INDEX, "{} prompt position {i}", e.id);
            } else {
                assert_eq!(l, t as i32, "{} target position {i}", e.id);
            }
        }
        let learned: Vec<u32> = e.input_ids[e.prompt_len..].to_vec();
        assert_eq!(learned, answer_eos[..learned.len()], "{}", e.id);
        assert_eq!(
            e.answer_truncated,
            learned.len() < answer_eos.len(),
            "{}",
            e.id
        );
        if !e.answer_truncated {
            assert_eq!(*e.input_ids.last().unwrap(), eos, "EOS is kept and learned");
        }
        // The prompt ids are the tokenizer's ids of the prompt text (seed policy may cut them).
        let p = ids(tok, &e.prompt_text);
        assert_eq!(e.prompt_ids(), &p[..e.prompt_len], "{}", e.id);
    }
}

#[test]
fn untruncated_examples_are_prompt_then_answer_then_eos() {
    let tok = common::tokenizer();
    let eos = common::eos();
    let records = generate(50, 21);
    for policy in [TruncationPolicy::KeepAnswer, TruncationPolicy::Seed] {
        let set = tokenize_records(tok, &records, &opts(4096, policy)).unwrap();
        assert_eq!(set.examples.len(), 50);
        for (e, r) in set.examples.iter().zip(&records) {
            let mut want = ids(tok, &seed_prompt(r));
            let n_prompt = want.len();
            want.extend(ids(tok, &format!(" {}", r.answer)));
            want.push(eos);
            assert_eq!(e.input_ids, want);
            assert_eq!(e.prompt_len, n_prompt);
            assert_eq!(e.prompt_text, seed_prompt(r));
            assert!(!e.context_trimmed && !e.answer_truncated);
            let labels: Vec<i32> = want
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < n_prompt { -100 } else { t as i32 })
                .collect();
            assert_eq!(e.labels, labels);
        }
        check_labels(tok, &records, &set);
    }
}

#[test]
fn keep_answer_never_loses_the_answer_and_seed_does() {
    let tok = common::tokenizer();
    let records = generate(200, 8);
    let lengths: Vec<usize> = tokenize_records(tok, &records, &opts(8192, TruncationPolicy::Seed))
        .unwrap()
        .lengths();
    let mut sorted = lengths.clone();
    sorted.sort_unstable();
    // A limit below most full lengths.
    let max_length = sorted[sorted.len() / 5];
    let keep = tokenize_records(
        tok,
        &records,
        &opts(max_length, TruncationPolicy::KeepAnswer),
    )
    .unwrap();
    assert_eq!(keep.answers_truncated(), 0);
    assert!(keep.dropped.is_empty());
    let trimmed = keep.examples.iter().filter(|e| e.context_trimmed).count();
    assert!(trimmed >= 150, "trimmed {trimmed}");
    check_labels(tok, &records, &keep);
    // What the cut removed is the untruncated length minus the kept one, trimmed or not.
    for (e, full) in keep.examples.iter().zip(&lengths) {
        assert_eq!(e.full_len, *full, "{}", e.id);
        assert_eq!(e.tokens_cut(), full - e.input_ids.len(), "{}", e.id);
        assert_eq!(e.tokens_cut() > 0, e.context_trimmed, "{}", e.id);
    }
    for (e, r) in keep.examples.iter().zip(&records) {
        // The question is intact and the cut happened only in the context.
        assert!(e
            .prompt_text
            .ends_with(&format!("\nQuestion: {}\nAnswer:", r.question)));
        assert!(e.prompt_text.starts_with("Context:\n"));
        if e.context_trimmed {
            // Tight: one token less of budget would not have fitted... at least it is close.
            assert!(
                e.input_ids.len() + 8 >= max_length,
                "{} of {max_length}",
                e.input_ids.len()
            );
        }
    }
    let seed = tokenize_records(tok, &records, &opts(max_length, TruncationPolicy::Seed)).unwrap();
    check_labels(tok, &records, &seed);
    for (e, full) in seed.examples.iter().zip(&lengths) {
        assert_eq!(e.full_len, *full, "{}", e.id);
    }
    let cut = lengths.iter().filter(|&&l| l > max_length).count();
    assert_eq!(seed.answers_truncated(), cut);
    assert!(cut >= 150);
}

#[test]
fn keep_answer_trims_the_longest_piece_first() {
    let tok = common::tokenizer();
    let mut r = generate(1, 3).remove(0);
    let long = "the company reported strong results across all segments .".repeat(30);
    r.pre_text = vec![long.clone()];
    r.post_text = vec![long];
    let full = tokenize_record(tok, &r, &opts(100_000, TruncationPolicy::KeepAnswer))
        .unwrap()
        .unwrap();
    let max_length = full.input_ids.len() - 200;
    let e = tokenize_record(tok, &r, &opts(max_length, TruncationPolicy::KeepAnswer))
        .unwrap()
        .unwrap();
    assert!(e.context_trimmed && !e.answer_truncated);
    // The table (short) is intact; both texts lost their tails equally.
    let table = context_pieces(&r)[1].clone();
    assert!(e.prompt_text.contains(&format!("\n{table}\n")));
    let pre_kept = e.prompt_text["Context:\n".len()..]
        .split('\n')
        .next()
        .unwrap();
    let post_kept = e
        .prompt_text
        .split('\n')
        .nth(1 + r.table.len() + 1)
        .unwrap();
    assert!(pre_kept.len() < r.pre_text[0].len() && r.pre_text[0].starts_with(pre_kept));
    assert!(r.post_text[0].starts_with(post_kept));
    let (a, b) = (ids(tok, pre_kept).len(), ids(tok, post_kept).len());
    assert!(a.abs_diff(b) <= 2, "pre {a} post {b}");
}

#[test]
fn too_long_question_is_dropped_not_cut() {
    let tok = common::tokenizer();
    let mut r = generate(1, 4).remove(0);
    r.question = "why ".repeat(100);
    let d = tokenize_record(tok, &r, &opts(64, TruncationPolicy::KeepAnswer))
        .unwrap()
        .unwrap_err();
    assert_eq!(d.id, r.id);
    assert!(d.reason.contains("exceed max_length 64"), "{}", d.reason);
    let set = tokenize_records(tok, &[r], &opts(64, TruncationPolicy::KeepAnswer)).unwrap();
    assert_eq!(set.dropped.len(), 1);
    assert!(set.examples.is_empty());
    assert!(tokenize_records(tok, &[], &opts(1, TruncationPolicy::KeepAnswer)).is_err());
}

#[test]
fn evidence_policy_uses_gold_facts_in_document_order() {
    let tok = common::tokenizer();
    let mut records = generate(30, 9);
    records[0].gold_inds = None;
    let set = tokenize_records(tok, &records, &opts(4096, TruncationPolicy::Evidence)).unwrap();
    assert_eq!(set.evidence_fallbacks, 1);
    assert!(!set.examples[0].used_evidence);
    assert_eq!(set.examples[0].prompt_text, seed_prompt(&records[0]));
    for (e, r) in set.examples.iter().zip(&records).skip(1) {
        assert!(e.used_evidence);
        let facts: Vec<&str> = r
            .gold_facts_in_document_order()
            .iter()
            .map(|f| f.text.as_str())
            .collect();
        let want = format!(
            "Context:\n{}\nQuestion: {}\nAnswer:",
            facts.join("\n"),
            r.question
        );
        assert_eq!(e.prompt_text, want);
        assert!(e.input_ids.len() < ids(tok, &seed_prompt(r)).len());
    }
    check_labels(tok, &records, &set);
}

#[test]
fn prompt_completion_masks_and_left_trims_the_prompt() {
    let tok = common::tokenizer();
    let eos = common::eos();
    let pairs = vec![
        PromptCompletion {
            id: "a".into(),
            prompt: "Translate: the revenue of 2019\nAnswer:".into(),
            completion: " $ 1000".into(),
        },
        PromptCompletion {
            id: "b".into(),
            prompt: "net income ".repeat(50) + "\nQuestion: what?",
            completion: "42".into(),
        },
    ];
    let set = tokenize_pairs(tok, &pairs, &opts(40, TruncationPolicy::KeepAnswer)).unwrap();
    let a = &set.examples[0];
    let mut want = ids(tok, &pairs[0].prompt);
    let np = want.len();
    want.extend(ids(tok, " $ 1000"));
    want.push(eos);
    assert_eq!(a.input_ids, want);
    assert_eq!(a.prompt_len, np);
    assert!(a.labels[..np].iter().all(|&l| l == IGNORE_INDEX));
    assert!(a.labels[np..]
        .iter()
        .zip(&want[np..])
        .all(|(&l, &t)| l == t as i32));
    let b = &set.examples[1];
    assert_eq!(b.input_ids.len(), 40);
    assert!(b.context_trimmed && !b.answer_truncated);
    let full = ids(tok, &pairs[1].prompt);
    // The kept prompt is the tail of the prompt's tokens, and its text is the prompt's tail.
    assert_eq!(b.prompt_ids(), &full[full.len() - b.prompt_len..]);
    assert!(pairs[1].prompt.ends_with(&b.prompt_text));
    assert!(b.prompt_text.ends_with("\nQuestion: what?"));
    assert_eq!(
        &b.input_ids[b.prompt_len..],
        &[ids(tok, "42"), vec![eos]].concat()[..]
    );
    // Seed policy: cut at the right, answer lost.
    let seed = tokenize_pairs(tok, &pairs, &opts(40, TruncationPolicy::Seed)).unwrap();
    assert!(seed.examples[1].answer_truncated);
    assert_eq!(seed.examples[1].learned_len(), 0);
    // A completion longer than max_length is cut and reported.
    let long = vec![PromptCompletion {
        id: "c".into(),
        prompt: "p".into(),
        completion: "x y z ".repeat(20),
    }];
    let set = tokenize_pairs(tok, &long, &opts(8, TruncationPolicy::KeepAnswer)).unwrap();
    assert_eq!(set.examples[0].prompt_len, 0);
    assert!(set.examples[0].answer_truncated);
    assert_eq!(set.examples[0].input_ids.len(), 8);
}

#[test]
fn real_records_under_each_policy() {
    let Some(records) = real_records() else {
        return;
    };
    let tok = common::tokenizer();
    let max_length = 512;
    let keep = tokenize_records(
        tok,
        &records,
        &opts(max_length, TruncationPolicy::KeepAnswer),
    )
    .unwrap();
    assert_eq!(keep.examples.len() + keep.dropped.len(), 400);
    assert!(keep.dropped.is_empty(), "{:?}", keep.dropped.first());
    assert_eq!(keep.answers_truncated(), 0);
    check_labels(tok, &records, &keep);
    for (e, r) in keep.examples.iter().zip(&records) {
        assert!(e
            .prompt_text
            .ends_with(&format!("\nQuestion: {}\nAnswer:", r.question)));
        if !e.context_trimmed {
            assert_eq!(e.prompt_text, seed_prompt(r));
        }
    }
    let seed = tokenize_records(tok, &records, &opts(max_length, TruncationPolicy::Seed)).unwrap();
    check_labels(tok, &records, &seed);
    // With a 512 limit the seed loses the answer in most FinQA examples.
    assert!(
        seed.answers_truncated() > 300,
        "{}",
        seed.answers_truncated()
    );
    let ev =
        tokenize_records(tok, &records, &opts(max_length, TruncationPolicy::Evidence)).unwrap();
    check_labels(tok, &records, &ev);
    assert_eq!(ev.evidence_fallbacks, 0);
    assert_eq!(ev.answers_truncated(), 0);
    let s = summary(&keep, 0);
    assert_eq!(s.examples, 400);
    assert_eq!(s.answers_truncated, 0);
    assert!(s.tokens_max <= max_length && s.tokens_p50 <= s.tokens_p90);
    println!("{s}");
    let text = format!("{s}");
    assert!(text.contains("answers truncated 0"));
    // Frame helper agrees with the template.
    let r = &records[0];
    assert_eq!(
        prompt_from_pieces(&context_pieces(r), &r.question),
        seed_prompt(r)
    );
}

#[test]
fn keep_answer_cuts_multibyte_text_on_char_boundaries() {
    let tok = common::tokenizer();
    let mut r = generate(1, 12).remove(0);
    r.pre_text = vec!["€ 5 — naïve ☃ 😀 growth".repeat(20)];
    r.post_text = vec!["ünïcödé 😀😀 tail".repeat(20)];
    let full = tokenize_record(tok, &r, &opts(100_000, TruncationPolicy::KeepAnswer))
        .unwrap()
        .unwrap()
        .input_ids
        .len();
    let mut trimmed = 0;
    for max_length in (60..full).step_by(7) {
        let e = tokenize_record(tok, &r, &opts(max_length, TruncationPolicy::KeepAnswer))
            .unwrap()
            .unwrap();
        assert!(e.input_ids.len() <= max_length);
        assert!(!e.answer_truncated);
        assert_eq!(e.prompt_ids(), &ids(tok, &e.prompt_text)[..]);
        let tail = format!("\nQuestion: {}\nAnswer:", r.question);
        assert!(e.prompt_text.ends_with(&tail));
        let pre = e.prompt_text["Context:\n".len()..]
            .split('\n')
            .next()
            .unwrap();
        assert!(r.pre_text[0].starts_with(pre));
        trimmed += usize::from(e.context_trimmed);
    }
    assert!(trimmed > 10);
}
