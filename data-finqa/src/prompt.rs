//! The seed's prompt template, byte for byte.
//!
//! ```text
//! prompt = "Context:\n" + pre + "\n" + table + "\n" + post + "\nQuestion: " + question + "\nAnswer:"
//!   pre   = pre_text sentences joined by " "
//!   table = rows joined by "\n", each row's cells joined by "|"
//!   post  = post_text sentences joined by " "
//! target = " " + answer          (then the EOS token, added as an id, not as text)
//! ```
//!
//! Empty parts stay in place (an empty `pre_text` gives "Context:\n\n..."), as the seed's
//! f-string does. The answer falls back to `final_result`, then `exe_ans`, when empty (see
//! [`Record::resolved_answer`]).
//!
//! The same frame is used when the context is cut (keep-answer) or replaced by the gold
//! evidence: the context parts ("pieces") are joined by "\n" between "Context:\n" and
//! "\nQuestion: ".

use serde::{Deserialize, Serialize};

use crate::record::{PromptCompletion, Record};

/// Separator between table cells in the prompt.
pub const TABLE_CELL_SEPARATOR: &str = "|";
/// Separator between sentences of `pre_text` / `post_text`.
pub const SENTENCE_SEPARATOR: &str = " ";
/// Text before the context.
pub const CONTEXT_HEADER: &str = "Context:\n";

/// A prompt and its training target, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The record id.
    pub id: String,
    /// Text the model reads; its tokens get label -100.
    pub prompt: String,
    /// Text the model learns (EOS is appended as a token id).
    pub target: String,
}

/// The table as the seed prints it: rows joined by "\n", cells by "|".
pub fn table_text(table: &[Vec<String>]) -> String {
    table
        .iter()
        .map(|row| row.join(TABLE_CELL_SEPARATOR))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The three context pieces of a record: `[pre_text, table, post_text]`.
pub fn context_pieces(record: &Record) -> Vec<String> {
    vec![
        record.pre_text.join(SENTENCE_SEPARATOR),
        table_text(&record.table),
        record.post_text.join(SENTENCE_SEPARATOR),
    ]
}

/// The prompt frame around context pieces joined by "\n".
pub fn prompt_from_pieces<S: AsRef<str>>(pieces: &[S], question: &str) -> String {
    let mut s = String::from(CONTEXT_HEADER);
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(p.as_ref());
    }
    s.push_str("\nQuestion: ");
    s.push_str(question);
    s.push_str("\nAnswer:");
    s
}

/// The seed's full (untruncated) prompt for a record.
pub fn seed_prompt(record: &Record) -> String {
    prompt_from_pieces(&context_pieces(record), &record.question)
}

/// The target text for an answer: a space, then the answer.
pub fn target_text(answer: &str) -> String {
    format!(" {answer}")
}

/// The seed's prompt and target for a record; None when it has no answer at all.
pub fn seed_example(record: &Record) -> Option<Example> {
    let (answer, _) = record.resolved_answer()?;
    Some(Example {
        id: record.id.clone(),
        prompt: seed_prompt(record),
        target: target_text(&answer),
    })
}

/// A prompt/completion pair as an example: both used verbatim.
pub fn pair_example(pair: &PromptCompletion) -> Example {
    Example {
        id: pair.id.clone(),
        prompt: pair.prompt.clone(),
        target: pair.completion.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_layout() {
        let r = Record {
            id: "A/2000/page_1.pdf-1".into(),
            pre_text: vec!["one .".into(), "two .".into()],
            post_text: vec!["three .".into()],
            table: vec![
                vec!["".into(), "2019".into()],
                vec!["sales".into(), "$ 5".into()],
            ],
            question: "what?".into(),
            answer: "5".into(),
            final_result: None,
            exe_ans: None,
            program: None,
            gold_inds: None,
        };
        let e = seed_example(&r).unwrap();
        assert_eq!(
            e.prompt,
            "Context:\none . two .\n|2019\nsales|$ 5\nthree .\nQuestion: what?\nAnswer:"
        );
        assert_eq!(e.target, " 5");
        let mut empty = r.clone();
        empty.pre_text.clear();
        empty.table.clear();
        empty.post_text.clear();
        assert_eq!(
            seed_prompt(&empty),
            "Context:\n\n\n\nQuestion: what?\nAnswer:"
        );
    }
}
