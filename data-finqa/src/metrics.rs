//! Answer accuracy for generated answers.
//!
//! * **Exact match**: the strings are equal after trimming whitespace, dropping trailing
//!   literal `\n` (backslash, n) and backslashes (artifacts in some FinQA answers, e.g.
//!   `"4.9\\n"`) and lower-casing.
//! * **Numeric match** against the gold answer string: both are parsed with [`parse_number`]
//!   (first number in the text; `$`, thousands commas, a leading `-` or enclosing parentheses
//!   for negatives, `%`, and `thousand`/`million`/`billion`/`trillion` words). The prediction
//!   matches when one of its readings, rounded to the gold's number of decimals, equals the
//!   gold value. Readings: the value as written; times its scale word when it has one; when
//!   exactly one side carries `%`, also the value converted to the gold's unit
//!   (`"0.347"` vs `"34.7%"`: 0.347 x 100 = 34.7). Yes/no answers match by the first word.
//! * **FinQA-style against `exe_ans`** (the executed gold value, percentages as fractions):
//!   the prediction's value with `%` meaning /100, as FinQA's executor reads numbers.
//!   `exact`: equal after rounding to 5 decimals, the official metric's rule.
//!   `tolerant`: within a relative tolerance (default 5e-3), also accepting x100 and /100
//!   when the answer is a percentage (the suggestion of the FinQA notes; not official).
//!   Yes/no values compare the first word.

use serde::{Deserialize, Serialize};

use crate::record::{ExeAns, Record};

/// A number read from an answer string.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParsedNumber {
    /// The signed value as written (without scale word or percent conversion).
    pub value: f64,
    /// A `%` (or the word "percent") follows the number.
    pub percent: bool,
    /// The multiplier of a following scale word (1 when none).
    pub scale: f64,
    /// Digits after the decimal point as written.
    pub decimals: u32,
}

fn scale_word(rest: &str) -> f64 {
    let word: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    match word.as_str() {
        "thousand" | "thousands" => 1e3,
        "million" | "millions" => 1e6,
        "billion" | "billions" => 1e9,
        "trillion" | "trillions" => 1e12,
        _ => 1.0,
    }
}

/// Reads the first number in `text` (see the module docs). None when there is none.
pub fn parse_number(text: &str) -> Option<ParsedNumber> {
    let lower = text.to_lowercase();
    let s = lower.as_str();
    let bytes = s.as_bytes();
    let n = bytes.len();
    let mut i = 0;
    let start = loop {
        if i >= n {
            return None;
        }
        let c = bytes[i];
        if c.is_ascii_digit() || (c == b'.' && i + 1 < n && bytes[i + 1].is_ascii_digit()) {
            break i;
        }
        i += 1;
    };
    // Integer part with thousands commas (a comma counts only between digits).
    let mut j = start;
    let mut digits = String::new();
    while j < n {
        let c = bytes[j];
        if c.is_ascii_digit() {
            digits.push(c as char);
            j += 1;
        } else if c == b',' && j + 1 < n && bytes[j + 1].is_ascii_digit() && !digits.is_empty() {
            j += 1;
        } else {
            break;
        }
    }
    let mut decimals = 0u32;
    if j + 1 < n && bytes[j] == b'.' && bytes[j + 1].is_ascii_digit() {
        digits.push('.');
        j += 1;
        while j < n && bytes[j].is_ascii_digit() {
            digits.push(bytes[j] as char);
            decimals += 1;
            j += 1;
        }
    }
    let magnitude: f64 = if digits.starts_with('.') {
        format!("0{digits}").parse().ok()?
    } else {
        digits.parse().ok()?
    };
    // Sign: '-' (or a unicode minus) right before, spaces and '$' allowed between.
    let before = s[..start].trim_end_matches([' ', '$']);
    let minus = before.ends_with('-') || before.ends_with('\u{2212}');
    let after = &s[j..];
    let after_trim = after.trim_start();
    let percent = after_trim.starts_with('%') || after_trim.starts_with("percent");
    // Parentheses: "( 32 )", "($ 1,234)", "(5.1%)".
    let paren_open = before.trim_end_matches('-').trim_end().ends_with('(');
    let paren_close = after_trim
        .trim_start_matches('%')
        .trim_start()
        .starts_with(')');
    let negative = minus || (paren_open && paren_close);
    let value = if negative { -magnitude } else { magnitude };
    let scale = if percent { 1.0 } else { scale_word(after) };
    Some(ParsedNumber {
        value,
        percent,
        scale,
        decimals,
    })
}

/// Reads a yes/no answer from the first word.
pub fn parse_yes_no(text: &str) -> Option<bool> {
    let word: String = text
        .trim()
        .chars()
        .take_while(|c| c.is_alphabetic())
        .collect::<String>()
        .to_lowercase();
    match word.as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

fn normalize(text: &str) -> String {
    let mut t = text.trim();
    loop {
        let next = t
            .strip_suffix("\\n")
            .or_else(|| t.strip_suffix('\\'))
            .map(str::trim_end);
        match next {
            Some(rest) => t = rest,
            None => break,
        }
    }
    t.to_lowercase()
}

/// The answer part of a generated text: up to the first newline, trimmed.
pub fn answer_from_generation(text: &str) -> &str {
    text.trim_start().lines().next().unwrap_or("").trim()
}

/// Exact string match (see the module docs).
pub fn exact_match(pred: &str, gold: &str) -> bool {
    normalize(pred) == normalize(gold)
}

fn equal_at_decimals(a: f64, b: f64, decimals: u32) -> bool {
    let f = 10f64.powi(decimals.min(15) as i32);
    (a * f).round() == (b * f).round()
}

/// Numeric match of a prediction against the gold answer string (see the module docs).
pub fn numeric_match(pred: &str, gold: &str) -> bool {
    if let Some(g) = parse_yes_no(gold) {
        if parse_number(gold).is_none() {
            return parse_yes_no(pred) == Some(g);
        }
    }
    let (Some(p), Some(g)) = (parse_number(pred), parse_number(gold)) else {
        return false;
    };
    let mut readings = vec![p.value];
    if p.scale != 1.0 {
        readings.push(p.value * p.scale);
    }
    if p.percent && !g.percent {
        readings.push(p.value / 100.0);
    } else if g.percent && !p.percent {
        readings.extend(readings.clone().iter().map(|v| v * 100.0));
    }
    let mut golds = vec![g.value];
    if g.scale != 1.0 {
        golds.push(g.value * g.scale);
    }
    readings
        .iter()
        .any(|&r| golds.iter().any(|&gv| equal_at_decimals(r, gv, g.decimals)))
}

/// Result of comparing a prediction with `exe_ans`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExeMatch {
    /// Equal after rounding to 5 decimals (percent read as /100).
    pub exact: bool,
    /// Within the relative tolerance, x100 and /100 allowed for percentages.
    pub tolerant: bool,
}

/// FinQA-style comparison of a prediction with the executed gold value (see the module docs).
/// `percent_question` enables the x100 / /100 readings.
pub fn exe_match(pred: &str, exe: &ExeAns, rel_tol: f64, percent_question: bool) -> ExeMatch {
    match exe {
        ExeAns::Text(t) => {
            let ok = match parse_yes_no(t) {
                Some(g) => parse_yes_no(pred) == Some(g),
                None => exact_match(pred, t),
            };
            ExeMatch {
                exact: ok,
                tolerant: ok,
            }
        }
        ExeAns::Number(gold) => {
            let Some(p) = parse_number(pred) else {
                return ExeMatch::default();
            };
            let v = if p.percent { p.value / 100.0 } else { p.value };
            let exact = equal_at_decimals(v, *gold, 5);
            let mut readings = vec![v];
            if p.scale != 1.0 {
                readings.push(v * p.scale);
            }
            if percent_question || p.percent {
                readings.extend(
                    readings
                        .clone()
                        .iter()
                        .flat_map(|&r| [r * 100.0, r / 100.0]),
                );
            }
            let tol = rel_tol * gold.abs().max(1e-12);
            let tolerant = exact || readings.iter().any(|r| (r - gold).abs() <= tol);
            ExeMatch { exact, tolerant }
        }
    }
}

/// Default relative tolerance of the tolerant `exe_ans` comparison.
pub const DEFAULT_REL_TOL: f64 = 5e-3;

/// All scores of one prediction against one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AnswerScore {
    /// [`exact_match`] against the resolved answer.
    pub exact: bool,
    /// [`numeric_match`] against the resolved answer.
    pub numeric: bool,
    /// [`exe_match`] against `exe_ans`, when the record has it.
    pub exe: Option<ExeMatch>,
}

/// Scores a prediction (already cut with [`answer_from_generation`]) against a record.
pub fn score(pred: &str, record: &Record) -> AnswerScore {
    let gold = record.resolved_answer().map(|(a, _)| a).unwrap_or_default();
    let percent_question = gold.contains('%') || pred.contains('%');
    AnswerScore {
        exact: exact_match(pred, &gold),
        numeric: numeric_match(pred, &gold),
        exe: record
            .exe_ans
            .as_ref()
            .map(|e| exe_match(pred, e, DEFAULT_REL_TOL, percent_question)),
    }
}

/// Accumulated accuracy over many predictions.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Accuracy {
    /// Predictions scored.
    pub n: usize,
    /// Exact matches.
    pub exact: usize,
    /// Numeric matches.
    pub numeric: usize,
    /// Predictions whose record has `exe_ans`.
    pub with_exe: usize,
    /// Exact `exe_ans` matches.
    pub exe_exact: usize,
    /// Tolerant `exe_ans` matches.
    pub exe_tolerant: usize,
}

impl Accuracy {
    /// Adds one score.
    pub fn add(&mut self, s: &AnswerScore) {
        self.n += 1;
        self.exact += usize::from(s.exact);
        self.numeric += usize::from(s.numeric);
        if let Some(e) = s.exe {
            self.with_exe += 1;
            self.exe_exact += usize::from(e.exact);
            self.exe_tolerant += usize::from(e.tolerant);
        }
    }

    fn rate(k: usize, n: usize) -> f64 {
        if n == 0 {
            0.0
        } else {
            k as f64 / n as f64
        }
    }

    /// Exact-match rate.
    pub fn exact_rate(&self) -> f64 {
        Self::rate(self.exact, self.n)
    }
    /// Numeric-match rate.
    pub fn numeric_rate(&self) -> f64 {
        Self::rate(self.numeric, self.n)
    }
    /// Exact `exe_ans` rate over records that have it.
    pub fn exe_exact_rate(&self) -> f64 {
        Self::rate(self.exe_exact, self.with_exe)
    }
    /// Tolerant `exe_ans` rate over records that have it.
    pub fn exe_tolerant_rate(&self) -> f64 {
        Self::rate(self.exe_tolerant, self.with_exe)
    }
}
