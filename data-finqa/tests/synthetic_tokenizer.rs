//! The synthetic generator and tokenizer: determinism, shape, round trips.

mod common;

use data_finqa::prompt::{seed_prompt, target_text};
use data_finqa::synthetic::{self, build_tokenizer, eos_id, generate, EOS_TOKEN};
use data_finqa::ExeAns;

#[test]
fn tokenizer_is_deterministic_and_falcon_shaped() {
    let a = build_tokenizer(768, 3).unwrap();
    let b = build_tokenizer(768, 3).unwrap();
    // The whole serialized tokenizer (vocab, merges, pre-tokenizer) is identical.
    assert_eq!(a.to_string(false).unwrap(), b.to_string(false).unwrap());
    let text = seed_prompt(&generate(1, 99)[0]);
    assert_eq!(
        a.encode(text.as_str(), false).unwrap().get_ids(),
        b.encode(text.as_str(), false).unwrap().get_ids()
    );
    let vocab = a.get_vocab_size(true);
    assert!((700..=768).contains(&vocab), "vocab {vocab}");
    assert_eq!(eos_id(&a).unwrap(), 0);
    assert_eq!(a.id_to_token(0).as_deref(), Some(EOS_TOKEN));
    // A different seed trains on other records: a different tokenizer.
    let c = build_tokenizer(768, 4).unwrap();
    assert_ne!(a.to_string(false).unwrap(), c.to_string(false).unwrap());
    let json = a.to_string(false).unwrap();
    assert!(
        json.contains("\"ByteLevel\""),
        "byte-level pre-tokenizer/decoder"
    );
    assert!(build_tokenizer(100, 3).is_err());
}

#[test]
fn tokenizer_round_trips_any_text_and_splits_at_the_answer() {
    let tok = common::tokenizer();
    let eos = common::eos();
    let texts = [
        "Context:\nrevenue was $ 1,234.5 million ( 12.5 % ) in 2019 .\nQuestion: what?\nAnswer:",
        "unicode: € 5 — naïve ☃ 😀",
        "tabs\tand\nnewlines  double  spaces",
    ];
    for t in texts {
        let enc = tok.encode(t, false).unwrap();
        assert!(!enc.get_ids().contains(&eos));
        let back = tok.decode(enc.get_ids(), false).unwrap();
        assert_eq!(back, t);
    }
    // Encoding prompt and target apart gives the ids of encoding them together.
    for r in generate(200, 11) {
        let p = seed_prompt(&r);
        let t = target_text(&r.resolved_answer().unwrap().0);
        let mut apart = tok.encode(p.as_str(), false).unwrap().get_ids().to_vec();
        apart.extend_from_slice(tok.encode(t.as_str(), false).unwrap().get_ids());
        let joint = tok
            .encode(format!("{p}{t}"), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(apart, joint, "record {}", r.id);
    }
    // The special token is recognized in text.
    let enc = tok.encode(format!("a{EOS_TOKEN}"), false).unwrap();
    assert_eq!(enc.get_ids().last(), Some(&eos));
}

#[test]
fn generator_is_deterministic_and_answers_are_computed() {
    let a = generate(300, 5);
    assert_eq!(a, generate(300, 5));
    assert_ne!(a, generate(300, 6));
    let ids: std::collections::HashSet<&str> = a.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), a.len(), "ids are unique");
    // Record i depends only on (seed, i).
    assert_eq!(&generate(10, 5)[..], &a[..10]);
    let mut kinds = [0usize; 4];
    for r in &a {
        let q = &r.question;
        let exe = match r.exe_ans {
            Some(ExeAns::Number(v)) => v,
            _ => panic!("numeric exe_ans expected"),
        };
        // Find the numbers of the table rows named in the question.
        let row = |name: &str| -> Vec<f64> {
            let row = r
                .table
                .iter()
                .find(|row| row[0] == name)
                .expect("row exists");
            row[1..]
                .iter()
                .map(|c| c.trim_start_matches("$ ").parse::<f64>().unwrap())
                .collect()
        };
        let item_after = |prefix: &str| -> String {
            let rest = &q[prefix.len()..];
            rest.split(" from ")
                .next()
                .unwrap()
                .split(" in ")
                .next()
                .unwrap()
                .split(" to ")
                .next()
                .unwrap()
                .to_string()
        };
        if q.starts_with("what was the percentage change in ") {
            kinds[3] += 1;
            let v = row(&item_after("what was the percentage change in "));
            let x = (v[0] - v[2]) / v[2];
            assert!((exe - x).abs() < 1e-5);
            assert_eq!(r.answer, format!("{:.1}%", 100.0 * x));
        } else if q.starts_with("what was the change in ") {
            kinds[1] += 1;
            let v = row(&item_after("what was the change in "));
            assert_eq!(exe, v[0] - v[1]);
            assert_eq!(r.answer, format!("{}", (v[0] - v[1]) as i64));
        } else if q.starts_with("what is the ratio of ") {
            kinds[2] += 1;
            let a_name = item_after("what is the ratio of ");
            let rest = q.split(" to ").nth(1).unwrap();
            let b_name = rest.split(" in ").next().unwrap();
            let year = rest.split(" in ").nth(1).unwrap().trim_end_matches('?');
            let col = r.table[0].iter().position(|h| h == year).unwrap() - 1;
            let x = row(&a_name)[col] / row(b_name)[col];
            assert!((exe - x).abs() < 1e-5);
            assert_eq!(r.answer, format!("{x:.2}"));
        } else {
            kinds[0] += 1;
            assert!(q.starts_with("what was the "));
            assert_eq!(r.answer.parse::<f64>().unwrap(), exe);
        }
        assert!(r.gold_inds.as_ref().is_some_and(|g| !g.is_empty()));
    }
    assert!(kinds.iter().all(|&k| k > 30), "question kinds {kinds:?}");
    let _ = synthetic::TOKENIZER_CORPUS_RECORDS;
}
