//! Telling which member asked, when a client answers a server request on a virtual server of
//! several members.
//!
//! Why: a member may ask the client something in the middle of a call (`sampling/createMessage`,
//! `elicitation/create`, `roots/list`), as a JSON-RPC request on the call's event stream; the
//! client answers with a new POST carrying only a JSON-RPC response with the same id. Nothing in
//! that POST names the member, and the filter keeps no state between requests (any Envoy serves
//! any request). So the filter tags the id of every server request it passes on a virtual
//! server of several members with the member's index — `"tm.<member>.<original id as JSON>"` —
//! and routes the answer by the tag, restoring the original id. A virtual server of one member
//! needs no tag and gets none.
//!
//! Tagging rewrites the event stream only where a server request passes; other events go on
//! byte for byte. The stream is rewritten event by event, so an event split across chunks is
//! held until it is complete (events are small; one larger than [`crate::sse::MAX_HELD`] ends the tagging
//! for that stream, passing everything on as it is).

use serde_json::Value;

use crate::jsonrpc::Id;
use crate::sse::{self, EventRewriter};

/// Prefix of a tagged id.
const TAG: &str = "tm.";

/// Tags the ids of server requests in one response's event stream.
#[derive(Debug)]
pub struct ServerRequestTagger {
    member: usize,
    events: EventRewriter,
}

impl ServerRequestTagger {
    /// For a response of member `member` (its index in the virtual server).
    pub fn new(member: usize) -> Self {
        Self {
            member,
            events: EventRewriter::default(),
        }
    }

    /// The bytes to pass on instead of `chunk` (`None`: pass `chunk` as it is): the complete
    /// events so far, server requests' ids tagged; an incomplete event waits for the next chunk
    /// (at `end`, everything goes).
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Option<Vec<u8>> {
        let member = self.member;
        self.events
            .push(chunk, end, |event| tag_event(event, member))
    }
}

/// The event with its server request's id tagged, or `None` when it carries no server request.
fn tag_event(event: &[u8], member: usize) -> Option<Vec<u8>> {
    if !contains(event, b"\"method\"") {
        return None;
    }
    let mut message: Value = serde_json::from_str(&sse::event_data(event)?).ok()?;
    let object = message.as_object_mut()?;
    object.get("method")?.as_str()?;
    let id = object.get("id")?;
    if !(id.is_string() || id.is_number()) {
        return None;
    }
    let tagged = format!("{TAG}{member}.{id}");
    object.insert("id".into(), Value::String(tagged));
    Some(sse::with_data(event, &message.to_string()))
}

/// Does `haystack` contain `needle`?
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A client's answer to a tagged server request: the member that asked and the original id
/// (JSON text); `None` for any other id.
pub fn untag(id: &Id) -> Option<(usize, String)> {
    let Id::String(s) = id else {
        return None;
    };
    let (member, original) = s.strip_prefix(TAG)?.split_once('.')?;
    let member = member.parse().ok()?;
    let original_is_id =
        serde_json::from_str::<Value>(original).is_ok_and(|v| v.is_string() || v.is_number());
    original_is_id.then(|| (member, original.to_owned()))
}

/// `body` (a JSON-RPC response) with its id replaced by `original` (JSON text).
pub fn restore_id(body: &[u8], original: &str) -> Option<Vec<u8>> {
    let mut message: Value = serde_json::from_slice(body).ok()?;
    let id: Value = serde_json::from_str(original).ok()?;
    message.as_object_mut()?.insert("id".into(), id);
    serde_json::to_vec(&message).ok()
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::sse::MAX_HELD;

    const REQUEST: &str = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"sampling/createMessage\",\"params\":{}}\n\n";
    const PROGRESS: &str = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
    const RESULT: &str =
        "event: message\r\nid: 7\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\r\n\r\n";

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, usize) {
        let mut t = ServerRequestTagger::new(2);
        let mut out = Vec::new();
        let mut rewritten = 0;
        for (i, c) in chunks.iter().enumerate() {
            match t.push(c, i + 1 == chunks.len()) {
                Some(new) => {
                    rewritten += 1;
                    out.extend(new);
                }
                None => out.extend_from_slice(c),
            }
        }
        (out, rewritten)
    }

    #[test]
    fn only_server_requests_are_tagged() {
        let stream = format!("{PROGRESS}{REQUEST}{RESULT}");
        let (out, _) = run(&[stream.as_bytes()]);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with(PROGRESS), "{out}");
        assert!(out.ends_with(RESULT), "untouched byte for byte: {out}");
        assert!(
            out.contains(r#""id":"tm.2.0""#),
            "the request's id is tagged: {out}"
        );
        let (out, rewritten) = run(&[PROGRESS.as_bytes(), RESULT.as_bytes()]);
        assert_eq!(rewritten, 0, "nothing to tag: chunks pass as they are");
        assert_eq!(out, format!("{PROGRESS}{RESULT}").as_bytes());
    }

    #[test]
    fn an_event_split_across_chunks_is_held_until_complete() {
        let stream = format!("{REQUEST}{RESULT}");
        for cut in [10, 40, REQUEST.len() - 1, REQUEST.len() + 5] {
            let (a, b) = stream.split_at(cut);
            let (out, _) = run(&[a.as_bytes(), b.as_bytes()]);
            let out = String::from_utf8(out).unwrap();
            assert!(out.contains(r#""id":"tm.2.0""#), "cut {cut}: {out}");
            assert!(out.ends_with(RESULT), "cut {cut}: {out}");
        }
        // A CR at a chunk's end waits for a possible LF.
        assert_eq!(sse::complete_len(b"data: x\r\n\r"), 0);
        assert_eq!(sse::complete_len(b"data: x\r\n\r\n"), 11);
        assert_eq!(sse::complete_len(b"data: x\n\ndata: y"), 9);
    }

    #[test]
    fn a_huge_event_ends_tagging_without_losing_bytes() {
        let huge = format!("data: {}", "x".repeat(MAX_HELD + 10));
        let (out, _) = run(&[PROGRESS.as_bytes(), huge.as_bytes(), REQUEST.as_bytes()]);
        assert_eq!(out, format!("{PROGRESS}{huge}{REQUEST}").as_bytes());
    }

    #[test]
    fn answers_are_routed_and_restored() {
        let tagged = |s: &str| Id::String(Rc::from(s));
        assert_eq!(untag(&tagged("tm.1.0")), Some((1, "0".to_owned())));
        assert_eq!(
            untag(&tagged(r#"tm.0."abc""#)),
            Some((0, r#""abc""#.to_owned()))
        );
        for other in ["0", "tm.x.1", "tm.1.", "tm.1.{}", "tm.1.nope"] {
            assert_eq!(untag(&tagged(other)), None, "{other}");
        }
        assert_eq!(untag(&Id::Number(Rc::from("5"))), None);
        let body = br#"{"jsonrpc":"2.0","id":"tm.1.\"abc\"","result":{"action":"accept"}}"#;
        let restored: Value =
            serde_json::from_slice(&restore_id(body, r#""abc""#).unwrap()).unwrap();
        assert_eq!(restored["id"], "abc");
        assert_eq!(restored["result"]["action"], "accept");
    }
}
