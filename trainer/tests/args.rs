//! Flag parsing: HF-style booleans, comma lists, and `--config FILE` (TOML) with command-line
//! flags taking precedence.

use clap::Parser;
use trainer::args::{expand_config, Cli, Command, TrainArgs};

fn parse(argv: &[&str]) -> TrainArgs {
    let argv = expand_config(argv.iter().map(|s| s.to_string()).collect()).unwrap();
    match Cli::try_parse_from(argv).unwrap().command {
        Some(Command::Train(t)) => *t,
        other => panic!("expected train, got {other:?}"),
    }
}

#[test]
fn defaults_are_the_seed_values() {
    let t = parse(&["trainer", "train"]);
    assert_eq!(
        (t.per_device_train_batch_size, t.gradient_accumulation_steps),
        (2, 8)
    );
    assert_eq!(
        (t.num_train_epochs, t.max_steps, t.learning_rate),
        (10.0, -1, 2e-5)
    );
    assert_eq!((t.lora_r, t.lora_alpha, t.lora_dropout), (8, 16.0, 0.05));
    assert_eq!(t.target_modules, "query_key_value");
    assert_eq!(
        (t.quant.as_str(), t.double_quant, t.gradient_checkpointing),
        ("nf4", true, true)
    );
    assert_eq!(
        (
            t.logging_steps,
            t.eval_steps,
            t.save_steps,
            t.save_total_limit
        ),
        (10, 10, 200, 2)
    );
    assert_eq!(t.val_fraction, 0.1);
}

#[test]
fn booleans_accept_bare_true_and_false() {
    assert!(!parse(&["trainer", "train", "--bf16", "false"]).bf16);
    assert!(parse(&["trainer", "train", "--bf16", "true"]).bf16);
    assert!(parse(&["trainer", "train", "--group-by-length"]).group_by_length);
    assert!(!parse(&["trainer", "train", "--gradient-checkpointing=false"]).gradient_checkpointing);
    assert!(Cli::try_parse_from(["trainer", "train", "--bf16", "maybe"]).is_err());
}

#[test]
fn config_file_sets_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        "learning_rate = 1e-4\nlora-r = 16\nbf16 = false\ntarget_modules = [\"query_key_value\", \"dense\"]\nlr_scheduler_type = \"cosine\"\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let t = parse(&["trainer", "train", "--config", c, "--lora-r", "4"]);
    assert_eq!(t.learning_rate, 1e-4);
    assert_eq!(t.lora_r, 4, "the command line overrides the file");
    assert!(!t.bf16);
    assert_eq!(t.target_modules, "query_key_value,dense");
    assert_eq!(t.lr_scheduler_type, "cosine");
    let t = parse(&["trainer", "train", &format!("--config={c}")]);
    assert_eq!(t.lora_r, 16);
}

#[test]
fn bad_config_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = expand_config(vec![
        "trainer".into(),
        "train".into(),
        "--config".into(),
        missing.display().to_string(),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("nope.toml"), "{err:#}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "learning_rate = = 3").unwrap();
    let err = expand_config(vec![
        "trainer".into(),
        "train".into(),
        "--config".into(),
        bad.display().to_string(),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("invalid TOML"), "{err:#}");
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "no_such_flag = 1").unwrap();
    let argv = expand_config(vec![
        "trainer".into(),
        "train".into(),
        "--config".into(),
        unknown.display().to_string(),
    ])
    .unwrap();
    assert!(
        Cli::try_parse_from(argv).is_err(),
        "an unknown key is an unknown flag"
    );
}
