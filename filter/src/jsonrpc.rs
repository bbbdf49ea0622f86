//! Hardened parsing of one JSON-RPC 2.0 message from an MCP request body.
//!
//! Why a custom serde visitor instead of `serde_json::Value`: `serde_json` silently keeps the
//! last of two duplicate keys, while other JSON parsers keep the first. A body such as
//! `{"params":{"name":"allowed","name":"secret"}}` would then be judged on one name and run on
//! the other. This parser walks the whole document once and refuses **any** object with a
//! repeated key, at every depth (keys are compared after JSON escapes are decoded, so `"n\u0061me"`
//! and `"name"` are the same key). It keeps the byte span of the deciding strings
//! (`params.name`, `params.uri`, `params.ref.name`, `params.ref.uri`) so a rename rewrites exactly
//! that token and leaves the rest of the body byte-for-byte unchanged.
//!
//! Rules, in the order they are checked:
//! - not UTF-8, empty, or not JSON (including trailing garbage and nesting deeper than 128) →
//!   [`ParseError::Malformed`];
//! - a top-level array → [`ParseError::Batch`] (MCP 2025-06-18 removed JSON-RPC batching, and
//!   a batch would let one allowed element carry a denied one);
//! - a repeated key anywhere → [`ParseError::DuplicateKey`];
//! - not an object, `jsonrpc` missing or not `"2.0"`, `method` not a string, `id` not a string
//!   or number, `params` not an object, `result` and `error` both present, or no `method` and
//!   no `result`/`error` → [`ParseError::Invalid`].

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::rc::Rc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON-RPC request id: a string or a number, kept as sent so a reply echoes it exactly.
/// (Shared text: the request, the call observer and a reply hold the same id.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    /// A numeric id; the JSON text as sent (for example `1` or `-7`).
    Number(Rc<str>),
    /// A string id, decoded.
    String(Rc<str>),
}

impl Id {
    /// Parse an id from its JSON text; `None` unless it is a string or a number.
    pub fn from_json(raw: &str) -> Option<Id> {
        match raw.as_bytes().first()? {
            b'"' => json_str(raw).map(|s| Id::String(Rc::from(s.as_ref()))),
            b'-' | b'0'..=b'9' => Some(Id::Number(Rc::from(raw))),
            _ => None,
        }
    }

    /// Is `raw` (a JSON value's text) this id? Same rule as comparing
    /// [`Id::from_json`]`(raw)` with `self`, without allocating.
    pub fn is_json(&self, raw: &str) -> bool {
        match (self, raw.as_bytes().first()) {
            (Id::Number(n), Some(b'-' | b'0'..=b'9')) => **n == *raw,
            (Id::String(s), Some(b'"')) => json_str(raw).is_some_and(|v| *v == **s),
            _ => false,
        }
    }

    /// The id as JSON text.
    pub fn to_json(&self) -> String {
        match self {
            Id::Number(n) => n.to_string(),
            Id::String(s) => serde_json::to_string(&**s).unwrap_or_else(|_| "null".to_owned()),
        }
    }
}

/// Decode the JSON text of a string value (`None` if it is not a JSON string).
///
/// Why not always `serde_json::from_str::<String>`: the text comes from a document the parser
/// already validated, so a token with no backslash is exactly its content between the quotes;
/// only escaped strings need decoding (and an allocation).
pub fn json_str(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.bytes().all(|b| b != b'\\' && b != b'"' && b >= 0x20) {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// What kind of JSON-RPC message the body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `method` and `id`: expects a response.
    Request,
    /// `method`, no `id`.
    Notification,
    /// No `method`; `result` or `error` and an `id`: the client answering a server request.
    Response,
}

/// A deciding string field of the body: its JSON text and where that text sits in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// The raw JSON text of the value (with quotes and escapes, if a string).
    pub raw: &'a str,
    /// Byte range of `raw` in the body.
    pub span: Range<usize>,
}

impl<'a> Field<'a> {
    /// The decoded string value, or `None` if the value is not a JSON string.
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        json_str(self.raw)
    }
}

/// `params.ref` of `completion/complete`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reference<'a> {
    /// `ref.type` (`ref/prompt` or `ref/resource`), if a string.
    pub kind: Option<String>,
    /// `ref.name`.
    pub name: Option<Field<'a>>,
    /// `ref.uri`.
    pub uri: Option<Field<'a>>,
}

/// A parsed JSON-RPC message, borrowing the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// Request, notification or response.
    pub kind: Kind,
    /// The id (requests and responses).
    pub id: Option<Id>,
    /// The method (requests and notifications).
    pub method: Option<Cow<'a, str>>,
    /// `params.name`.
    pub name: Option<Field<'a>>,
    /// `params.uri`.
    pub uri: Option<Field<'a>>,
    /// `params.ref`, if it is present: `Err(())` when it is not a well-formed object.
    pub reference: Option<Result<Reference<'a>, ()>>,
}

/// Why a body is not an acceptable JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not UTF-8 or not JSON.
    #[error("the body is not valid JSON")]
    Malformed,
    /// A JSON array at the top level.
    #[error("batches are not supported by this gateway")]
    Batch,
    /// An object repeats a key; carries the id when it is itself unambiguous.
    #[error("the body repeats the key {key:?}")]
    DuplicateKey {
        /// The repeated key (decoded).
        key: String,
        /// The request id, if known.
        id: Option<Id>,
    },
    /// Valid JSON that is not an acceptable JSON-RPC 2.0 message; carries the id when it could be
    /// read unambiguously.
    #[error("invalid JSON-RPC message: {why}")]
    Invalid {
        /// What is wrong.
        why: String,
        /// The request id, if known.
        id: Option<Id>,
    },
}

/// Parse `body` as one JSON-RPC message (see the module docs for the rules).
pub fn parse(body: &[u8]) -> Result<Message<'_>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::Malformed)?;
    let first = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_none() {
        return Err(ParseError::Malformed);
    }
    let dup = Cell::new(None::<String>);
    let ctx = Ctx {
        base: text.as_ptr() as usize,
        len: text.len(),
        dup: &dup,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let top = TopSeed { ctx: &ctx }.deserialize(&mut de);
    let top = top.and_then(|t| de.end().map(|()| t));
    match top {
        Ok(Top::Batch) => Err(ParseError::Batch),
        Ok(Top::NotObject) => Err(ParseError::Invalid {
            why: "the body is not a JSON object".into(),
            id: None,
        }),
        Ok(Top::Object(raw)) => validate(raw),
        Err(e) => {
            if let Some(key) = dup.take() {
                return Err(ParseError::DuplicateKey {
                    key,
                    id: recover_id(text),
                });
            }
            match e.classify() {
                serde_json::error::Category::Data => Err(ParseError::Invalid {
                    why: e.to_string(),
                    id: recover_id(text),
                }),
                _ => Err(ParseError::Malformed),
            }
        }
    }
}

/// After a data error, try to read the id alone (refusing a duplicated `id` key).
fn recover_id(text: &str) -> Option<Id> {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let probe: Probe<'_> = serde_json::from_str(text).ok()?;
    Id::from_json(probe.id?.get())
}

fn validate(raw: RawTop<'_>) -> Result<Message<'_>, ParseError> {
    let id = match raw.id {
        None => None,
        Some(r) => match Id::from_json(r) {
            Some(id) => Some(id),
            None => {
                return Err(ParseError::Invalid {
                    why: "id must be a string or a number".into(),
                    id: None,
                });
            }
        },
    };
    let invalid = |why: &str| ParseError::Invalid {
        why: why.to_owned(),
        id: id.clone(),
    };
    match raw.jsonrpc.and_then(json_str) {
        Some(v) if v == "2.0" => {}
        _ => return Err(invalid("jsonrpc must be \"2.0\"")),
    }
    let method = match raw.method {
        None => None,
        Some(r) => match json_str(r) {
            Some(m) => Some(m),
            None => return Err(invalid("method must be a string")),
        },
    };
    if raw.params_not_object {
        return Err(invalid("params must be an object"));
    }
    let kind = match (&method, &id) {
        (Some(_), _) if raw.has_result || raw.has_error => {
            return Err(invalid("a request cannot carry result or error"));
        }
        (Some(_), Some(_)) => Kind::Request,
        (Some(_), None) => Kind::Notification,
        (None, Some(_)) if raw.has_result != raw.has_error => Kind::Response,
        (None, _) => {
            return Err(invalid(
                "a message needs a method, or an id with result or error",
            ));
        }
    };
    let reference = raw
        .reference
        .map(|r| parse_reference(r.raw, r.span.start, raw.base_len));
    Ok(Message {
        kind,
        id,
        method,
        name: raw.name,
        uri: raw.uri,
        reference,
    })
}

/// Parse `params.ref` strictly (it is small): an object, no duplicate keys.
fn parse_reference(raw: &str, offset: usize, body_len: usize) -> Result<Reference<'_>, ()> {
    let dup = Cell::new(None::<String>);
    let ctx = Ctx {
        base: (raw.as_ptr() as usize).wrapping_sub(offset),
        len: body_len,
        dup: &dup,
    };
    let mut de = serde_json::Deserializer::from_str(raw);
    let r = RefSeed { ctx: &ctx }.deserialize(&mut de).map_err(|_| ())?;
    de.end().map_err(|_| ())?;
    Ok(r)
}

/// Shared state of one parse: the body's address (to compute spans) and the duplicate key seen.
struct Ctx<'c> {
    base: usize,
    len: usize,
    dup: &'c Cell<Option<String>>,
}

impl Ctx<'_> {
    fn field<'a>(&self, raw: &'a RawValue) -> Option<Field<'a>> {
        let text = raw.get();
        let start = (text.as_ptr() as usize).checked_sub(self.base)?;
        let end = start.checked_add(text.len())?;
        (end <= self.len).then_some(Field {
            raw: text,
            span: start..end,
        })
    }
}

/// Tracks the keys of one object; reports the first repeat.
///
/// The first [`Keys::INLINE`] keys live on the stack (an MCP object rarely has more), so a
/// typical message allocates nothing here; past that a `Vec`, and past 16 keys a `HashSet`
/// (so a hostile object with many keys stays linear).
struct Keys<'de> {
    inline: [Option<Cow<'de, str>>; Keys::INLINE],
    len: usize,
    spill: Vec<Cow<'de, str>>,
    large: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> Keys<'de> {
    const INLINE: usize = 8;

    fn new() -> Self {
        Self {
            inline: Default::default(),
            len: 0,
            spill: Vec::new(),
            large: None,
        }
    }

    /// Returns false if `key` was already seen.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if let Some(set) = &mut self.large {
            return set.insert(key);
        }
        let seen = self.inline.iter().flatten().any(|k| *k == key) || self.spill.contains(&key);
        if seen {
            return false;
        }
        if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = Some(key);
        } else {
            self.spill.push(key);
        }
        self.len += 1;
        if self.len > 16 {
            let mut set: HashSet<Cow<'de, str>> =
                self.inline.iter_mut().flat_map(Option::take).collect();
            set.extend(self.spill.drain(..));
            self.large = Some(set);
        }
        true
    }
}

fn duplicate<E: de::Error>(ctx: &Ctx<'_>, key: &str) -> E {
    ctx.dup.set(Some(key.to_owned()));
    E::custom(format_args!("duplicate key {key:?}"))
}

/// Deserializes a key, borrowed when it has no escapes, decoded otherwise.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Walks any value, refusing repeated keys at every depth, keeping nothing.
struct Strict<'c, 'x> {
    ctx: &'c Ctx<'x>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Strict { ctx: self.ctx })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = Keys::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if !keys.insert(key.clone()) {
                return Err(duplicate(self.ctx, &key));
            }
            map.next_value_seed(Strict { ctx: self.ctx })?;
        }
        Ok(())
    }
}

/// What the top level turned out to be.
enum Top<'a> {
    Object(RawTop<'a>),
    Batch,
    NotObject,
}

/// The top-level object's deciding fields, before validation.
#[derive(Default)]
struct RawTop<'a> {
    jsonrpc: Option<&'a str>,
    method: Option<&'a str>,
    id: Option<&'a str>,
    has_result: bool,
    has_error: bool,
    params_not_object: bool,
    name: Option<Field<'a>>,
    uri: Option<Field<'a>>,
    reference: Option<Field<'a>>,
    base_len: usize,
}

struct TopSeed<'c, 'x> {
    ctx: &'c Ctx<'x>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = Top<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Top::NotObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Top::NotObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Top::NotObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Top::NotObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Top::NotObject)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Top::NotObject)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Validate the JSON of the whole batch so that garbage is reported as malformed.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::Batch)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let mut keys = Keys::new();
        let mut top = RawTop {
            base_len: ctx.len,
            ..RawTop::default()
        };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if !keys.insert(key.clone()) {
                return Err(duplicate(ctx, &key));
            }
            match key.as_ref() {
                "jsonrpc" => top.jsonrpc = Some(map.next_value::<&'de RawValue>()?.get()),
                "method" => top.method = Some(map.next_value::<&'de RawValue>()?.get()),
                "id" => top.id = Some(map.next_value::<&'de RawValue>()?.get()),
                "params" => {
                    let p = map.next_value_seed(ParamsSeed { ctx })?;
                    match p {
                        Some(p) => {
                            top.name = p.name;
                            top.uri = p.uri;
                            top.reference = p.reference;
                        }
                        None => top.params_not_object = true,
                    }
                }
                other => {
                    if other == "result" {
                        top.has_result = true;
                    }
                    if other == "error" {
                        top.has_error = true;
                    }
                    map.next_value_seed(Strict { ctx })?;
                }
            }
        }
        Ok(Top::Object(top))
    }
}

/// `params`: `None` when it is not an object.
struct ParamsSeed<'c, 'x> {
    ctx: &'c Ctx<'x>,
}

#[derive(Default)]
struct RawParams<'a> {
    name: Option<Field<'a>>,
    uri: Option<Field<'a>>,
    reference: Option<Field<'a>>,
}

impl<'de> DeserializeSeed<'de> for ParamsSeed<'_, '_> {
    type Value = Option<RawParams<'de>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed<'_, '_> {
    type Value = Option<RawParams<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("params")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element_seed(Strict { ctx: self.ctx })?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let mut keys = Keys::new();
        let mut p = RawParams::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if !keys.insert(key.clone()) {
                return Err(duplicate(ctx, &key));
            }
            let slot = match key.as_ref() {
                "name" => &mut p.name,
                "uri" => &mut p.uri,
                "ref" => &mut p.reference,
                _ => {
                    map.next_value_seed(Strict { ctx })?;
                    continue;
                }
            };
            let raw = map.next_value::<&'de RawValue>()?;
            // Deciding values that are objects are checked for duplicates too.
            let mut inner = serde_json::Deserializer::from_str(raw.get());
            Strict { ctx }
                .deserialize(&mut inner)
                .map_err(|e| de::Error::custom(e.to_string()))?;
            *slot = ctx.field(raw);
        }
        Ok(Some(p))
    }
}

/// `params.ref`.
struct RefSeed<'c, 'x> {
    ctx: &'c Ctx<'x>,
}

impl<'de> DeserializeSeed<'de> for RefSeed<'_, '_> {
    type Value = Reference<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RefSeed<'_, '_> {
    type Value = Reference<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reference object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let mut keys = Keys::new();
        let mut r = Reference::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if !keys.insert(key.clone()) {
                return Err(duplicate(ctx, &key));
            }
            match key.as_ref() {
                "type" => {
                    let raw = map.next_value::<&'de RawValue>()?;
                    r.kind = serde_json::from_str::<String>(raw.get()).ok();
                }
                "name" => r.name = ctx.field(map.next_value::<&'de RawValue>()?),
                "uri" => r.uri = ctx.field(map.next_value::<&'de RawValue>()?),
                _ => map.next_value_seed(Strict { ctx })?,
            }
        }
        Ok(r)
    }
}

/// A JSON-RPC error message as bytes: `{"jsonrpc":"2.0","id":<id or null>,"error":{...}}`.
pub fn error_body(id: Option<&Id>, code: i64, message: &str) -> Vec<u8> {
    error_body_with_data(id, code, message, None)
}

/// [`error_body`] with the error's `data` (JSON text, inserted as is).
pub fn error_body_with_data(
    id: Option<&Id>,
    code: i64,
    message: &str,
    data: Option<&str>,
) -> Vec<u8> {
    let id = id.map_or_else(|| "null".to_owned(), Id::to_json);
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".to_owned());
    let data = data.map_or_else(String::new, |d| format!(r#","data":{d}"#));
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{message}{data}}}}}"#)
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Message<'_> {
        match parse(body.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("{body}: {e:?}"),
        }
    }

    #[test]
    fn accepts_messages() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
                Kind::Request,
                Some(Id::Number("1".into())),
                Some("ping"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{}}"#,
                Kind::Request,
                Some(Id::String("a".into())),
                Some("tools/list"),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                Kind::Notification,
                None,
                Some("notifications/initialized"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
                Kind::Response,
                Some(Id::Number("5".into())),
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":5,"error":{"code":1,"message":"x"}}"#,
                Kind::Response,
                Some(Id::Number("5".into())),
                None,
            ),
            (
                " \n{\"jsonrpc\":\"2.0\",\"id\":-3,\"method\":\"ping\"} \n",
                Kind::Request,
                Some(Id::Number("-3".into())),
                Some("ping"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","extra":{"a":[1,{"b":2}]}}"#,
                Kind::Request,
                Some(Id::Number("1".into())),
                Some("x"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
                Kind::Request,
                Some(Id::Number("1.5".into())),
                Some("ping"),
            ),
        ];
        for (body, kind, id, method) in cases {
            let m = ok(body);
            assert_eq!(m.kind, kind, "{body}");
            assert_eq!(m.id, id, "{body}");
            assert_eq!(m.method.as_deref(), method, "{body}");
        }
    }

    #[test]
    fn extracts_deciding_fields_with_spans() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1}}}"#;
        let m = ok(body);
        let name = m.name.clone().unwrap_or_else(|| panic!("no name"));
        assert_eq!(name.as_str().as_deref(), Some("add"));
        assert_eq!(body.get(name.span.clone()), Some("\"add\""));

        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\u0061dd"}}"#;
        let m = ok(body);
        let name = m.name.unwrap_or_else(|| panic!("no name"));
        assert_eq!(name.as_str().as_deref(), Some("add"));
        assert_eq!(body.get(name.span), Some(r#""\u0061dd""#));

        let body =
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"test://x"}}"#;
        assert_eq!(
            ok(body).uri.and_then(|u| u.as_str()).as_deref(),
            Some("test://x")
        );

        let body = r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet"},"argument":{"name":"n","value":"v"}}}"#;
        let m = ok(body);
        let r = match m.reference {
            Some(Ok(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.kind.as_deref(), Some("ref/prompt"));
        let rn = r.name.unwrap_or_else(|| panic!("no ref name"));
        assert_eq!(rn.as_str().as_deref(), Some("greet"));
        assert_eq!(body.get(rn.span), Some("\"greet\""));
        assert!(m.name.is_none(), "argument.name is not params.name");
    }

    #[test]
    fn refuses_bad_bodies() {
        use ParseError as E;
        let dup = |k: &str| E::DuplicateKey {
            key: k.to_owned(),
            id: if k == "id" {
                None
            } else {
                Some(Id::Number("1".into()))
            },
        };
        let cases: Vec<(&[u8], E)> = vec![
            (b"", E::Malformed),
            (b"   ", E::Malformed),
            (b"{", E::Malformed),
            (b"{\"jsonrpc\":\"2.0\",}", E::Malformed),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"} x", E::Malformed),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}{}", E::Malformed),
            (b"\xff\xfe", E::Malformed),
            (b"{\"jsonrpc\":\"2.0\",\"method\":\"p\xffing\"}", E::Malformed),
            (b"{'jsonrpc':'2.0'}", E::Malformed),
            (b"{\"a\":\"\\ud800\"}", E::Malformed), // lone surrogate
            (b"{\"a\":01}", E::Malformed),
            (b"{\"a\":NaN}", E::Malformed),
            (b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}", E::Malformed), // BOM
            (b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]", E::Batch),
            (b"[]", E::Batch),
            (b"[1,", E::Malformed),
            (br#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}"#, dup("jsonrpc")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#, dup("method")),
            (br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#, dup("id")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{},"params":{}}"#, dup("params")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#, dup("name")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}"#, dup("name")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","\u006eame":"b"}}"#, dup("name")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a","uri":"b"}}"#, dup("uri")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a","name":"b"}}}"#, dup("name")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{},"ref":{}}}"#, dup("ref")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1,"x":2}}}"#, dup("x")),
            (br#"{"jsonrpc":"2.0","id":1,"method":"x","extra":[{"k":1,"k":1}]}"#, dup("k")),
            (br#"{"jsonrpc":"2.0","id":1,"m\u0065thod":"ping","method":"x"}"#, dup("method")),
        ];
        for (body, want) in cases {
            assert_eq!(parse(body), Err(want), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn many_keys_use_the_set() {
        let mut args: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"arguments":{{{}}}}}}}"#,
            args.join(",")
        );
        assert!(parse(body.as_bytes()).is_ok());
        args.push("\"k3\":0".into());
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"arguments":{{{}}}}}}}"#,
            args.join(",")
        );
        assert_eq!(
            parse(body.as_bytes()),
            Err(ParseError::DuplicateKey {
                key: "k3".into(),
                id: Some(Id::Number("1".into()))
            })
        );
    }

    #[test]
    fn refuses_invalid_messages() {
        let cases: [(&str, Option<Id>); 14] = [
            (r#"{"id":1,"method":"ping"}"#, Some(Id::Number("1".into()))),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                Some(Id::Number("1".into())),
            ),
            (
                r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#,
                Some(Id::Number("1".into())),
            ),
            (r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, None),
            (r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#, None),
            (r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#, None),
            (
                r#"{"jsonrpc":"2.0","id":"x","method":7}"#,
                Some(Id::String("x".into())),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}"#,
                Some(Id::Number("1".into())),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"x"}"#,
                Some(Id::Number("1".into())),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
                Some(Id::Number("1".into())),
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, Some(Id::Number("1".into()))),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
                Some(Id::Number("1".into())),
            ),
            (r#"{"jsonrpc":"2.0","result":{}}"#, None),
            ("\"just a string\"", None),
        ];
        for (body, want_id) in cases {
            match parse(body.as_bytes()) {
                Err(ParseError::Invalid { id, .. }) => assert_eq!(id, want_id, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn string_tokens_decode_like_serde() {
        let cases = [
            r#""add""#,
            r#""""#,
            r#""\u0061dd""#,
            r#""a\"b""#,
            r#""tab\there""#,
            r#""é""#,
            "\"a\"b\"",
            "\"a\u{1}b\"",
            "\"unterminated",
            "7",
            "null",
            "",
        ];
        for raw in cases {
            assert_eq!(
                json_str(raw).map(Cow::into_owned),
                serde_json::from_str::<String>(raw).ok(),
                "{raw}"
            );
        }
        assert!(matches!(json_str(r#""add""#), Some(Cow::Borrowed("add"))));
    }

    #[test]
    fn ids_match_their_json() {
        let raws = [
            "1",
            "-7",
            "1.5",
            r#""a""#,
            r#""\u0061""#,
            r#""1""#,
            "null",
            "true",
        ];
        for id_raw in raws {
            let Some(id) = Id::from_json(id_raw) else {
                continue;
            };
            for raw in raws {
                assert_eq!(
                    id.is_json(raw),
                    Id::from_json(raw).as_ref() == Some(&id),
                    "{id_raw} vs {raw}"
                );
            }
        }
    }

    #[test]
    fn deep_nesting_is_malformed_not_a_crash() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"a":{}1{}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(parse(body.as_bytes()), Err(ParseError::Malformed));
    }

    #[test]
    fn error_bodies() {
        let cases = [
            (
                None,
                -32700,
                "bad",
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}"#,
            ),
            (
                Some(Id::Number("7".into())),
                -32602,
                "Tool 'x' is not allowed",
                r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"Tool 'x' is not allowed"}}"#,
            ),
            (
                Some(Id::String("a\"b".into())),
                -32600,
                "q\"uote",
                r#"{"jsonrpc":"2.0","id":"a\"b","error":{"code":-32600,"message":"q\"uote"}}"#,
            ),
        ];
        for (id, code, msg, want) in cases {
            let got = error_body(id.as_ref(), code, msg);
            assert_eq!(String::from_utf8_lossy(&got), want);
            assert!(serde_json::from_slice::<serde_json::Value>(&got).is_ok());
        }
    }
}
