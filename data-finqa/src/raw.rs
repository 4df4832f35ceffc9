//! Reading one JSON record without committing to a schema.
//!
//! A record is read into [`RawElement`]: for an object, only the fields any of our formats use
//! are kept (as `serde_json::Value`, so a wrong type becomes a per-record report instead of a
//! whole-file failure), every other field is skipped without being built (`table_retrieved_all`
//! and friends are most of an original FinQA file). A non-object element is remembered by kind.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The fields of a record that some format reads.
#[derive(Debug, Default, Clone)]
pub struct RawFields {
    /// All keys of the object, in file order (for detection and messages).
    pub keys: Vec<String>,
    pub id: Option<Value>,
    pub pre_text: Option<Value>,
    pub post_text: Option<Value>,
    pub table: Option<Value>,
    pub qa: Option<Value>,
    pub question: Option<Value>,
    pub answer: Option<Value>,
    pub final_result: Option<Value>,
    pub exe_ans: Option<Value>,
    pub gold_inds: Option<Value>,
    pub program: Option<Value>,
    pub program_re: Option<Value>,
    pub prompt: Option<Value>,
    pub completion: Option<Value>,
    pub messages: Option<Value>,
    pub instruction: Option<Value>,
    pub input: Option<Value>,
    pub output: Option<Value>,
}

impl RawFields {
    pub fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }
}

/// One element of a data file.
#[derive(Debug, Clone)]
pub enum RawElement {
    /// A JSON object.
    Object(Box<RawFields>),
    /// Anything else; the kind ("a number", "an array", ...) for the message.
    NotObject(&'static str),
}

impl<'de> Deserialize<'de> for RawElement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = RawElement;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawElement, A::Error> {
        let mut r = RawFields::default();
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "id" => Some(&mut r.id),
                "pre_text" => Some(&mut r.pre_text),
                "post_text" => Some(&mut r.post_text),
                "table" => Some(&mut r.table),
                "qa" => Some(&mut r.qa),
                "question" => Some(&mut r.question),
                "answer" => Some(&mut r.answer),
                "final_result" => Some(&mut r.final_result),
                "exe_ans" => Some(&mut r.exe_ans),
                "gold_inds" => Some(&mut r.gold_inds),
                "program" => Some(&mut r.program),
                "program_re" => Some(&mut r.program_re),
                "prompt" => Some(&mut r.prompt),
                "completion" => Some(&mut r.completion),
                "messages" => Some(&mut r.messages),
                "instruction" => Some(&mut r.instruction),
                "input" => Some(&mut r.input),
                "output" => Some(&mut r.output),
                _ => None,
            };
            match slot {
                Some(slot) => *slot = Some(map.next_value::<Value>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            r.keys.push(key);
        }
        Ok(RawElement::Object(Box::new(r)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawElement, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawElement::NotObject("an array"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawElement, E> {
        Ok(RawElement::NotObject("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawElement, E> {
        Ok(RawElement::NotObject("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawElement, E> {
        Ok(RawElement::NotObject("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawElement, E> {
        Ok(RawElement::NotObject("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawElement, E> {
        Ok(RawElement::NotObject("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawElement, E> {
        Ok(RawElement::NotObject("null"))
    }
    fn visit_none<E: de::Error>(self) -> Result<RawElement, E> {
        Ok(RawElement::NotObject("null"))
    }
}

/// A JSON value's kind, for messages ("found a number").
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
