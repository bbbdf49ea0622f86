//! Observing how a forwarded `tools/call` ended, without holding the response back.
//!
//! Why: the per-tool `errors` counter must count calls that failed from the agent's point of
//! view: an HTTP status >= 400, a JSON-RPC `error`, a `result` with `isError: true`, or a
//! response that never completed (upstream reset, timeout, client gone). The response streams
//! through untouched; [`CallObserver`] looks at copies of the chunks: a JSON body is copied up
//! to a cap and read at the end, an SSE stream is split into events and the event carrying the
//! response for the request id decides.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::jsonrpc::Id;
use crate::sse::{SseSplitter, event_data};

/// What the response body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`.
    Json,
    /// `text/event-stream`.
    Sse,
    /// Anything else: only the status counts.
    Other,
}

impl BodyKind {
    /// Classify a `content-type` header value.
    pub fn of(content_type: Option<&str>) -> Self {
        match content_type.map(media_type) {
            Some(t) if t.eq_ignore_ascii_case("application/json") => Self::Json,
            Some(t) if t.eq_ignore_ascii_case("text/event-stream") => Self::Sse,
            _ => Self::Other,
        }
    }
}

/// The media type of a content-type value (parameters and whitespace removed).
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Watches one call's response.
#[derive(Debug)]
pub struct CallObserver {
    id: Option<Id>,
    kind: BodyKind,
    cap: usize,
    json: Vec<u8>,
    json_overflow: bool,
    sse: SseSplitter,
    /// `Some(true)`: the response for the id was seen and is an error.
    verdict: Option<bool>,
}

impl CallObserver {
    /// Watch a response of `kind` to the request with `id`, copying at most `cap` bytes.
    pub fn new(id: Option<Id>, kind: BodyKind, cap: usize) -> Self {
        Self {
            id,
            kind,
            cap,
            json: Vec::new(),
            json_overflow: false,
            sse: SseSplitter::new(cap),
            verdict: None,
        }
    }

    /// Does the observer need the body chunks?
    pub fn wants_body(&self) -> bool {
        self.kind != BodyKind::Other && self.verdict.is_none()
    }

    /// Feed a chunk of the response body.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.verdict.is_some() {
            return;
        }
        match self.kind {
            BodyKind::Json => {
                if self.json_overflow || self.json.len() + chunk.len() > self.cap {
                    self.json_overflow = true;
                    self.json = Vec::new();
                } else {
                    self.json.extend_from_slice(chunk);
                }
            }
            BodyKind::Sse => {
                for event in self.sse.push(chunk) {
                    if let Some(data) = event_data(&event)
                        && let Some(is_error) = response_is_error(&data, self.id.as_ref())
                    {
                        self.verdict = Some(is_error);
                        self.sse = SseSplitter::new(0);
                        break;
                    }
                }
            }
            BodyKind::Other => {}
        }
    }

    /// Feed the last chunk of the body (call [`CallObserver::finish`] next). A JSON body that
    /// arrives in one chunk is read in place instead of being copied.
    pub fn push_last(&mut self, chunk: &[u8]) {
        if self.kind == BodyKind::Json
            && self.verdict.is_none()
            && self.json.is_empty()
            && !self.json_overflow
        {
            let is_error = chunk.len() <= self.cap
                && std::str::from_utf8(chunk)
                    .ok()
                    .and_then(|t| response_is_error(t, self.id.as_ref()))
                    .unwrap_or(false);
            self.verdict = Some(is_error);
            return;
        }
        self.push(chunk);
    }

    /// The body ended: was the call an error? (`false` if the response could not be read, for
    /// example a JSON body over the cap.)
    /// The verdict, if the response for the request id has already been seen: `Some(true)` for
    /// an error (JSON-RPC `error` or `isError: true`), `Some(false)` for a success.
    pub fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// Decide from what was seen (idempotent): `true` if the response is an error.
    pub fn finish(&mut self) -> bool {
        if let Some(v) = self.verdict {
            return v;
        }
        let v = match self.kind {
            BodyKind::Json if !self.json_overflow => std::str::from_utf8(&self.json)
                .ok()
                .and_then(|t| response_is_error(t, self.id.as_ref()))
                .unwrap_or(false),
            BodyKind::Sse => {
                let tail = self.sse.finish();
                event_data(&tail)
                    .and_then(|d| response_is_error(&d, self.id.as_ref()))
                    .unwrap_or(false)
            }
            _ => false,
        };
        self.verdict = Some(v);
        v
    }
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    method: Option<IgnoredAny>,
    #[serde(borrow)]
    result: Option<ResultProbe<'a>>,
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ResultProbe<'a> {
    #[serde(rename = "isError", borrow)]
    is_error: Option<&'a RawValue>,
}

/// If `json` is the JSON-RPC response to `id`: `Some(is_error)`; otherwise `None`.
pub fn response_is_error(json: &str, id: Option<&Id>) -> Option<bool> {
    let probe: Probe<'_> = serde_json::from_str(json).ok()?;
    if probe.method.is_some() {
        return None;
    }
    if !id?.is_json(probe.id?.get()) {
        return None;
    }
    if probe.error.is_some() {
        return Some(true);
    }
    let result = probe.result?;
    Some(result.is_error.is_some_and(|v| v.get() == "true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id7() -> Id {
        Id::Number("7".into())
    }

    #[test]
    fn response_classification() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#,
                Some(false),
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":false}}"#,
                Some(false),
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#,
                Some(true),
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"result":{"isError":"true"}}"#,
                Some(false),
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"x"}}"#,
                Some(true),
            ),
            (
                r#"{"jsonrpc":"2.0","id":8,"result":{"isError":true}}"#,
                None,
            ),
            (r#"{"jsonrpc":"2.0","id":"7","result":{}}"#, None),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{}}"#,
                None,
            ),
            ("garbage", None),
        ];
        for (json, want) in cases {
            assert_eq!(response_is_error(json, Some(&id7())), want, "{json}");
        }
    }

    #[test]
    fn json_bodies_across_chunks() {
        let body = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"boom"}],"isError":true}}"#;
        for cut in 0..body.len() {
            let mut o = CallObserver::new(Some(id7()), BodyKind::Json, 1 << 20);
            let (a, b) = body.split_at(cut);
            o.push(a);
            o.push(b);
            assert!(o.finish(), "cut {cut}");
            let mut o = CallObserver::new(Some(id7()), BodyKind::Json, 1 << 20);
            o.push(a);
            o.push_last(b);
            assert!(o.finish(), "cut {cut}, last chunk marked");
        }
        let mut o = CallObserver::new(Some(id7()), BodyKind::Json, 1 << 20);
        o.push_last(body);
        assert!(o.finish(), "one chunk, read in place");
        let ok = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#;
        let mut o = CallObserver::new(Some(id7()), BodyKind::Json, 1 << 20);
        o.push_last(ok);
        assert!(!o.finish());
        let mut o = CallObserver::new(Some(id7()), BodyKind::Json, 10);
        o.push_last(body);
        assert!(
            !o.finish(),
            "over the cap in one chunk: unknown counts as success"
        );
        let mut o = CallObserver::new(Some(id7()), BodyKind::Json, 10);
        o.push(body);
        assert!(!o.finish(), "over the cap: unknown counts as success");
    }

    #[test]
    fn sse_streams() {
        let progress = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
        let ok =
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[]}}\n\n";
        let err = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"isError\":true}}\n\n";
        let cases = [
            (vec!["id: 0\ndata:\n\n", progress, ok], false),
            (vec![progress, err], true),
            (vec![progress, &err[..20], &err[20..]], true),
            (vec![progress], false),
            // A final event without its blank line still counts.
            (vec![err.trim_end()], true),
        ];
        for (chunks, want) in cases {
            let mut o = CallObserver::new(Some(id7()), BodyKind::Sse, 1 << 20);
            for c in &chunks {
                o.push(c.as_bytes());
            }
            assert_eq!(o.finish(), want, "{chunks:?}");
        }
    }

    #[test]
    fn body_kinds() {
        let cases = [
            (Some("application/json"), BodyKind::Json),
            (Some("Application/JSON; charset=utf-8"), BodyKind::Json),
            (Some("text/event-stream"), BodyKind::Sse),
            (Some(" text/event-stream ;x=y"), BodyKind::Sse),
            (Some("text/plain"), BodyKind::Other),
            (None, BodyKind::Other),
        ];
        for (ct, want) in cases {
            assert_eq!(BodyKind::of(ct), want, "{ct:?}");
        }
    }
}
