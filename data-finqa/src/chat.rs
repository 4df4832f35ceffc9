//! Conversations rendered with the model's own chat template, and which characters of the
//! rendered text are the assistant's.
//!
//! The template is the Jinja `chat_template` of the model's `tokenizer_config.json`, rendered
//! as `transformers`' `apply_chat_template` renders it: `trim_blocks` and `lstrip_blocks` on,
//! loop controls, the variables `messages`, `add_generation_prompt` and every special token of
//! the config (`bos_token`, `eos_token`, ...), the functions `raise_exception` and
//! `strftime_now`, Python's string methods (`.strip()`, `.startswith()`, ...) and a `tojson`
//! that writes what Python's `json.dumps` writes. Hugging Face's `{% generation %}` marker
//! (which only tags text, it renders its body unchanged) is accepted and ignored.
//!
//! # Which text is learned
//!
//! Assistant turn `i` is the text a model must produce after the conversation up to it has
//! been rendered with the generation prompt: with `P = render(messages[..i], gen prompt)` and
//! `R = render(messages[..=i], no gen prompt)`, the turn is `R[len(P)..]` (its content and
//! whatever the template closes the turn with, such as an end-of-turn token, so that the model
//! learns to stop). This needs no marker in the template, and it is checked: `P` must be a
//! prefix of `R` and `R` a prefix of the whole rendered conversation, otherwise the template
//! does not render conversations incrementally and the record is refused with that reason.

use minijinja::value::Value;
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;

use crate::error::{DataError, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or any role the template knows).
    pub role: String,
    /// The text of the message.
    pub content: String,
}

/// One conversation of a `{"messages": [...]}` data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// The record's `id`, or `line-N` / `record-N`.
    pub id: String,
    /// The messages in order; at least one has the role `assistant`.
    pub messages: Vec<ChatMessage>,
}

impl Conversation {
    /// Bytes of text in all messages.
    pub fn text_bytes(&self) -> usize {
        self.messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum()
    }
}

/// A conversation rendered to text, with the byte ranges of the assistant turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The whole conversation as the template renders it (no generation prompt).
    pub text: String,
    /// The assistant turns in `text`, in order (each: what the model learns to produce).
    pub assistant_spans: Vec<Range<usize>>,
    /// Index into the conversation's messages of each span's assistant message.
    pub assistant_messages: Vec<usize>,
}

/// Fuel for one rendering: a bound on template work (a template that loops without end, or a
/// record that makes it produce gigabytes, fails instead of exhausting the machine).
const RENDER_FUEL: u64 = 50_000_000;

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... as strings, passed to every rendering.
    special: Vec<(String, String)>,
    /// Where the template came from (for messages).
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("special", &self.special)
            .finish()
    }
}

/// The special-token keys of `tokenizer_config.json` that templates read.
const SPECIAL_KEYS: &[&str] = &[
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
];

fn template_error(source: &str, e: impl std::fmt::Display) -> DataError {
    DataError::ChatTemplate {
        source_name: source.to_string(),
        message: e.to_string(),
    }
}

impl ChatTemplate {
    /// Compiles `template` with the given special tokens (`("bos_token", "<s>")`, ...).
    pub fn new(template: &str, special: Vec<(String, String)>, source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| template_error(source, e))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(RENDER_FUEL));
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let body = strip_generation_tags(template);
        env.add_template_owned("chat_template", body)
            .map_err(|e| template_error(source, e))?;
        Ok(ChatTemplate {
            env,
            special,
            source: source.to_string(),
        })
    }

    /// The template of a model's `tokenizer_config.json` (`chat_template` as a string, or the
    /// `default` entry of a list of named templates), with its special tokens (strings, or
    /// `{"content": ...}` objects as older configs write them). A config without a template
    /// is an error saying so.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| template_error(&name, e))?;
        let template =
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| {
                        template_error(&name, "`chat_template` is a list without a `default` entry")
                    })?
                    .to_string(),
                _ => return Err(template_error(
                    &name,
                    "no `chat_template`: the model has no chat template, so conversational data \
                     cannot be rendered for it",
                )),
            };
        let special = SPECIAL_KEYS
            .iter()
            .filter_map(|k| {
                let v = cfg.get(*k)?;
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Object(o) => o.get("content")?.as_str()?.to_string(),
                    _ => return None,
                };
                Some((k.to_string(), s))
            })
            .collect();
        ChatTemplate::new(&template, special, &name)
    }

    /// Where the template came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template rendered for `messages`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut ctx: Vec<(String, Value)> = self
            .special
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        ctx.push(("messages".into(), Value::from(messages)));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        let ctx = Value::from_pairs(ctx);
        let tmpl = self
            .env
            .get_template("chat_template")
            .map_err(|e| template_error(&self.source, e))?;
        tmpl.render(ctx)
            .map_err(|e| template_error(&self.source, describe(&e)))
    }

    /// The conversation rendered whole, with the assistant turns located (see the module
    /// docs). The error names the record and the first turn that cannot be located.
    pub fn render_conversation(&self, conv: &Conversation) -> Result<RenderedChat> {
        let bad = |message: String| DataError::ChatRecord {
            id: conv.id.clone(),
            message,
        };
        let text = self.render(&conv.messages, false)?;
        let mut spans = Vec::new();
        let mut which = Vec::new();
        for (i, m) in conv.messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render(&conv.messages[..i], true)?;
            let upto = self.render(&conv.messages[..=i], false)?;
            if !upto.starts_with(&before) || !text.starts_with(&upto) {
                return Err(bad(format!(
                    "message {i} (assistant): the chat template does not render the \
                     conversation incrementally (the text up to this turn is not a prefix of \
                     the whole), so its learned part cannot be located"
                )));
            }
            spans.push(before.len()..upto.len());
            which.push(i);
        }
        if spans.is_empty() {
            return Err(bad("no assistant message to learn".into()));
        }
        Ok(RenderedChat {
            text,
            assistant_spans: spans,
            assistant_messages: which,
        })
    }
}

/// An error with its cause chain (minijinja puts the template line in the source).
fn describe(e: &JinjaError) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// Removes `{% generation %}` / `{% endgeneration %}` (with any whitespace control): Hugging
/// Face's extension renders their body unchanged and only records where it was.
fn strip_generation_tags(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start + 2..start + len];
        let word = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if word != "generation" && word != "endgeneration" {
            out.push_str(&rest[start..start + len + 2]);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// `strftime_now(format)`: templates that print today's date. Only UTC and the common
/// directives are supported (the data pipeline must not depend on the local time zone).
fn strftime_now(format: String) -> std::result::Result<String, JinjaError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('%') => out.push('%'),
            other => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.unwrap_or(' ')
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `tojson` as transformers defines it: Python's `json.dumps` (", " and ": " separators, non-
/// ASCII kept, keys in insertion order), with `indent` when given. minijinja's own filter
/// escapes HTML characters, which would change the rendered text.
fn tojson(
    value: Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<String, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_py_json(&value, indent, 0, &mut out)?;
    Ok(out)
}

fn write_py_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), JinjaError> {
    use minijinja::value::ValueKind as K;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        K::Seq | K::Iterable | K::Map => {
            let is_map = v.kind() == K::Map;
            let (open, close) = if is_map { ('{', '}') } else { ('[', ']') };
            out.push(open);
            let mut any = false;
            for (i, item) in v.try_iter()?.enumerate() {
                any = true;
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                if is_map {
                    out.push_str(&serde_json::Value::String(item.to_string()).to_string());
                    out.push_str(": ");
                    write_py_json(&v.get_item(&item)?, indent, depth + 1, out)?;
                } else {
                    write_py_json(&item, indent, depth + 1, out)?;
                }
            }
            if any {
                newline(out, depth);
            }
            out.push(close);
        }
        K::String => out.push_str(&serde_json::Value::String(v.to_string()).to_string()),
        K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        K::None | K::Undefined => out.push_str("null"),
        K::Number => match i64::try_from(v.clone()) {
            Ok(i) if !v.to_string().contains(['.', 'e', 'E']) => out.push_str(&i.to_string()),
            _ => {
                let f = f64::try_from(v.clone())?;
                out.push_str(&crate::pyrepr::python_float_repr(f));
            }
        },
        _ => out.push_str(&serde_json::Value::String(v.to_string()).to_string()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_are_removed_and_nothing_else() {
        let t = "{% for m in x %}{%- generation -%}{{ m }}{% endgeneration %}{% endfor %}";
        assert_eq!(
            strip_generation_tags(t),
            "{% for m in x %}{{ m }}{% endfor %}"
        );
    }

    #[test]
    fn dates_convert() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn tojson_writes_what_python_writes() {
        let t =
            ChatTemplate::new("{{ messages | tojson }}|{{ 2.5 | tojson }}", vec![], "t").unwrap();
        let m = vec![ChatMessage {
            role: "user".into(),
            content: "é<\"x\"".into(),
        }];
        assert_eq!(
            t.render(&m, false).unwrap(),
            r#"[{"role": "user", "content": "é<\"x\""}]|2.5"#
        );
    }
}
