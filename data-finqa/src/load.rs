//! Loading FinQA (original release, Hugging Face exports) and generic prompt/completion files.
//!
//! Containers: a JSON array of records (first non-blank character `[`), or JSON lines (one
//! object per non-blank line). Formats:
//!
//! * [`DataFormat::FinqaOriginal`]: objects with `id`, `pre_text`, `post_text`, `table` and a
//!   `qa` object (`question`, `answer`, `exe_ans`, `program`, `steps`, `gold_inds`, ...).
//!   `final_result` is taken from `qa.steps[-1].res`, as the Hugging Face loader does.
//! * [`DataFormat::HfFlat`]: flat columns `id`, `pre_text`, `post_text`, `table`, `question`,
//!   `answer`, optional `final_result`, `exe_ans`, `program_re` (the flat program), `program`,
//!   `gold_inds` (list of strings, or the original key -> text map).
//! * [`DataFormat::PromptCompletion`]: `prompt` and `completion` strings, optional `id`.
//! * [`DataFormat::Auto`]: decided from the first object record: a `qa` key means FinQA
//!   original; `prompt` + `completion` means prompt/completion; `question` with any of
//!   `pre_text`/`post_text`/`table` means the HF flat layout.
//!
//! Type rules: text fields must be strings, `pre_text`/`post_text` arrays of strings, `table`
//! an array of arrays of strings. `answer` and `final_result` may also be JSON numbers; they are
//! then printed as Python prints a float (94.0 -> "94.0"), because that is the text the seed's
//! f-string would produce. A `null` answer counts as empty. A record whose answer is empty after
//! the fallback chain (answer -> final_result -> exe_ans) is bad, as is an empty question or
//! prompt/completion with an empty completion.
//!
//! Bad records are reported with file, record index (and line for JSON lines) and id. With
//! [`BadRecordPolicy::Skip`] they are collected in [`LoadReport::skipped`]; with
//! [`BadRecordPolicy::Fail`] the first one is returned as an error.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{BadRecord, DataError, Result};
use crate::pyrepr::python_float_repr;
use crate::raw::{kind_of, RawElement, RawFields};
use crate::record::{ExeAns, GoldFact, PromptCompletion, Record};

/// The record layout of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// The original FinQA release (`qa` object).
    FinqaOriginal,
    /// Hugging Face style flat columns.
    HfFlat,
    /// Generic `prompt` / `completion` JSON lines.
    PromptCompletion,
    /// Detect from the first record.
    #[default]
    Auto,
}

impl DataFormat {
    /// The canonical command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::FinqaOriginal => "finqa",
            DataFormat::HfFlat => "hf",
            DataFormat::PromptCompletion => "prompt-completion",
            DataFormat::Auto => "auto",
        }
    }
}

impl std::fmt::Display for DataFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DataFormat {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DataFormat::Auto),
            "finqa" | "finqa-original" | "original" => Ok(DataFormat::FinqaOriginal),
            "hf" | "hf-flat" | "huggingface" => Ok(DataFormat::HfFlat),
            "prompt-completion" | "pc" | "jsonl" => Ok(DataFormat::PromptCompletion),
            _ => Err(DataError::UnknownName {
                what: "data format",
                value: s.to_string(),
                expected: "auto, finqa, hf, prompt-completion",
            }),
        }
    }
}

/// What to do with a malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadRecordPolicy {
    /// Leave it out and report it in [`LoadReport::skipped`] (the default).
    #[default]
    Skip,
    /// Stop with [`DataError::BadRecord`].
    Fail,
}

impl FromStr for BadRecordPolicy {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "skip" | "warn" => Ok(BadRecordPolicy::Skip),
            "fail" | "error" => Ok(BadRecordPolicy::Fail),
            _ => Err(DataError::UnknownName {
                what: "bad-record policy",
                value: s.to_string(),
                expected: "skip, fail",
            }),
        }
    }
}

/// Options of [`load_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoadOptions {
    /// The layout, or [`DataFormat::Auto`].
    pub format: DataFormat,
    /// Skip or fail on bad records.
    pub bad_records: BadRecordPolicy,
}

/// The result of loading one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// The file.
    pub path: PathBuf,
    /// The format used (never `Auto`).
    pub format: DataFormat,
    /// FinQA records (empty for the prompt/completion format).
    pub records: Vec<Record>,
    /// Prompt/completion pairs (empty for the FinQA formats).
    pub pairs: Vec<PromptCompletion>,
    /// Bad records that were left out, with the reason.
    pub skipped: Vec<BadRecord>,
    /// Records seen in the file (usable + skipped).
    pub total: usize,
}

impl LoadReport {
    /// Number of usable examples.
    pub fn len(&self) -> usize {
        self.records.len() + self.pairs.len()
    }

    /// True when there is no usable example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A one-line warning when records were skipped, e.g. for the trainer to print, followed by
    /// up to `max_listed` per-record lines.
    pub fn skipped_warning(&self, max_listed: usize) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let mut s = format!(
            "warning: skipped {} bad record(s) of {} in {}",
            self.skipped.len(),
            self.total,
            self.path.display()
        );
        for b in self.skipped.iter().take(max_listed) {
            s.push_str(&format!("\n  {b}"));
        }
        if self.skipped.len() > max_listed {
            s.push_str(&format!(
                "\n  ... and {} more",
                self.skipped.len() - max_listed
            ));
        }
        Some(s)
    }
}

/// The largest data file [`load_file`] reads (2 GiB): parsing takes a few times the file's
/// size in memory, so a wrong path (a disk image, a model shard) must be refused, not read.
pub const DEFAULT_MAX_DATA_BYTES: u64 = 2 << 30;

/// How many skipped records an "every record was skipped" error lists.
const REASONS_LISTED: usize = 5;

/// Loads a data file with the given options (see the module docs for formats and rules),
/// refusing files larger than [`DEFAULT_MAX_DATA_BYTES`].
pub fn load_file(path: impl AsRef<Path>, options: &LoadOptions) -> Result<LoadReport> {
    load_file_limited(path, options, DEFAULT_MAX_DATA_BYTES)
}

/// [`load_file`] with a size limit of `max_bytes`, checked before reading.
pub fn load_file_limited(
    path: impl AsRef<Path>,
    options: &LoadOptions,
    max_bytes: u64,
) -> Result<LoadReport> {
    use std::io::Read;
    let path = path.as_ref();
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let too_large = |bytes| DataError::TooLarge {
        path: path.to_path_buf(),
        bytes,
        limit: max_bytes,
    };
    let len = file.metadata().map_err(io)?.len();
    if len > max_bytes {
        return Err(too_large(len));
    }
    // The size may not be known in advance (a pipe) or may change while reading: never read
    // more than the limit plus one byte.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    parse_bytes(path, &bytes, options)
}

fn first_reasons(skipped: &[BadRecord]) -> String {
    let mut s: String = skipped
        .iter()
        .take(REASONS_LISTED)
        .map(|b| format!("\n  {b}"))
        .collect();
    if skipped.len() > REASONS_LISTED {
        s.push_str(&format!(
            "\n  ... and {} more",
            skipped.len() - REASONS_LISTED
        ));
    }
    s
}

/// Parses the contents of a data file; `path` is used in messages and the report.
pub fn parse_bytes(path: &Path, bytes: &[u8], options: &LoadOptions) -> Result<LoadReport> {
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text: {e}"),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let elements = read_elements(path, text)?;
    let format = match options.format {
        DataFormat::Auto => detect_format(path, &elements)?,
        f => f,
    };
    let mut report = LoadReport {
        path: path.to_path_buf(),
        format,
        records: Vec::new(),
        pairs: Vec::new(),
        skipped: Vec::new(),
        total: elements.len(),
    };
    for el in elements {
        let bad = |id: Option<String>, reason: String| BadRecord {
            path: path.to_path_buf(),
            index: el.index,
            line: el.line,
            id,
            reason,
        };
        let outcome = match &el.element {
            Err(msg) => Err(bad(None, format!("invalid JSON: {msg}"))),
            Ok(RawElement::NotObject(kind)) => {
                Err(bad(None, format!("expected a JSON object, found {kind}")))
            }
            Ok(RawElement::Object(f)) => {
                let id = f.id.as_ref().and_then(id_string);
                match format {
                    DataFormat::PromptCompletion => {
                        let fallback_id = match el.line {
                            Some(line) => format!("line-{line}"),
                            None => format!("record-{}", el.index),
                        };
                        pair_from_fields(f, fallback_id)
                            .map(Item::Pair)
                            .map_err(|r| bad(id, r))
                    }
                    DataFormat::FinqaOriginal => record_from_original(f)
                        .map(Item::Record)
                        .map_err(|r| bad(id, r)),
                    DataFormat::HfFlat | DataFormat::Auto => record_from_flat(f)
                        .map(Item::Record)
                        .map_err(|r| bad(id, r)),
                }
            }
        };
        let outcome = outcome.and_then(|item| match item.text_bytes() {
            n if n > MAX_RECORD_TEXT_BYTES => Err(BadRecord {
                path: path.to_path_buf(),
                index: el.index,
                line: el.line,
                id: item.id().map(str::to_string),
                reason: format!(
                    "{n} bytes of text, more than the {MAX_RECORD_TEXT_BYTES} a record may \
                     hold (tokenizing it would take memory out of proportion)"
                ),
            }),
            _ => Ok(item),
        });
        match outcome {
            Ok(Item::Record(r)) => report.records.push(r),
            Ok(Item::Pair(p)) => report.pairs.push(p),
            Err(b) => match options.bad_records {
                BadRecordPolicy::Fail => return Err(DataError::BadRecord(b)),
                BadRecordPolicy::Skip => report.skipped.push(b),
            },
        }
    }
    if report.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            skipped: report.skipped.len(),
            first_reasons: first_reasons(&report.skipped),
        });
    }
    Ok(report)
}

enum Item {
    Record(Record),
    Pair(PromptCompletion),
}

/// The most text one record may hold (all its fields together): 1 MiB, a few hundred times a
/// FinQA record. Tokenizing takes several hundred bytes of memory per byte of text, and
/// anything longer can never fit a training sequence, so such a record is a bad record
/// (skipped with a warning, or an error with --strict-data) instead of gigabytes of memory.
pub const MAX_RECORD_TEXT_BYTES: usize = 1 << 20;

impl Item {
    fn text_bytes(&self) -> usize {
        match self {
            Item::Record(r) => {
                let lines = |v: &[String]| v.iter().map(String::len).sum::<usize>();
                lines(&r.pre_text)
                    + lines(&r.post_text)
                    + r.table.iter().map(|row| lines(row)).sum::<usize>()
                    + r.question.len()
                    + r.answer.len()
            }
            Item::Pair(p) => p.prompt.len() + p.completion.len(),
        }
    }

    fn id(&self) -> Option<&str> {
        match self {
            Item::Record(r) => Some(&r.id),
            Item::Pair(p) => Some(&p.id),
        }
    }
}

struct Element {
    index: usize,
    line: Option<usize>,
    element: std::result::Result<RawElement, String>,
}

/// Splits the file into records: a JSON array, or JSON lines.
fn read_elements(path: &Path, text: &str) -> Result<Vec<Element>> {
    let first = text.trim_start().chars().next();
    match first {
        None => Err(DataError::Empty {
            path: path.to_path_buf(),
            skipped: 0,
            first_reasons: String::new(),
        }),
        Some('[') => {
            let items: Vec<RawElement> =
                serde_json::from_str(text).map_err(|e| DataError::Json {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(index, e)| Element {
                    index,
                    line: None,
                    element: Ok(e),
                })
                .collect())
        }
        Some(_) => Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .enumerate()
            .map(|(index, (line0, l))| Element {
                index,
                line: Some(line0 + 1),
                element: serde_json::from_str::<RawElement>(l).map_err(|e| e.to_string()),
            })
            .collect()),
    }
}

/// Decides the format from the first object record.
fn detect_format(path: &Path, elements: &[Element]) -> Result<DataFormat> {
    let first = elements.iter().find_map(|e| match &e.element {
        Ok(RawElement::Object(f)) => Some(f),
        _ => None,
    });
    let Some(f) = first else {
        return Err(DataError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "no record is a JSON object".to_string(),
        });
    };
    detect_from_fields(f).ok_or_else(|| DataError::UnknownFormat {
        path: path.to_path_buf(),
        reason: format!(
            "first record has keys {:?}; expected `qa` (FinQA original), `question` with \
             `pre_text`/`post_text`/`table` (Hugging Face flat), or `prompt` and `completion`",
            f.keys
        ),
    })
}

fn detect_from_fields(f: &RawFields) -> Option<DataFormat> {
    if f.has("qa") {
        Some(DataFormat::FinqaOriginal)
    } else if f.has("prompt") && f.has("completion") {
        Some(DataFormat::PromptCompletion)
    } else if f.has("question") && (f.has("pre_text") || f.has("post_text") || f.has("table")) {
        Some(DataFormat::HfFlat)
    } else {
        None
    }
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

type FieldResult<T> = std::result::Result<T, String>;

fn required<'a>(v: &'a Option<Value>, name: &str) -> FieldResult<&'a Value> {
    v.as_ref().ok_or_else(|| format!("missing field `{name}`"))
}

fn string_field(v: &Option<Value>, name: &str) -> FieldResult<String> {
    match required(v, name)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "field `{name}` must be a string, found {}",
            kind_of(other)
        )),
    }
}

fn string_list(v: &Option<Value>, name: &str) -> FieldResult<Vec<String>> {
    match required(v, name)? {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "field `{name}` element {i} must be a string, found {}",
                    kind_of(other)
                )),
            })
            .collect(),
        other => Err(format!(
            "field `{name}` must be an array of strings, found {}",
            kind_of(other)
        )),
    }
}

fn table_field(v: &Option<Value>) -> FieldResult<Vec<Vec<String>>> {
    match required(v, "table")? {
        Value::Array(rows) => rows
            .iter()
            .enumerate()
            .map(|(r, row)| match row {
                Value::Array(cells) => cells
                    .iter()
                    .enumerate()
                    .map(|(c, cell)| match cell {
                        Value::String(s) => Ok(s.clone()),
                        other => Err(format!(
                            "field `table` row {r} cell {c} must be a string, found {}",
                            kind_of(other)
                        )),
                    })
                    .collect(),
                other => Err(format!(
                    "field `table` row {r} must be an array of strings, found {}",
                    kind_of(other)
                )),
            })
            .collect(),
        other => Err(format!(
            "field `table` must be an array of rows, found {}",
            kind_of(other)
        )),
    }
}

/// `answer`/`final_result`: a string, a number (printed as Python prints it) or null (empty).
fn answer_like(v: Option<&Value>, name: &str) -> FieldResult<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) => Ok(Some(python_float_repr(x))),
            None => Err(format!("field `{name}` holds a number out of range")),
        },
        Some(other) => Err(format!(
            "field `{name}` must be a string or a number, found {}",
            kind_of(other)
        )),
    }
}

fn exe_ans_field(v: Option<&Value>, name: &str) -> FieldResult<Option<ExeAns>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) => Ok(Some(ExeAns::Number(x))),
            None => Err(format!("field `{name}` holds a number out of range")),
        },
        Some(Value::String(s)) => Ok(Some(ExeAns::Text(s.clone()))),
        Some(other) => Err(format!(
            "field `{name}` must be a number or a string, found {}",
            kind_of(other)
        )),
    }
}

fn optional_string(v: Option<&Value>, name: &str) -> FieldResult<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "field `{name}` must be a string, found {}",
            kind_of(other)
        )),
    }
}

/// `gold_inds`: the original key -> text object, or the HF list of texts.
fn gold_inds_field(v: Option<&Value>, name: &str) -> FieldResult<Option<Vec<GoldFact>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, x)| match x {
                Value::String(s) => Ok(GoldFact::from_key(k, s.clone())),
                other => Err(format!(
                    "field `{name}` entry {k:?} must be a string, found {}",
                    kind_of(other)
                )),
            })
            .collect::<FieldResult<Vec<_>>>()
            .map(Some),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) => Ok(GoldFact::unkeyed(s.clone())),
                other => Err(format!(
                    "field `{name}` element {i} must be a string, found {}",
                    kind_of(other)
                )),
            })
            .collect::<FieldResult<Vec<_>>>()
            .map(Some),
        Some(other) => Err(format!(
            "field `{name}` must be an object or an array of strings, found {}",
            kind_of(other)
        )),
    }
}

fn finish(record: Record) -> FieldResult<Record> {
    if record.id.trim().is_empty() {
        return Err("empty `id`".to_string());
    }
    if record.question.trim().is_empty() {
        return Err("empty question".to_string());
    }
    if record.resolved_answer().is_none() {
        return Err(
            "empty answer: `answer` is empty and there is no `final_result` or `exe_ans` \
             to fall back to"
                .to_string(),
        );
    }
    Ok(record)
}

fn record_from_original(f: &RawFields) -> FieldResult<Record> {
    let id = string_field(&f.id, "id")?;
    let pre_text = string_list(&f.pre_text, "pre_text")?;
    let post_text = string_list(&f.post_text, "post_text")?;
    let table = table_field(&f.table)?;
    let qa = match required(&f.qa, "qa")? {
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "field `qa` must be an object, found {}",
                kind_of(other)
            ))
        }
    };
    let question = match qa.get("question") {
        None => return Err("missing field `qa.question`".to_string()),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(format!(
                "field `qa.question` must be a string, found {}",
                kind_of(other)
            ))
        }
    };
    if !qa.contains_key("answer") {
        return Err("missing field `qa.answer`".to_string());
    }
    let answer = answer_like(qa.get("answer"), "qa.answer")?.unwrap_or_default();
    let final_result = match qa.get("steps") {
        None | Some(Value::Null) => None,
        Some(Value::Array(steps)) => match steps.last() {
            None => None,
            Some(Value::Object(step)) => answer_like(step.get("res"), "qa.steps[-1].res")?,
            Some(other) => {
                return Err(format!(
                    "field `qa.steps` elements must be objects, found {}",
                    kind_of(other)
                ))
            }
        },
        Some(other) => {
            return Err(format!(
                "field `qa.steps` must be an array, found {}",
                kind_of(other)
            ))
        }
    };
    let record = Record {
        id,
        pre_text,
        post_text,
        table,
        question,
        answer,
        final_result,
        exe_ans: exe_ans_field(qa.get("exe_ans"), "qa.exe_ans")?,
        program: optional_string(qa.get("program"), "qa.program")?,
        gold_inds: gold_inds_field(qa.get("gold_inds"), "qa.gold_inds")?,
    };
    finish(record)
}

fn record_from_flat(f: &RawFields) -> FieldResult<Record> {
    let id = string_field(&f.id, "id")?;
    let pre_text = string_list(&f.pre_text, "pre_text")?;
    let post_text = string_list(&f.post_text, "post_text")?;
    let table = table_field(&f.table)?;
    let question = string_field(&f.question, "question")?;
    if f.answer.is_none() {
        return Err("missing field `answer`".to_string());
    }
    let answer = answer_like(f.answer.as_ref(), "answer")?.unwrap_or_default();
    // The HF column `program_re` holds the flat program despite its name; prefer `program`.
    let program = match optional_string(f.program.as_ref(), "program")? {
        Some(p) => Some(p),
        None => optional_string(f.program_re.as_ref(), "program_re")?,
    };
    let record = Record {
        id,
        pre_text,
        post_text,
        table,
        question,
        answer,
        final_result: answer_like(f.final_result.as_ref(), "final_result")?,
        exe_ans: exe_ans_field(f.exe_ans.as_ref(), "exe_ans")?,
        program,
        gold_inds: gold_inds_field(f.gold_inds.as_ref(), "gold_inds")?,
    };
    finish(record)
}

fn pair_from_fields(f: &RawFields, fallback_id: String) -> FieldResult<PromptCompletion> {
    let id = match &f.id {
        None | Some(Value::Null) => fallback_id,
        Some(v) => id_string(v).ok_or_else(|| {
            format!(
                "field `id` must be a string or a number, found {}",
                kind_of(v)
            )
        })?,
    };
    let prompt = string_field(&f.prompt, "prompt")?;
    let completion = string_field(&f.completion, "completion")?;
    if completion.trim().is_empty() {
        return Err("empty completion".to_string());
    }
    Ok(PromptCompletion {
        id,
        prompt,
        completion,
    })
}
