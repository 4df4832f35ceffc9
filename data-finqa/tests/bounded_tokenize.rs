//! Tokenizing a record far longer than any sequence takes memory bounded by `max_length`, not
//! by the record, and gives the tokens that whole-text tokenization would give.
//!
//! The peak is measured by a counting global allocator (this file is its own test binary, and
//! its tests run one at a time under a lock so that they do not see each other's memory).

mod common;

use data_finqa::{
    tokenize::tokenize_record, tokenize_pairs, PromptCompletion, Record, TokenizeOptions,
    TruncationPolicy,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

static SERIAL: Mutex<()> = Mutex::new(());

/// Bytes allocated at the peak of `f` above what was live when it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

/// Words of the synthetic tokenizer's training text, so that tokens are realistic (merged).
fn long_text(bytes: usize, seed: u64) -> String {
    let words = [
        "revenue",
        "the",
        "of",
        "million",
        "in",
        "2019",
        "net",
        "income",
        "was",
        "$",
        "12.5",
        "operating",
        "total",
        "and",
        "expenses",
        "increased",
        "%",
        "year",
        "cash",
        "assets",
    ];
    let mut s = String::with_capacity(bytes + 16);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while s.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(words[(x % words.len() as u64) as usize]);
        s.push(' ');
    }
    s
}

const MAX_LENGTH: usize = 256;
/// Generous: the bounded text is a few hundred KiB at this max length, and the tokenizer
/// takes a few hundred bytes per byte of text it encodes. Whole-text tokenization of the
/// 8 MiB records below takes gigabytes.
const PEAK_LIMIT: usize = 256 << 20;

fn opts(policy: TruncationPolicy) -> TokenizeOptions {
    TokenizeOptions {
        max_length: MAX_LENGTH,
        eos_id: common::eos(),
        policy,
    }
}

#[test]
fn a_huge_finqa_record_is_truncated_with_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tok = common::tokenizer();
    let record = Record {
        id: "huge".into(),
        pre_text: vec![long_text(8 << 20, 1)],
        post_text: vec![long_text(1 << 20, 2)],
        table: vec![vec!["year".into(), "2019".into()]],
        question: "what was the change in revenue?".into(),
        answer: "12.5".into(),
        final_result: None,
        exe_ans: None,
        program: None,
        gold_inds: None,
    };
    for policy in [TruncationPolicy::KeepAnswer, TruncationPolicy::Seed] {
        let (ex, peak) = peak_of(|| tokenize_record(tok, &record, &opts(policy)).unwrap());
        let ex = ex.expect("the record fits once its context is cut");
        assert!(
            peak < PEAK_LIMIT,
            "{policy}: peak {peak} bytes tokenizing a 9 MiB record"
        );
        // Keep-answer may stop a token or two short (merges across the cut).
        assert!(
            (MAX_LENGTH - 4..=MAX_LENGTH).contains(&ex.input_ids.len()),
            "{policy}: {}",
            ex.input_ids.len()
        );
        assert!(ex.context_trimmed, "{policy}");
        // keep-answer keeps the question, the answer and the EOS.
        if policy == TruncationPolicy::KeepAnswer {
            assert!(!ex.answer_truncated);
            assert!(ex
                .prompt_text
                .ends_with("Question: what was the change in revenue?\nAnswer:"));
            assert_eq!(ex.target_text, " 12.5");
        }
    }
}

#[test]
fn a_huge_prompt_keeps_exactly_the_tokens_of_whole_text_tokenization() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tok = common::tokenizer();
    let completion = " 42".to_string();
    // Small enough to tokenize whole for the reference, far above the bound.
    let prompt = long_text(2 << 20, 3);
    let pair = PromptCompletion {
        id: "p".into(),
        prompt: prompt.clone(),
        completion: completion.clone(),
    };
    let (set, peak) = peak_of(|| {
        tokenize_pairs(
            tok,
            std::slice::from_ref(&pair),
            &opts(TruncationPolicy::KeepAnswer),
        )
        .unwrap()
    });
    assert!(
        peak < PEAK_LIMIT / 4,
        "peak {peak} bytes for a 2 MiB prompt"
    );
    let ex = &set.examples[0];
    // Whole-text tokenization, the reference: it takes more than the limit above, so the
    // limit tells bounded from unbounded.
    let (whole, whole_peak) = peak_of(|| tok.encode(prompt.as_str(), false).unwrap());
    assert!(
        whole_peak > PEAK_LIMIT / 4,
        "whole-text tokenization took only {whole_peak} bytes"
    );
    let target = tok.encode(completion.as_str(), false).unwrap();
    let budget = MAX_LENGTH - target.get_ids().len() - 1;
    let want: Vec<u32> = whole.get_ids()[whole.get_ids().len() - budget..].to_vec();
    assert_eq!(&ex.input_ids[..ex.prompt_len], &want[..]);
    assert_eq!(ex.input_ids.len(), MAX_LENGTH);
    // The seed's right truncation keeps the head instead.
    let set = tokenize_pairs(tok, &[pair], &opts(TruncationPolicy::Seed)).unwrap();
    assert_eq!(set.examples[0].input_ids[..], whole.get_ids()[..MAX_LENGTH]);
}
