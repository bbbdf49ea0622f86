//! Filtering `tools/list`, `prompts/list`, `resources/list` and `resources/templates/list`
//! responses to a virtual server's allowlist.
//!
//! Why: an agent must only see what it may call, under the names it must call them by. The
//! response from the upstream (plain JSON, or the matching event of an SSE stream) is rewritten:
//! items not allowed are dropped, tools and prompts get their exposed names (an upstream tool
//! exposed under two names appears twice), everything else (including `nextCursor`, `_meta`,
//! item schemas and key order) is kept byte for byte. Each item is re-serialized only when it is
//! renamed. A list response that cannot be read is replaced by a JSON-RPC error (fail closed).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::jsonrpc::Id;
use crate::policy::CompiledMember;
use crate::sse;

/// Which list a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `tools/list`.
    Tools,
    /// `prompts/list`.
    Prompts,
    /// `resources/list`.
    Resources,
    /// `resources/templates/list`.
    ResourceTemplates,
}

impl ListKind {
    /// The list kind of a JSON-RPC method, if it is a list method.
    pub fn of(method: &str) -> Option<Self> {
        match method {
            "tools/list" => Some(Self::Tools),
            "prompts/list" => Some(Self::Prompts),
            "resources/list" => Some(Self::Resources),
            "resources/templates/list" => Some(Self::ResourceTemplates),
            _ => None,
        }
    }

    /// The key of the array in `result`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }
}

/// The outcome of filtering one JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// Not the list response (a notification, a request, another id, an error): pass it on.
    Unchanged,
    /// The list response, filtered.
    Rewritten(String),
    /// The list response could not be read; send the error instead.
    Failed(String),
}

/// The message that replaces an unreadable list response.
pub const FAILED_MESSAGE: &str = "toolmesh could not filter the upstream's list response";

/// Filter one JSON-RPC message (`json`) that may be the response to a list request with `id`.
///
/// `strict`: the message must be the list response (a whole `application/json` body); when
/// false (an SSE event), anything that is not clearly the list response passes unchanged.
pub fn filter_message(
    json: &str,
    kind: ListKind,
    member: &CompiledMember,
    id: Option<&Id>,
    strict: bool,
) -> Filtered {
    let failed = || Filtered::Failed(failure_body(id));
    let Some(top) = parse_object(json) else {
        return if strict {
            failed()
        } else {
            Filtered::Unchanged
        };
    };
    if !strict && (top.has("method") || !top.has("result")) {
        return Filtered::Unchanged;
    }
    if top.has("method") || top.has("error") && !top.has("result") {
        // A notification, a server request or a JSON-RPC error: nothing to filter.
        return Filtered::Unchanged;
    }
    if !strict {
        let same_id = match (top.get("id").map(|r| Id::from_json(r.get())), id) {
            (Some(Some(got)), Some(want)) => got == *want,
            _ => false,
        };
        if !same_id {
            return Filtered::Unchanged;
        }
    }
    let Some(result) = top.get("result") else {
        return failed();
    };
    let Some(result_obj) = parse_object(result.get()) else {
        return failed();
    };
    let Some(items) = result_obj.get(kind.key()) else {
        return failed();
    };
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(items.get()) else {
        return failed();
    };
    let mut kept: Vec<Cow<'_, str>> = Vec::with_capacity(items.len());
    for item in items {
        keep_item(item.get(), kind, member, &mut kept);
    }
    let list = format!("[{}]", kept.join(","));
    let new_result = result_obj.replaced(kind.key(), &list);
    Filtered::Rewritten(top.replaced("result", &new_result))
}

fn failure_body(id: Option<&Id>) -> String {
    String::from_utf8_lossy(&crate::jsonrpc::error_body(id, -32603, FAILED_MESSAGE)).into_owned()
}

/// Decide one item; push it (renamed if needed) zero or more times.
fn keep_item<'a>(
    item: &'a str,
    kind: ListKind,
    member: &CompiledMember,
    out: &mut Vec<Cow<'a, str>>,
) {
    let Some(obj) = parse_object(item) else {
        return;
    };
    let string = |key: &str| {
        obj.get(key)
            .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
    };
    match kind {
        ListKind::Tools | ListKind::Prompts => {
            let by_upstream = if kind == ListKind::Tools {
                &member.tools_by_upstream
            } else {
                &member.prompts_by_upstream
            };
            let Some(name) = string("name") else {
                return;
            };
            let Some(exposed) = by_upstream.get(&name) else {
                return;
            };
            for e in exposed {
                if *e == name {
                    out.push(Cow::Borrowed(item));
                } else {
                    let quoted = serde_json::to_string(e).unwrap_or_default();
                    out.push(Cow::Owned(obj.replaced("name", &quoted)));
                }
            }
        }
        ListKind::Resources => {
            let Some(uri) = string("uri") else {
                return;
            };
            if member.resources.contains(&uri) || member.templates.iter().any(|t| t.matches(&uri)) {
                out.push(Cow::Borrowed(item));
            }
        }
        ListKind::ResourceTemplates => {
            let Some(t) = string("uriTemplate") else {
                return;
            };
            if member.template_strings.contains(&t) {
                out.push(Cow::Borrowed(item));
            }
        }
    }
}

/// Filter a whole `application/json` list response body.
pub fn filter_json_body(
    body: &[u8],
    kind: ListKind,
    member: &CompiledMember,
    id: Option<&Id>,
) -> Vec<u8> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) => return failure_body(id).into_bytes(),
    };
    match filter_message(text, kind, member, id, true) {
        Filtered::Unchanged => body.to_vec(),
        Filtered::Rewritten(s) | Filtered::Failed(s) => s.into_bytes(),
    }
}

/// Filter one complete SSE event of a list response stream.
pub fn filter_sse_event(
    raw: &[u8],
    kind: ListKind,
    member: &CompiledMember,
    id: Option<&Id>,
) -> Vec<u8> {
    let Some(data) = sse::event_data(raw) else {
        return raw.to_vec();
    };
    match filter_message(&data, kind, member, id, false) {
        Filtered::Unchanged => raw.to_vec(),
        Filtered::Rewritten(s) | Filtered::Failed(s) => sse::replace_data(raw, &s),
    }
}

/// A JSON object as an ordered list of (decoded key, raw value).
struct Object<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Object<'a> {
    /// The value of `key`; `None` when absent or repeated (a repeated key is ambiguous).
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        let mut found = self.entries.iter().filter(|(k, _)| k == key);
        let first = found.next()?;
        found.next().is_none().then_some(first.1)
    }

    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// Serialize with `key`'s value replaced by the JSON text `value`.
    fn replaced(&self, key: &str, value: &str) -> String {
        let mut out = String::with_capacity(value.len() + 64);
        out.push('{');
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k.as_ref()).unwrap_or_default());
            out.push(':');
            out.push_str(if k == key { value } else { v.get() });
        }
        out.push('}');
        out
    }
}

fn parse_object(json: &str) -> Option<Object<'_>> {
    let mut de = serde_json::Deserializer::from_str(json);
    let obj = ObjectSeed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(obj)
}

struct ObjectSeed;

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Object<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed {
    type Value = Object<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            entries.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(Object { entries })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom("not an object"))
    }
}

struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::policy;
    use serde_json::{Value, json};

    fn members() -> (CompiledMember, CompiledMember) {
        let p = policy();
        let vs = p
            .virtual_server("demo")
            .cloned()
            .unwrap_or_else(|| panic!("demo"));
        let m0 = vs.member(0).cloned().unwrap_or_else(|| panic!("m0"));
        let m1 = vs.member(1).cloned().unwrap_or_else(|| panic!("m1"));
        (m0, m1)
    }

    fn one() -> Id {
        Id::Number("1".into())
    }

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn tools_are_filtered_and_renamed() {
        let (m0, _) = members();
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"echo","description":"Echo","inputSchema":{"type":"object"}},
            {"name":"add_numbers","inputSchema":{"type":"object","properties":{"a":{"type":"number"}}}},
            {"name":"secret","inputSchema":{}},
            {"name":"printEnv"}
          ],"nextCursor":"abc"}}"#;
        let out = filter_json_body(body.as_bytes(), ListKind::Tools, &m0, Some(&one()));
        let got = v(&String::from_utf8_lossy(&out));
        assert_eq!(
            got,
            json!({"jsonrpc":"2.0","id":1,"result":{"tools":[
                {"name":"echo","description":"Echo","inputSchema":{"type":"object"}},
                {"name":"add","inputSchema":{"type":"object","properties":{"a":{"type":"number"}}}},
                {"name":"sum","inputSchema":{"type":"object","properties":{"a":{"type":"number"}}}}
            ],"nextCursor":"abc"}})
        );
        // Key order and untouched items are preserved byte for byte.
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains(
                r#"{"name":"echo","description":"Echo","inputSchema":{"type":"object"}}"#
            ),
            "{text}"
        );
        assert!(text.find("\"jsonrpc\"") < text.find("\"result\""));
    }

    #[test]
    fn table_of_list_kinds() {
        let (m0, m1) = members();
        let cases: Vec<(ListKind, &CompiledMember, Value, Value)> = vec![
            (
                ListKind::Prompts,
                &m0,
                json!({"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"simple_prompt"},{"name":"complex_prompt"}]}}),
                json!({"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"greet"}]}}),
            ),
            (
                ListKind::Resources,
                &m0,
                json!({"jsonrpc":"2.0","id":1,"result":{"resources":[
                    {"uri":"test://static-text","name":"a"},{"uri":"test://secret","name":"b"},
                    {"uri":"test://template/7/data","name":"c"}],"nextCursor":"2"}}),
                json!({"jsonrpc":"2.0","id":1,"result":{"resources":[
                    {"uri":"test://static-text","name":"a"},{"uri":"test://template/7/data","name":"c"}],"nextCursor":"2"}}),
            ),
            (
                ListKind::ResourceTemplates,
                &m0,
                json!({"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[
                    {"uriTemplate":"test://template/{id}/data"},{"uriTemplate":"test://other/{x}"}]}}),
                json!({"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[{"uriTemplate":"test://template/{id}/data"}]}}),
            ),
            (
                ListKind::Tools,
                &m1,
                json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_forecast"},{"name":"echo"}]}}),
                json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"forecast"}]}}),
            ),
            (
                ListKind::Tools,
                &m0,
                json!({"jsonrpc":"2.0","id":1,"result":{"tools":[]}}),
                json!({"jsonrpc":"2.0","id":1,"result":{"tools":[]}}),
            ),
            (
                // Items without a usable name are dropped.
                ListKind::Tools,
                &m0,
                json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":7},{"title":"x"},"echo",{"name":"echo"}]}}),
                json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"}]}}),
            ),
            (
                // A JSON-RPC error passes unchanged.
                ListKind::Tools,
                &m0,
                json!({"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"nope"}}),
                json!({"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"nope"}}),
            ),
        ];
        for (kind, member, input, want) in cases {
            let out = filter_json_body(input.to_string().as_bytes(), kind, member, Some(&one()));
            assert_eq!(v(&String::from_utf8_lossy(&out)), want, "{input}");
        }
    }

    #[test]
    fn duplicate_name_keys_drop_the_item() {
        let (m0, _) = members();
        let body =
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","name":"secret"}]}}"#;
        let out = filter_json_body(body.as_bytes(), ListKind::Tools, &m0, Some(&one()));
        assert_eq!(
            v(&String::from_utf8_lossy(&out)),
            json!({"jsonrpc":"2.0","id":1,"result":{"tools":[]}})
        );
    }

    #[test]
    fn unreadable_list_responses_fail_closed() {
        let (m0, _) = members();
        let bad = [
            "not json",
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":[]}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]},"result":{"tools":[{"name":"secret"}]}}"#,
            "[]",
        ];
        for body in bad {
            let out = filter_json_body(body.as_bytes(), ListKind::Tools, &m0, Some(&one()));
            let got = v(&String::from_utf8_lossy(&out));
            assert_eq!(got["error"]["code"], json!(-32603), "{body}");
            assert_eq!(got["id"], json!(1), "{body}");
        }
        let out = filter_json_body(b"\xff", ListKind::Tools, &m0, Some(&one()));
        assert_eq!(
            v(&String::from_utf8_lossy(&out))["error"]["code"],
            json!(-32603)
        );
    }

    #[test]
    fn sse_events() {
        let (m0, _) = members();
        let id = Id::String("r-1".into());
        let list = r#"{"jsonrpc":"2.0","id":"r-1","result":{"tools":[{"name":"echo"},{"name":"secret"}]}}"#;
        let notification =
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
        let other_id = r#"{"jsonrpc":"2.0","id":"r-2","result":{"tools":[{"name":"secret"}]}}"#;
        let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (
                format!("event: message\nid: 5\ndata: {list}\n\n").into_bytes(),
                b"event: message\nid: 5\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"r-1\",\"result\":{\"tools\":[{\"name\":\"echo\"}]}}\n\n".to_vec(),
            ),
            (format!("data: {notification}\n\n").into_bytes(), format!("data: {notification}\n\n").into_bytes()),
            (format!("data: {other_id}\n\n").into_bytes(), format!("data: {other_id}\n\n").into_bytes()),
            (b"id: 0\ndata:\n\n".to_vec(), b"id: 0\ndata:\n\n".to_vec()),
            (b": keepalive\n\n".to_vec(), b": keepalive\n\n".to_vec()),
        ];
        for (input, want) in cases {
            let got = filter_sse_event(&input, ListKind::Tools, &m0, Some(&id));
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
        // A list response event whose result is unreadable becomes an error event.
        let broken = b"data: {\"jsonrpc\":\"2.0\",\"id\":\"r-1\",\"result\":{\"tools\":5}}\n\n";
        let got = filter_sse_event(broken, ListKind::Tools, &m0, Some(&id));
        let data = sse::event_data(&got).unwrap_or_default();
        assert_eq!(v(&data)["error"]["code"], json!(-32603));
    }
}
