//! The normalized FinQA example and the generic prompt/completion pair.

use serde::{Deserialize, Serialize};

use crate::pyrepr::python_float_repr;

/// FinQA's executed gold value (`qa.exe_ans`): a number rounded to 5 decimals, or "yes"/"no".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExeAns {
    /// A numeric result (percentages are usually fractions: 0.34719 for "34.7%").
    Number(f64),
    /// A textual result, "yes" or "no" for `greater` programs.
    Text(String),
}

impl ExeAns {
    /// The value as the seed's Python would print it (`str(exe_ans)`): 1393.0 -> "1393.0".
    pub fn to_python_string(&self) -> String {
        match self {
            ExeAns::Number(v) => python_float_repr(*v),
            ExeAns::Text(s) => s.clone(),
        }
    }
}

/// Where a gold supporting fact comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FactKind {
    /// Sentence `k` of `pre_text + post_text`.
    Text,
    /// Row `k` of `table`.
    Table,
    /// Unknown provenance (Hugging Face exports drop the keys).
    Unknown,
}

/// One gold supporting fact (`qa.gold_inds` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldFact {
    /// The original key (`text_3`, `table_1`), when known.
    pub key: Option<String>,
    /// The kind parsed from the key.
    pub kind: FactKind,
    /// The index parsed from the key.
    pub index: Option<usize>,
    /// The fact as text.
    pub text: String,
}

impl GoldFact {
    /// A fact from an original-schema key such as `table_4` or `text_12`.
    pub fn from_key(key: &str, text: String) -> Self {
        let (kind, index) = match key.split_once('_') {
            Some(("text", k)) => (FactKind::Text, k.parse().ok()),
            Some(("table", k)) => (FactKind::Table, k.parse().ok()),
            _ => (FactKind::Unknown, None),
        };
        Self {
            key: Some(key.to_string()),
            kind,
            index,
            text,
        }
    }

    /// A fact without key (Hugging Face exports keep only the values).
    pub fn unkeyed(text: String) -> Self {
        Self {
            key: None,
            kind: FactKind::Unknown,
            index: None,
            text,
        }
    }
}

/// Which field the training answer was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnswerSource {
    /// `answer` (`qa.answer`) was non-empty.
    Answer,
    /// `answer` was empty; `final_result` (`qa.steps[-1].res` in the original schema) was used.
    FinalResult,
    /// Both were empty; `exe_ans` printed as Python prints it was used.
    ExeAns,
}

/// A FinQA example normalized from either the original release or a Hugging Face export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Example id, `TICKER/YEAR/page_N.pdf-k`.
    pub id: String,
    /// Sentences before the table.
    pub pre_text: Vec<String>,
    /// Sentences after the table.
    pub post_text: Vec<String>,
    /// The normalized table; row 0 is the header.
    pub table: Vec<Vec<String>>,
    /// The question.
    pub question: String,
    /// The annotator's answer string; may be empty (then see [`Record::resolved_answer`]).
    pub answer: String,
    /// The last step's formatted result (`final_result` column, or `qa.steps[-1].res`).
    pub final_result: Option<String>,
    /// The executed gold value, when the source has it (the original schema does).
    pub exe_ans: Option<ExeAns>,
    /// The flat program (`qa.program`, or the HF `program_re` column, which holds the flat form).
    pub program: Option<String>,
    /// Gold supporting facts, in document order when their keys are known.
    pub gold_inds: Option<Vec<GoldFact>>,
}

impl Record {
    /// The answer the seed trains on: `answer`, or when it is empty (after trimming)
    /// `final_result`, or else `exe_ans` printed as Python prints it. None when all are
    /// empty or absent.
    pub fn resolved_answer(&self) -> Option<(String, AnswerSource)> {
        if !self.answer.trim().is_empty() {
            return Some((self.answer.clone(), AnswerSource::Answer));
        }
        if let Some(fr) = &self.final_result {
            if !fr.trim().is_empty() {
                return Some((fr.clone(), AnswerSource::FinalResult));
            }
        }
        match &self.exe_ans {
            Some(ExeAns::Number(v)) if v.is_finite() => {
                Some((python_float_repr(*v), AnswerSource::ExeAns))
            }
            Some(ExeAns::Text(s)) if !s.trim().is_empty() => {
                Some((s.clone(), AnswerSource::ExeAns))
            }
            _ => None,
        }
    }

    /// Gold facts in document order: text facts from `pre_text`, table rows, then text facts
    /// from `post_text`; facts without a known position keep their given order at the end.
    pub fn gold_facts_in_document_order(&self) -> Vec<&GoldFact> {
        let Some(facts) = &self.gold_inds else {
            return Vec::new();
        };
        let n_pre = self.pre_text.len();
        let mut keyed: Vec<(usize, usize, usize, &GoldFact)> = facts
            .iter()
            .enumerate()
            .map(|(pos, f)| {
                let rank = match (f.kind, f.index) {
                    (FactKind::Text, Some(k)) if k < n_pre => (0, k),
                    (FactKind::Table, Some(k)) => (1, k),
                    (FactKind::Text, Some(k)) => (2, k),
                    _ => (3, pos),
                };
                (rank.0, rank.1, pos, f)
            })
            .collect();
        keyed.sort_by_key(|&(a, b, pos, _)| (a, b, pos));
        keyed.into_iter().map(|(_, _, _, f)| f).collect()
    }
}

/// One example of the generic prompt/completion JSON-lines format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptCompletion {
    /// The record's `id` field, or `"line-N"` (1-based line) when it has none.
    pub id: String,
    /// The prompt, used verbatim.
    pub prompt: String,
    /// The completion, used verbatim (no space is added).
    pub completion: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            id: "X/2001/page_1.pdf-1".into(),
            pre_text: vec!["a".into(), "b".into()],
            post_text: vec!["c".into()],
            table: vec![],
            question: "q?".into(),
            answer: String::new(),
            final_result: None,
            exe_ans: None,
            program: None,
            gold_inds: None,
        }
    }

    #[test]
    fn answer_fallback_order() {
        let mut r = rec();
        assert_eq!(r.resolved_answer(), None);
        r.exe_ans = Some(ExeAns::Number(1393.0));
        assert_eq!(
            r.resolved_answer(),
            Some(("1393.0".to_string(), AnswerSource::ExeAns))
        );
        r.final_result = Some("22.5%".into());
        assert_eq!(
            r.resolved_answer(),
            Some(("22.5%".to_string(), AnswerSource::FinalResult))
        );
        r.answer = "22.46%".into();
        assert_eq!(
            r.resolved_answer(),
            Some(("22.46%".to_string(), AnswerSource::Answer))
        );
        r.answer = "  ".into();
        assert_eq!(
            r.resolved_answer().map(|a| a.1),
            Some(AnswerSource::FinalResult)
        );
    }

    #[test]
    fn gold_facts_follow_document_order() {
        let mut r = rec();
        r.gold_inds = Some(vec![
            GoldFact::from_key("text_2", "post".into()),
            GoldFact::from_key("table_10", "t10".into()),
            GoldFact::from_key("table_4", "t4".into()),
            GoldFact::from_key("text_1", "pre".into()),
            GoldFact::unkeyed("free".into()),
        ]);
        let order: Vec<&str> = r
            .gold_facts_in_document_order()
            .iter()
            .map(|f| f.text.as_str())
            .collect();
        assert_eq!(order, ["pre", "t4", "t10", "post", "free"]);
    }
}
