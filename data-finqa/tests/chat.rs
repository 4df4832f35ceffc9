//! Conversations rendered with a model's chat template, against fixtures made by transformers'
//! `apply_chat_template` (scripts/fixtures/chat_fixture.py): the rendered text, the generation
//! prompt, the token ids and which tokens are the assistant's (`assistant_masks`).

use data_finqa::{
    tokenize_conversations, ChatMessage, ChatTemplate, Conversation, DataError, TokenizeOptions,
    TruncationPolicy, IGNORE_INDEX,
};
use serde_json::Value;
use std::path::PathBuf;
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixtures().join("tokenizer.json")).expect("fixture tokenizer loads")
}

fn template(name: &str) -> ChatTemplate {
    ChatTemplate::from_tokenizer_config(&fixtures().join(name).join("tokenizer_config.json"))
        .expect("fixture template compiles")
}

fn rows() -> Vec<Value> {
    std::fs::read_to_string(fixtures().join("expected.jsonl"))
        .expect("fixture present")
        .lines()
        .map(|l| serde_json::from_str(l).expect("fixture row is JSON"))
        .collect()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).expect("messages")
}

fn opts(max_length: usize) -> TokenizeOptions {
    TokenizeOptions {
        max_length,
        eos_id: 0,
        policy: TruncationPolicy::KeepAnswer,
    }
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn rendering_ids_and_assistant_labels_match_transformers() {
    let tok = tokenizer();
    let rows = rows();
    assert_eq!(rows.len(), 6, "two templates x three conversations");
    for row in rows {
        let name = row["template"].as_str().unwrap();
        let id = row["id"].as_str().unwrap();
        let t = template(name);
        let msgs = messages(&row["messages"]);
        assert_eq!(
            t.render(&msgs, false).unwrap(),
            row["text"].as_str().unwrap(),
            "{name}/{id}: rendered text"
        );
        let last = msgs.iter().rposition(|m| m.role == "assistant").unwrap();
        assert_eq!(
            t.render(&msgs[..last], true).unwrap(),
            row["generation_prompt_text"].as_str().unwrap(),
            "{name}/{id}: generation prompt"
        );
        let conv = Conversation {
            id: id.into(),
            messages: msgs.clone(),
        };
        let set = tokenize_conversations(&tok, &[conv], &opts(4096), &t).unwrap();
        assert!(set.dropped.is_empty(), "{:?}", set.dropped);
        let ex = &set.examples[0];
        let want_ids = ids(&row["input_ids"]);
        let got_ids: Vec<u64> = ex.input_ids.iter().map(|&x| x as u64).collect();
        assert_eq!(got_ids, want_ids, "{name}/{id}: token ids");
        let want_mask = ids(&row["assistant_masks"]);
        let got_mask: Vec<u64> = ex
            .labels
            .iter()
            .map(|&l| u64::from(l != IGNORE_INDEX))
            .collect();
        assert_eq!(got_mask, want_mask, "{name}/{id}: learned tokens");
        for (l, t) in ex.labels.iter().zip(&ex.input_ids) {
            assert!(*l == IGNORE_INDEX || *l == *t as i32, "{name}/{id}");
        }
        // Generation-based evaluation starts from the tokens before the first answer and
        // compares with the first assistant message.
        assert_eq!(
            ex.prompt_len,
            want_mask.iter().position(|&m| m == 1).unwrap()
        );
        let first = msgs.iter().find(|m| m.role == "assistant").unwrap();
        assert_eq!(ex.target_text, first.content);
        assert!(!ex.answer_truncated && !ex.context_trimmed);
    }
}

#[test]
fn long_conversations_are_cut_at_the_right_and_dropped_without_an_answer() {
    let tok = tokenizer();
    let row = rows()
        .into_iter()
        .find(|r| r["template"] == "headers" && r["id"] == "system-multi")
        .unwrap();
    let t = template("headers");
    let conv = Conversation {
        id: "system-multi".into(),
        messages: messages(&row["messages"]),
    };
    let full = ids(&row["input_ids"]);
    let mask = ids(&row["assistant_masks"]);
    let first_learned = mask.iter().position(|&m| m == 1).unwrap();
    // Cut inside the first answer: a prefix, with its learned tokens kept.
    let n = first_learned + 2;
    let set = tokenize_conversations(&tok, std::slice::from_ref(&conv), &opts(n), &t).unwrap();
    let ex = &set.examples[0];
    let got: Vec<u64> = ex.input_ids.iter().map(|&x| x as u64).collect();
    assert_eq!(got, full[..n]);
    assert_eq!(ex.learned_len(), 2);
    assert!(ex.answer_truncated && ex.context_trimmed);
    assert_eq!(ex.full_target_len as u64, mask.iter().sum::<u64>());
    // Cut before any answer token: nothing to learn, so the example is dropped.
    let set = tokenize_conversations(&tok, &[conv], &opts(first_learned), &t).unwrap();
    assert!(set.examples.is_empty());
    assert!(
        set.dropped[0].reason.contains("no assistant token"),
        "{:?}",
        set.dropped
    );
}

#[test]
fn template_errors_name_the_cause() {
    let tok = tokenizer();
    let user = |c: &str| ChatMessage {
        role: "user".into(),
        content: c.into(),
    };
    let assistant = |c: &str| ChatMessage {
        role: "assistant".into(),
        content: c.into(),
    };
    // The template's own raise_exception reaches the user.
    let t = template("brackets");
    let conv = Conversation {
        id: "r7".into(),
        messages: vec![user("a"), user("b"), assistant("c")],
    };
    let e = tokenize_conversations(&tok, &[conv], &opts(512), &t)
        .unwrap_err()
        .to_string();
    assert!(e.contains("must alternate"), "{e}");
    // A template whose turns cannot be located by rendering prefixes is refused by record.
    let reversed = ChatTemplate::new(
        "{% for m in messages|reverse %}{{ m.content }};{% endfor %}",
        vec![],
        "t",
    )
    .unwrap();
    let conv = Conversation {
        id: "r8".into(),
        messages: vec![user("q"), assistant("a")],
    };
    let e = tokenize_conversations(&tok, &[conv], &opts(512), &reversed).unwrap_err();
    assert!(
        matches!(e, DataError::ChatRecord { ref id, .. } if id == "r8"),
        "{e}"
    );
    assert!(e.to_string().contains("incrementally"), "{e}");
    // A model without a template.
    let dir = std::env::temp_dir().join(format!("chat-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("tokenizer_config.json");
    std::fs::write(&cfg, r#"{"eos_token": "</s>"}"#).unwrap();
    let e = ChatTemplate::from_tokenizer_config(&cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no `chat_template`") && e.contains("tokenizer_config.json"),
        "{e}"
    );
    // A template that does not compile names where it came from.
    let e = ChatTemplate::new("{% for m in messages %}", vec![], "bad.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.json"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
