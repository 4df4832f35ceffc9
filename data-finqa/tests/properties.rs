//! Property tests: truncation invariants for random limits, number parsing of random
//! renderings, and the loss target count of random batches.

mod common;

use data_finqa::metrics::{numeric_match, parse_number};
use data_finqa::prompt::seed_prompt;
use data_finqa::synthetic::generate;
use data_finqa::tokenize::tokenize_record;
use data_finqa::{Batch, TokenizeOptions, TokenizedExample, TruncationPolicy, IGNORE_INDEX};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn keep_answer_holds_for_any_limit(seed in 0u64..1000, cut in 0.0f64..1.0) {
        let tok = common::tokenizer();
        let eos = common::eos();
        let r = generate(1, seed).remove(0);
        let full = tok.encode(seed_prompt(&r).as_str(), false).unwrap().len();
        let mut answer = tok.encode(format!(" {}", r.answer).as_str(), false).unwrap().get_ids().to_vec();
        answer.push(eos);
        let frame = tok
            .encode(format!("Context:\n\n\n\nQuestion: {}\nAnswer:", r.question).as_str(), false)
            .unwrap()
            .len();
        let lo = frame + answer.len();
        let hi = full + answer.len();
        let max_length = lo + ((hi - lo) as f64 * cut) as usize;
        let opts = TokenizeOptions { max_length, eos_id: eos, policy: TruncationPolicy::KeepAnswer };
        let e = tokenize_record(tok, &r, &opts).unwrap().unwrap();
        prop_assert!(e.input_ids.len() <= max_length);
        prop_assert!(!e.answer_truncated);
        prop_assert_eq!(&e.input_ids[e.prompt_len..], &answer[..]);
        let question_tail = format!("\nQuestion: {}\nAnswer:", r.question);
        prop_assert!(e.prompt_text.ends_with(&question_tail));
        prop_assert_eq!(e.context_trimmed, hi > max_length);
        let p = tok.encode(e.prompt_text.as_str(), false).unwrap();
        prop_assert_eq!(e.prompt_ids(), p.get_ids());
        // One token less than the frame and answer need: dropped, never cut.
        let tight = TokenizeOptions { max_length: lo - 1, ..opts };
        prop_assert!(tokenize_record(tok, &r, &tight).unwrap().is_err());
    }

    #[test]
    fn parse_number_reads_rendered_values(
        int in 0u64..10_000_000,
        frac in 0u32..1000,
        decimals in 0u32..4,
        negative in any::<bool>(),
        style in 0usize..4,
        percent in any::<bool>(),
        dollar in any::<bool>(),
    ) {
        let frac_text = if decimals == 0 {
            String::new()
        } else {
            format!(".{:0width$}", frac % 10u32.pow(decimals), width = decimals as usize)
        };
        let grouped = {
            let s = int.to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 && style == 1 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        };
        let body = format!("{}{grouped}{frac_text}{}", if dollar { "$ " } else { "" }, if percent { "%" } else { "" });
        let text = match (negative, style) {
            (true, 2) => format!("( {body} )"),
            (true, _) => format!("-{body}"),
            (false, 3) => format!("about {body} in total"),
            (false, _) => body.clone(),
        };
        let p = parse_number(&text).unwrap();
        let magnitude: f64 = format!("{int}{frac_text}").parse().unwrap();
        prop_assert_eq!(p.value, if negative { -magnitude } else { magnitude });
        prop_assert_eq!(p.percent, percent);
        prop_assert_eq!(p.decimals, decimals);
        prop_assert!(numeric_match(&text, &text));
    }

    #[test]
    fn target_count_is_learned_labels_after_position_zero(
        rows in prop::collection::vec((0usize..6, 1usize..6), 1..6),
        multiple in prop::option::of(1usize..9),
    ) {
        let examples: Vec<TokenizedExample> = rows
            .iter()
            .enumerate()
            .map(|(k, &(np, nt))| {
                let input_ids: Vec<u32> = (0..np + nt).map(|i| (k * 100 + i) as u32 + 1).collect();
                let labels = input_ids
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| if i < np { IGNORE_INDEX } else { t as i32 })
                    .collect();
                TokenizedExample {
                    id: k.to_string(),
                    input_ids,
                    labels,
                    prompt_len: np,
                    full_target_len: nt,
                    answer_truncated: false,
                    context_trimmed: false,
                    used_evidence: false,
                    full_len: np + nt,
                    prompt_text: String::new(),
                    target_text: String::new(),
                }
            })
            .collect();
        let refs: Vec<&TokenizedExample> = examples.iter().collect();
        let b = Batch::collate(&refs, 0, multiple).unwrap();
        let longest = rows.iter().map(|&(p, t)| p + t).max().unwrap();
        prop_assert!(b.seq_len >= longest);
        prop_assert_eq!(b.seq_len % multiple.unwrap_or(1), 0);
        prop_assert!(b.seq_len < longest + multiple.unwrap_or(1));
        // A target at position 0 has no preceding token to predict it from.
        let want: usize = rows.iter().map(|&(p, t)| if p == 0 { t - 1 } else { t }).sum();
        prop_assert_eq!(b.target_token_count(), want);
        prop_assert_eq!(b.real_token_count(), rows.iter().map(|&(p, t)| p + t).sum::<usize>());
    }
}
