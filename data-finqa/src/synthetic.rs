//! Synthetic FinQA-style records and a small tokenizer trained on them.
//!
//! [`generate`] builds records shaped like FinQA's: lower-cased, space-tokenized sentences
//! before and after a table of line items across three years (row 0 is the header, column 0
//! the row names, the first data row with `$ ` amounts), and one question of four kinds:
//!
//! | kind | question | answer | `exe_ans` | program |
//! |---|---|---|---|---|
//! | lookup | what was the {item} in {y}? | `v` | v | none |
//! | difference | what was the change in {item} from {y0} to {y1}? | `v1 - v0` | same | `subtract(v1, v0)` |
//! | ratio | what is the ratio of {a} to {b} in {y}? | `a / b`, 2 decimals | a/b rounded to 5 decimals | `divide(a, b)` |
//! | percentage change | what was the percentage change in {item} from {y0} to {y1}? | `100 (v1 - v0) / v0`, 1 decimal, `%` | the fraction, rounded to 5 decimals | `subtract(v1, v0), divide(#0, v0)` |
//!
//! `gold_inds` holds the table rows used, rendered as FinQA does ("the {row} of {column} is
//! {cell} ;" for each column). Everything is a pure function of `(n, seed)` through
//! [`SplitMix64`].
//!
//! [`build_tokenizer`] trains a byte-level BPE (Falcon's pre-tokenizer layout: punctuation
//! split, GPT-2 byte-level mapping, digit runs split into groups of at most three) with the
//! `tokenizers` crate's BPE trainer on prompts and answers of synthetic records. Its special
//! token `<|endoftext|>` (Falcon's EOS) has id 0. Training is deterministic: the initial
//! alphabet is sorted and merges are chosen by count, ties by pair ids.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{DataError, Result};
use crate::prompt::{seed_prompt, target_text};
use crate::record::{ExeAns, GoldFact, Record};
use crate::rng::SplitMix64;

/// Falcon's end-of-text token, the EOS (and pad) of the synthetic tokenizer.
pub const EOS_TOKEN: &str = "<|endoftext|>";

const COMPANIES: [(&str, &str); 8] = [
    ("ACME", "acme corporation"),
    ("GLBX", "globex inc."),
    ("INIT", "initech holdings"),
    ("UMBR", "umbrella group"),
    ("STRK", "stark industries"),
    ("WAYN", "wayne enterprises"),
    ("HOOL", "hooli inc."),
    ("VAND", "vandelay industries"),
];

const ITEMS: [&str; 12] = [
    "net revenue",
    "operating income",
    "net income",
    "total expenses",
    "interest expense",
    "capital expenditures",
    "cash and cash equivalents",
    "long-term debt",
    "research and development",
    "depreciation and amortization",
    "income tax expense",
    "total assets",
];

const FILLER: [&str; 6] = [
    "the following table presents selected financial data ( in millions ) .",
    "amounts are presented in accordance with generally accepted accounting principles .",
    "see note 4 to the consolidated financial statements for further discussion .",
    "certain prior year amounts have been reclassified to conform to the current presentation .",
    "management believes these measures provide useful information to investors .",
    "the company operates in a single reportable segment .",
];

const POST: [&str; 5] = [
    "the change was primarily due to higher volume and pricing .",
    "the decrease reflects lower demand in the second half of the year .",
    "results include the impact of foreign currency exchange rates .",
    "we expect these trends to continue in the next fiscal year .",
    "no single customer accounted for more than 10% ( 10 % ) of revenue .",
];

fn round5(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}

/// Renders a table row as a FinQA gold fact: "the {row} of {col} is {cell} ;" per column.
fn table_fact(header: &[String], row: &[String]) -> String {
    let name = row.first().map(String::as_str).unwrap_or("");
    row.iter()
        .enumerate()
        .skip(1)
        .map(|(c, cell)| {
            let col = header.get(c).map(String::as_str).unwrap_or("");
            format!("the {name} of {col} is {cell} ;")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `n` synthetic FinQA-style records, deterministic in `(n, seed)`; record `i` depends only
/// on `(seed, i)`. Ids are unique within the set (`TICKER/YEAR/page_{i+1}.pdf-k`).
pub fn generate(n: usize, seed: u64) -> Vec<Record> {
    (0..n).map(|i| generate_one(seed, i)).collect()
}

fn generate_one(seed: u64, i: usize) -> Record {
    let mut rng = SplitMix64::for_stream(seed, i as u64);
    let (ticker, company) = COMPANIES[rng.below(COMPANIES.len() as u64) as usize];
    let year = rng.range_inclusive(2008, 2019);
    let years = [year, year - 1, year - 2];
    let n_rows = 3 + rng.below(3) as usize;
    let mut items: Vec<&str> = ITEMS.to_vec();
    rng.shuffle(&mut items);
    items.truncate(n_rows);
    // values[r][c]: row r, year column c (c = 0 is the latest year).
    let values: Vec<[i64; 3]> = (0..n_rows)
        .map(|_| {
            let base = rng.range_inclusive(150, 20_000);
            let mut v = [base; 3];
            for c in 1..3 {
                let pct = rng.range_inclusive(-25, 25);
                v[c] = (v[c - 1] * (100 + pct) / 100).max(50);
            }
            v
        })
        .collect();
    let mut header = vec![String::new()];
    header.extend(years.iter().map(|y| y.to_string()));
    let mut table = vec![header.clone()];
    for (r, item) in items.iter().enumerate() {
        let mut row = vec![item.to_string()];
        for v in values[r] {
            row.push(if r == 0 {
                format!("$ {v}")
            } else {
                v.to_string()
            });
        }
        table.push(row);
    }
    let mut pre_text = vec![format!(
        "{company} notes to consolidated financial statements for the year ended december 31 , {year} ."
    )];
    for _ in 0..1 + rng.below(3) {
        if let Some(s) = rng.choose(&FILLER) {
            pre_text.push(s.to_string());
        }
    }
    let mut post_text = Vec::new();
    for _ in 0..1 + rng.below(2) {
        if let Some(s) = rng.choose(&POST) {
            post_text.push(s.to_string());
        }
    }
    let r = rng.below(n_rows as u64) as usize;
    let item = items[r];
    let (question, answer, exe, program, rows) = match rng.below(4) {
        0 => {
            let c = rng.below(3) as usize;
            let v = values[r][c];
            (
                format!("what was the {item} in {}?", years[c]),
                v.to_string(),
                v as f64,
                None,
                vec![r],
            )
        }
        1 => {
            let (v1, v0) = (values[r][0], values[r][1]);
            (
                format!(
                    "what was the change in {item} from {} to {}?",
                    years[1], years[0]
                ),
                (v1 - v0).to_string(),
                (v1 - v0) as f64,
                Some(format!("subtract({v1}, {v0})")),
                vec![r],
            )
        }
        2 => {
            let r2 = (r + 1 + rng.below(n_rows as u64 - 1) as usize) % n_rows;
            let c = rng.below(3) as usize;
            let (a, b) = (values[r][c], values[r2][c]);
            let x = a as f64 / b as f64;
            (
                format!(
                    "what is the ratio of {item} to {} in {}?",
                    items[r2], years[c]
                ),
                format!("{x:.2}"),
                round5(x),
                Some(format!("divide({a}, {b})")),
                vec![r, r2],
            )
        }
        _ => {
            let (v1, v0) = (values[r][0], values[r][2]);
            let x = (v1 - v0) as f64 / v0 as f64;
            (
                format!(
                    "what was the percentage change in {item} from {} to {}?",
                    years[2], years[0]
                ),
                format!("{:.1}%", 100.0 * x),
                round5(x),
                Some(format!("subtract({v1}, {v0}), divide(#0, {v0})")),
                vec![r],
            )
        }
    };
    let mut rows = rows;
    rows.sort_unstable();
    let gold = rows
        .iter()
        .map(|&r| {
            let k = r + 1;
            GoldFact::from_key(&format!("table_{k}"), table_fact(&header, &table[k]))
        })
        .collect();
    Record {
        // The page number is the record number, so ids are unique within a generated set.
        id: format!("{ticker}/{year}/page_{}.pdf-{}", i + 1, 1 + rng.below(3)),
        pre_text,
        post_text,
        table,
        question,
        final_result: Some(answer.clone()),
        answer,
        exe_ans: Some(ExeAns::Number(exe)),
        program,
        gold_inds: Some(gold),
    }
}

/// `n` records for the default run's demonstration that the adapters learn, deterministic in
/// `(n, seed)`: a short FinQA-style statement (one sentence and a two-row table of one year)
/// and the question "what is the stock ticker of {company}?", answered by the ticker
/// (`ACME`, ...). A random tiny base cannot copy numbers out of a table after a minute of
/// adapter training, but it can learn this mapping from the company's name to its ticker, so
/// held-out questions go from wrong to right within the default run. Ids are unique.
pub fn generate_demo(n: usize, seed: u64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut rng = SplitMix64::for_stream(seed ^ 0xD3E0, i as u64);
            let (ticker, company) = COMPANIES[rng.below(COMPANIES.len() as u64) as usize];
            let year = rng.range_inclusive(2008, 2019);
            let mut items: Vec<&str> = ITEMS.to_vec();
            rng.shuffle(&mut items);
            let mut table = vec![vec![String::new(), year.to_string()]];
            for item in &items[..2] {
                table.push(vec![
                    item.to_string(),
                    rng.range_inclusive(100, 999).to_string(),
                ]);
            }
            Record {
                id: format!("{ticker}/{year}/page_{}.pdf-1", i + 1),
                pre_text: vec![format!(
                    "{company} notes to consolidated financial statements for {year} ."
                )],
                post_text: Vec::new(),
                table,
                question: format!("what is the stock ticker of {company}?"),
                answer: ticker.to_string(),
                final_result: Some(ticker.to_string()),
                exe_ans: Some(ExeAns::Text(ticker.to_string())),
                program: None,
                gold_inds: None,
            }
        })
        .collect()
}

/// Number of synthetic records whose prompts and answers form the tokenizer's corpus.
pub const TOKENIZER_CORPUS_RECORDS: usize = 2000;

/// Trains the synthetic byte-level BPE tokenizer (see the module docs) with `vocab_size`
/// entries (at least 300; 512-2048 is the intended range) on records of `generate(2000, seed)`.
/// Same arguments, same tokenizer.
pub fn build_tokenizer(vocab_size: usize, seed: u64) -> Result<Tokenizer> {
    if vocab_size < 300 {
        return Err(DataError::InvalidOption {
            name: "vocab_size",
            message: format!(
                "must be at least 300 (256 byte symbols + {EOS_TOKEN} + merges), got {vocab_size}"
            ),
        });
    }
    let records = generate(TOKENIZER_CORPUS_RECORDS, seed);
    let corpus: Vec<String> = records
        .iter()
        .map(|r| {
            let answer = r.resolved_answer().map(|a| a.0).unwrap_or_default();
            format!("{}{}", seed_prompt(r), target_text(&answer))
        })
        .collect();

    let mut tokenizer = Tokenizer::new(BPE::default());
    let split = Split::new(
        SplitPattern::Regex("[0-9][0-9][0-9]".to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| DataError::TokenizerBuild(e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        Punctuation::new(SplitDelimiterBehavior::Contiguous).into(),
        ByteLevel::new(false, true, true).into(),
        Digits::new(false).into(),
        split.into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let alphabet: std::collections::HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
        .initial_alphabet(alphabet)
        .build();
    let mut trainer: TrainerWrapper = trainer.into();
    tokenizer
        .train(&mut trainer, corpus.iter())
        .map_err(|e| DataError::TokenizerBuild(e.to_string()))?;
    Ok(tokenizer)
}

/// The id of `<|endoftext|>` in a tokenizer (Falcon: 11; the synthetic tokenizer: 0).
pub fn eos_id(tokenizer: &Tokenizer) -> Result<u32> {
    tokenizer
        .token_to_id(EOS_TOKEN)
        .ok_or_else(|| DataError::InvalidOption {
            name: "tokenizer",
            message: format!("the tokenizer has no {EOS_TOKEN} token"),
        })
}
