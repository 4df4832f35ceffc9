//! Collation, the loss target count, the sampler and its resume position.

mod common;

use data_finqa::synthetic::generate;
use data_finqa::{
    split_train_val, tokenize_records, Batch, Sampler, SamplerConfig, SamplerState,
    TokenizeOptions, TokenizedExample, TruncationPolicy, IGNORE_INDEX,
};

fn example(id: &str, prompt: &[u32], target: &[u32]) -> TokenizedExample {
    let mut input_ids = prompt.to_vec();
    input_ids.extend_from_slice(target);
    let labels = input_ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if i < prompt.len() {
                IGNORE_INDEX
            } else {
                t as i32
            }
        })
        .collect();
    TokenizedExample {
        id: id.into(),
        input_ids,
        labels,
        prompt_len: prompt.len(),
        full_target_len: target.len(),
        answer_truncated: false,
        context_trimmed: false,
        used_evidence: false,
        full_len: prompt.len() + target.len(),
        prompt_text: String::new(),
        target_text: String::new(),
    }
}

#[test]
fn collate_right_pads_and_masks() {
    let a = example("a", &[5, 6, 7], &[8, 9]);
    let b = example("b", &[3], &[4, 11]);
    let c = example("c", &[], &[12, 11]);
    let batch = Batch::collate(&[&a, &b, &c], 11, None).unwrap();
    assert_eq!((batch.batch_size, batch.seq_len), (3, 5));
    assert_eq!(
        batch.input_ids,
        [5, 6, 7, 8, 9, 3, 4, 11, 11, 11, 12, 11, 11, 11, 11]
    );
    assert_eq!(
        batch.labels,
        [-100, -100, -100, 8, 9, -100, 4, 11, -100, -100, 12, 11, -100, -100, -100]
    );
    assert_eq!(
        batch.attention_mask,
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0]
    );
    // The real EOS (11) in row b is learned even though pad id = eos id.
    assert_eq!(batch.labels[7], 11);
    // Loss targets: labels[:, 1:] != -100 -> a: 8, 9; b: 4, 11; c: 11 (12 sits at position 0).
    assert_eq!(batch.target_token_count(), 5);
    assert_eq!(batch.real_token_count(), 10);
    assert_eq!(
        batch.position_ids(),
        [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    );

    let padded = Batch::collate(&[&a, &b], 0, Some(8)).unwrap();
    assert_eq!(padded.seq_len, 8);
    assert_eq!(&padded.input_ids[5..8], &[0, 0, 0]);
    assert_eq!(padded.target_token_count(), 4);
    assert_eq!(Batch::collate(&[&a], 0, Some(64)).unwrap().seq_len, 64);
    assert!(Batch::collate(&[], 0, None).is_err());
    assert!(Batch::collate(&[&a], 0, Some(0)).is_err());
}

#[test]
fn collated_tokenized_records_keep_their_ids_and_labels() {
    let tok = common::tokenizer();
    let eos = common::eos();
    let records = generate(8, 1);
    let set = tokenize_records(
        tok,
        &records,
        &TokenizeOptions {
            max_length: 1024,
            eos_id: eos,
            policy: TruncationPolicy::KeepAnswer,
        },
    )
    .unwrap();
    let refs: Vec<&TokenizedExample> = set.examples.iter().collect();
    let batch = Batch::collate(&refs, eos, Some(8)).unwrap();
    let mut expected_targets = 0;
    for (b, e) in set.examples.iter().enumerate() {
        let row = &batch.input_ids[b * batch.seq_len..(b + 1) * batch.seq_len];
        let lab = &batch.labels[b * batch.seq_len..(b + 1) * batch.seq_len];
        assert_eq!(&row[..e.input_ids.len()], &e.input_ids[..]);
        assert_eq!(&lab[..e.labels.len()], &e.labels[..]);
        assert!(row[e.input_ids.len()..].iter().all(|&t| t == eos));
        assert!(lab[e.input_ids.len()..].iter().all(|&l| l == IGNORE_INDEX));
        expected_targets += e.full_target_len;
    }
    // Every prompt is non-empty, so all answer + EOS tokens are loss targets.
    assert_eq!(batch.target_token_count(), expected_targets);
}

fn lengths(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = data_finqa::rng::SplitMix64::new(seed);
    (0..n).map(|_| 10 + rng.below(500) as usize).collect()
}

#[test]
fn sampler_covers_each_epoch_and_reshuffles() {
    let n = 103;
    let s = Sampler::new(lengths(n, 1), SamplerConfig::new(4, 42)).unwrap();
    assert_eq!(s.batches_per_epoch(), 26);
    let e0 = s.epoch_batches(0);
    let e1 = s.epoch_batches(1);
    assert_eq!(e0.len(), 26);
    assert_eq!(e0.last().unwrap().len(), 3);
    for e in [&e0, &e1] {
        let mut all: Vec<usize> = e.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }
    assert_ne!(e0, e1);
    // Same seed, same order; another seed, another order.
    assert_eq!(
        e0,
        Sampler::new(lengths(n, 1), SamplerConfig::new(4, 42))
            .unwrap()
            .epoch_batches(0)
    );
    assert_ne!(
        e0,
        Sampler::new(lengths(n, 1), SamplerConfig::new(4, 43))
            .unwrap()
            .epoch_batches(0)
    );
    let mut cfg = SamplerConfig::new(4, 42);
    cfg.drop_last = true;
    let d = Sampler::new(lengths(n, 1), cfg).unwrap();
    assert_eq!(d.batches_per_epoch(), 25);
    assert!(d.epoch_batches(0).iter().all(|b| b.len() == 4));
    cfg.shuffle = false;
    let plain = Sampler::new(lengths(n, 1), cfg).unwrap();
    assert_eq!(plain.epoch_batches(3)[0], [0, 1, 2, 3]);
    assert!(Sampler::new(
        lengths(3, 1),
        SamplerConfig {
            drop_last: true,
            ..cfg
        }
    )
    .is_err());
    assert!(Sampler::new(lengths(3, 1), SamplerConfig::new(0, 1)).is_err());
}

#[test]
fn length_grouping_reduces_padding() {
    let lens = lengths(1000, 2);
    let padded = |batches: &[Vec<usize>]| -> usize {
        batches
            .iter()
            .map(|b| {
                let m = b.iter().map(|&i| lens[i]).max().unwrap();
                b.iter().map(|&i| m - lens[i]).sum::<usize>()
            })
            .sum()
    };
    let mut cfg = SamplerConfig::new(8, 5);
    let plain = Sampler::new(lens.clone(), cfg).unwrap().epoch_batches(0);
    cfg.group_by_length = true;
    let s = Sampler::new(lens.clone(), cfg).unwrap();
    let grouped = s.epoch_batches(0);
    let mut all: Vec<usize> = grouped.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..1000).collect::<Vec<_>>());
    assert!(
        padded(&grouped) * 5 < padded(&plain),
        "{} vs {}",
        padded(&grouped),
        padded(&plain)
    );
    // The longest example comes first.
    let longest = (0..1000)
        .max_by_key(|&i| (lens[i], std::cmp::Reverse(i)))
        .unwrap();
    assert!(grouped[0].iter().any(|&i| lens[i] == lens[longest]));
    // Still shuffled between epochs.
    assert_ne!(grouped, s.epoch_batches(1));
}

#[test]
fn resume_continues_at_the_exact_next_batch() {
    let lens = lengths(37, 3);
    let mut cfg = SamplerConfig::new(5, 9);
    cfg.group_by_length = true;
    cfg.megabatch_factor = 2;
    let mut straight = Sampler::new(lens.clone(), cfg).unwrap();
    let reference: Vec<Vec<usize>> = (0..40).map(|_| straight.next_batch()).collect();
    // Stop after k batches (inside an epoch and exactly at an epoch end), save, restore.
    for k in [0, 3, 8, 13, 27] {
        let mut s = Sampler::new(lens.clone(), cfg).unwrap();
        for _ in 0..k {
            s.next_batch();
        }
        let json = serde_json::to_string(&s.state()).unwrap();
        let state: SamplerState = serde_json::from_str(&json).unwrap();
        assert_eq!(state.batches_served, k as u64);
        let mut r = Sampler::resume(lens.clone(), cfg, &state).unwrap();
        let rest: Vec<Vec<usize>> = (k..40).map(|_| r.next_batch()).collect();
        assert_eq!(rest, reference[k..], "resumed after {k}");
    }
    assert_eq!(straight.epoch(), 4);
    // Other data or configuration: refused.
    let state = straight.state();
    let mut other = lens.clone();
    other[0] += 1;
    assert!(Sampler::resume(other, cfg, &state).is_err());
    assert!(Sampler::resume(lens.clone(), SamplerConfig { seed: 10, ..cfg }, &state).is_err());
    assert!(Sampler::resume(lens[..36].to_vec(), cfg, &state).is_err());
}

#[test]
fn split_is_deterministic_by_seed() {
    let a = split_train_val(100, 0.1, 7).unwrap();
    assert_eq!(a, split_train_val(100, 0.1, 7).unwrap());
    assert_eq!(a.val.len(), 10);
    assert_ne!(a, split_train_val(100, 0.1, 8).unwrap());
    // Serializes for the run record.
    let back: data_finqa::TrainValSplit =
        serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(back, a);
}
