//! The per-request state machine the proxy-wasm shell drives.
//!
//! Why: the shell should only move bytes between Envoy and this crate. [`Flow`] receives each
//! proxy-wasm callback's inputs as plain values (headers, body bytes, status, the current time)
//! and answers with plain actions (forward with this route, reply with this body, replace this
//! chunk), accumulating the stat updates the shell then applies. The whole request lifecycle,
//! stats included, is therefore tested natively (see `tests` below).

use std::rc::Rc;

use crate::auth::{AUTH_ERROR_CODE, Refusal, TokenFacts};
use crate::decide::{
    BodyDecision, Deny, Forward, HeadDecision, Pending, Reply, RequestHead, Route, ToolRef,
    body_too_large, decide_body, decide_head, trailers_refused,
};
use crate::jsonrpc::Id;
use crate::lists::{self, ListKind};
use crate::outcome::{BodyKind, CallObserver};
use crate::policy::CompiledPolicy;
use crate::sse::SseSplitter;
use crate::stats::{StatKey, StatOp, ToolMetric};

/// Largest incomplete SSE event of a list response the filter holds (bytes).
pub const LIST_EVENT_CAP: usize = 8 * 1024 * 1024;

/// Smallest cap on the copy of a `tools/call` JSON response kept to read its outcome.
pub const MIN_OBSERVE_CAP: usize = 1024 * 1024;

/// What to do with the request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAction {
    /// Apply the route (`x-toolmesh-cluster`, `:path`, body + `content-length` + `mcp-name` if
    /// rewritten), clear the route cache, continue.
    Forward(Route),
    /// Send this local reply (`content-type: application/json`) and stop.
    Deny(Reply),
    /// Pause and buffer the body; call [`Flow::on_request_body`] at its end.
    ReadBody,
}

/// How the shell should handle the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBodyMode {
    /// Let it through; no need to call the flow.
    Pass,
    /// Let each chunk through, but call [`Flow::on_response_body`] with it (and at the end).
    Observe,
    /// Pause until the end; then call [`Flow::on_response_body`] with the whole body and
    /// replace it with the answer.
    Buffer,
    /// Call [`Flow::on_response_body`] with each chunk and replace the chunk with the answer.
    Stream,
}

/// What to do with the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeadersAction {
    /// Remove `content-length` (the body will change size).
    pub remove_content_length: bool,
    /// How to treat the body.
    pub body: ResponseBodyMode,
}

const PASS: ResponseHeadersAction = ResponseHeadersAction {
    remove_content_length: false,
    body: ResponseBodyMode::Pass,
};

#[derive(Debug)]
enum Phase {
    Start,
    ReadingBody(Pending),
    /// Refused for its token; reading the body only to answer with the request id.
    Refused(Refusal, Option<usize>),
    Denied,
    Forwarded,
}

#[derive(Debug)]
struct Call {
    tool: ToolRef,
    id: Option<Id>,
    observer: Option<CallObserver>,
    status_error: bool,
    done: bool,
}

#[derive(Debug)]
struct List {
    kind: ListKind,
    member: usize,
    vs: usize,
    id: Option<Id>,
    sse: Option<SseSplitter>,
    failed: bool,
}

/// One HTTP request through the filter.
#[derive(Debug)]
pub struct Flow {
    policy: Rc<CompiledPolicy>,
    phase: Phase,
    started_ms: u64,
    stats: Vec<StatOp>,
    call: Option<Call>,
    list: Option<List>,
    response_mode: ResponseBodyMode,
    refusal: Option<Refusal>,
}

impl Flow {
    /// A flow under `policy`.
    pub fn new(policy: Rc<CompiledPolicy>) -> Self {
        Self {
            policy,
            phase: Phase::Start,
            started_ms: 0,
            stats: Vec::new(),
            call: None,
            list: None,
            response_mode: ResponseBodyMode::Pass,
            refusal: None,
        }
    }

    /// The virtual server whose token check a request for `path` needs: `None` when the
    /// policy checks no tokens, the path is not an MCP endpoint, or the virtual server is
    /// anonymous. The shell then reads the [`TokenFacts`] and calls [`Flow::check_token`].
    pub fn token_check_for<'p>(&self, path: &'p str) -> Option<&'p str> {
        let auth = self.policy.auth.as_ref()?;
        let (vs, _) = crate::decide::parse_path(path)?;
        auth.requires_token(vs).then_some(vs)
    }

    /// Check the token for virtual server `vs` (before [`Flow::on_request_headers`], which
    /// then refuses the request if the check failed).
    pub fn check_token(&mut self, vs: &str, facts: &TokenFacts, now_s: u64) {
        self.refusal = self
            .policy
            .auth
            .as_ref()
            .and_then(|a| a.check(vs, facts, now_s));
    }

    /// The answer to a GET of the protected resource metadata (RFC 9728), if `path` is one.
    pub fn metadata_document(&self, method: &str, path: &str) -> Option<Vec<u8>> {
        if method != "GET" {
            return None;
        }
        let auth = self.policy.auth.as_ref()?;
        auth.metadata_document(path, |vs| self.policy.virtual_server(vs).is_some())
    }

    fn refuse(&mut self, r: Refusal, vs: Option<usize>, id: Option<&Id>) -> RequestAction {
        self.deny(Deny {
            reply: Reply {
                status: r.status,
                body: crate::jsonrpc::error_body(id, AUTH_ERROR_CODE, &r.message),
                www_authenticate: Some(r.www_authenticate),
            },
            reason: r.reason,
            vs,
            method: None,
            tool: None,
        })
    }

    /// After a failed token check: refuse now (no body), or read the body for its id.
    fn refuse_head(&mut self, r: Refusal, head: &RequestHead<'_>) -> RequestAction {
        let vs = crate::decide::parse_path(head.path)
            .and_then(|(name, _)| self.policy.virtual_server(name))
            .map(|v| v.index);
        if head.method == "POST" && !head.end_of_stream {
            self.phase = Phase::Refused(r, vs);
            return RequestAction::ReadBody;
        }
        self.refuse(r, vs, None)
    }

    fn take_refused(&mut self) -> Option<(Refusal, Option<usize>)> {
        match std::mem::replace(&mut self.phase, Phase::Denied) {
            Phase::Refused(r, vs) => Some((r, vs)),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// Stat updates accumulated since the last call.
    pub fn take_stats(&mut self) -> Vec<StatOp> {
        std::mem::take(&mut self.stats)
    }

    /// Stat updates accumulated since the last call, without giving up the buffer.
    pub fn drain_stats(&mut self) -> std::vec::Drain<'_, StatOp> {
        self.stats.drain(..)
    }

    /// The policy this request runs under (stat keys index it).
    pub fn policy(&self) -> &Rc<CompiledPolicy> {
        &self.policy
    }

    /// When the request started (the `now_ms` given to [`Flow::on_request_headers`]).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Is the flow waiting for the request body?
    pub fn wants_request_body(&self) -> bool {
        matches!(self.phase, Phase::ReadingBody(_) | Phase::Refused(..))
    }

    /// Does [`Flow::on_response_headers`] need the response headers? (Only forwarded calls
    /// and lists look at the response; the shell skips reading headers otherwise.)
    pub fn wants_response(&self) -> bool {
        matches!(self.phase, Phase::Forwarded) && (self.call.is_some() || self.list.is_some())
    }

    /// Is a forwarded call still waiting for the end of its response? ([`Flow::on_done`]
    /// needs the time only then.)
    pub fn call_pending(&self) -> bool {
        self.call.as_ref().is_some_and(|c| !c.done)
    }

    /// The request headers arrived.
    pub fn on_request_headers(&mut self, head: &RequestHead<'_>, now_ms: u64) -> RequestAction {
        self.started_ms = now_ms;
        if let Some(r) = self.refusal.take() {
            return self.refuse_head(r, head);
        }
        match decide_head(&self.policy, head) {
            HeadDecision::Forward(f) => self.forward(f, now_ms),
            HeadDecision::Deny(d) => self.deny(d),
            HeadDecision::ReadBody(p) => {
                self.phase = Phase::ReadingBody(p);
                RequestAction::ReadBody
            }
        }
    }

    /// Part of the body arrived (`buffered` bytes so far, not yet the end): a reply if the body
    /// is already over the cap.
    pub fn on_request_body_progress(&mut self, buffered: usize) -> Option<Reply> {
        if matches!(self.phase, Phase::Refused(..)) && buffered > self.policy.max_body_bytes {
            let (r, vs) = self.take_refused()?;
            return match self.refuse(r, vs, None) {
                RequestAction::Deny(reply) => Some(reply),
                _ => None,
            };
        }
        let Phase::ReadingBody(p) = &self.phase else {
            return None;
        };
        if buffered <= p.max_body {
            return None;
        }
        let d = body_too_large(p);
        match self.deny(d) {
            RequestAction::Deny(r) => Some(r),
            _ => None,
        }
    }

    /// Request trailers arrived while the body was being read: refused (a reply), since the
    /// body never reached its end and the request must not continue undecided.
    pub fn on_request_trailers(&mut self) -> Option<Reply> {
        if let Some((r, vs)) = self.take_refused() {
            return match self.refuse(r, vs, None) {
                RequestAction::Deny(reply) => Some(reply),
                _ => None,
            };
        }
        let Phase::ReadingBody(p) = &self.phase else {
            return None;
        };
        let d = trailers_refused(p);
        match self.deny(d) {
            RequestAction::Deny(r) => Some(r),
            _ => None,
        }
    }

    /// The whole body arrived.
    pub fn on_request_body(&mut self, body: &[u8], now_ms: u64) -> RequestAction {
        if let Some((r, vs)) = self.take_refused() {
            let id = crate::decide::request_id(body);
            return self.refuse(r, vs, id.as_ref());
        }
        let Phase::ReadingBody(p) = &self.phase else {
            return RequestAction::ReadBody;
        };
        match decide_body(&self.policy, p, body) {
            BodyDecision::Forward(f) => self.forward(f, now_ms),
            BodyDecision::Deny(d) => self.deny(d),
        }
    }

    fn forward(&mut self, f: Forward, now_ms: u64) -> RequestAction {
        self.phase = Phase::Forwarded;
        self.stats.push(StatOp::inc(vs_rq(f.vs, f.method)));
        if let Some(t) = &f.tool {
            self.stats.push(tool_op(t, ToolMetric::Calls, 1));
            self.stats
                .push(tool_op(t, ToolMetric::LastCallTs, now_ms / 1000));
            self.call = Some(Call {
                tool: *t,
                id: f.id.clone(),
                observer: None,
                status_error: false,
                done: false,
            });
        }
        if let Some((kind, member)) = f.list {
            self.list = Some(List {
                kind,
                member,
                vs: f.vs,
                id: f.id.clone(),
                sse: None,
                failed: false,
            });
        }
        RequestAction::Forward(f.route)
    }

    fn deny(&mut self, d: Deny) -> RequestAction {
        self.phase = Phase::Denied;
        match d.vs {
            Some(vs) => {
                if let Some(m) = d.method {
                    self.stats.push(StatOp::inc(vs_rq(vs, m)));
                }
                self.stats.push(StatOp::inc(StatKey::VsDenied {
                    vs: index(vs),
                    reason: d.reason,
                }));
            }
            None => self
                .stats
                .push(StatOp::inc(StatKey::GlobalDenied(d.reason))),
        }
        if let Some(t) = &d.tool {
            self.stats.push(tool_op(t, ToolMetric::Denied, 1));
        }
        RequestAction::Deny(d.reply)
    }

    /// The response headers arrived.
    pub fn on_response_headers(
        &mut self,
        status: u16,
        content_type: Option<&str>,
        end_of_stream: bool,
        now_ms: u64,
    ) -> ResponseHeadersAction {
        if !matches!(self.phase, Phase::Forwarded) {
            return PASS;
        }
        let kind = BodyKind::of(content_type);
        let mut action = PASS;
        if let Some(call) = &mut self.call {
            call.status_error = status >= 400;
            if !call.status_error {
                let cap = self.policy.max_body_bytes.max(MIN_OBSERVE_CAP);
                call.observer = Some(CallObserver::new(call.id.clone(), kind, cap));
            }
            action.body = ResponseBodyMode::Observe;
        } else if let Some(list) = &mut self.list
            && status == 200
        {
            match kind {
                BodyKind::Json => {
                    action = ResponseHeadersAction {
                        remove_content_length: true,
                        body: ResponseBodyMode::Buffer,
                    };
                }
                BodyKind::Sse => {
                    list.sse = Some(SseSplitter::new(LIST_EVENT_CAP));
                    action = ResponseHeadersAction {
                        remove_content_length: true,
                        body: ResponseBodyMode::Stream,
                    };
                }
                BodyKind::Other => {}
            }
        }
        self.response_mode = action.body;
        if end_of_stream {
            self.response_end(now_ms);
            action.body = ResponseBodyMode::Pass;
        }
        action
    }

    /// Does [`Flow::on_response_body`] need the chunk's bytes (or only the end-of-stream flag)?
    pub fn wants_response_bytes(&self) -> bool {
        match self.response_mode {
            ResponseBodyMode::Pass => false,
            ResponseBodyMode::Observe => self
                .call
                .as_ref()
                .and_then(|c| c.observer.as_ref())
                .is_some_and(CallObserver::wants_body),
            ResponseBodyMode::Buffer | ResponseBodyMode::Stream => true,
        }
    }

    /// A response body chunk (or, in `Buffer` mode, the whole body at the end). Returns the
    /// replacement bytes in `Buffer` and `Stream` modes.
    pub fn on_response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let out = match self.response_mode {
            ResponseBodyMode::Pass => None,
            ResponseBodyMode::Observe => {
                if let Some(o) = self.call.as_mut().and_then(|c| c.observer.as_mut()) {
                    if end_of_stream {
                        o.push_last(chunk);
                    } else {
                        o.push(chunk);
                    }
                }
                None
            }
            ResponseBodyMode::Buffer => {
                if !end_of_stream {
                    return None;
                }
                let policy = Rc::clone(&self.policy);
                self.list.as_ref().and_then(|l| {
                    let m = policy.virtual_server_at(l.vs)?.member(l.member)?;
                    Some(lists::filter_json_body(chunk, l.kind, m, l.id.as_ref()))
                })
            }
            ResponseBodyMode::Stream => Some(self.stream_list_chunk(chunk, end_of_stream)),
        };
        if end_of_stream {
            self.response_end(now_ms);
        }
        out
    }

    fn stream_list_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let policy = Rc::clone(&self.policy);
        let Some(l) = self.list.as_mut() else {
            return chunk.to_vec();
        };
        let Some(member) = policy
            .virtual_server_at(l.vs)
            .and_then(|v| v.member(l.member))
        else {
            return chunk.to_vec();
        };
        if l.failed {
            return Vec::new();
        }
        let Some(sse) = l.sse.as_mut() else {
            return chunk.to_vec();
        };
        let mut events = sse.push(chunk);
        if sse.overflowed() {
            l.failed = true;
            let err = crate::jsonrpc::error_body(
                l.id.as_ref(),
                crate::decide::codes::INTERNAL_ERROR,
                lists::FAILED_MESSAGE,
            );
            let mut out = b"event: message\ndata: ".to_vec();
            out.extend_from_slice(&err);
            out.extend_from_slice(b"\n\n");
            return out;
        }
        if end_of_stream {
            let tail = sse.finish();
            if !tail.is_empty() {
                events.push(tail);
            }
        }
        let mut out = Vec::with_capacity(chunk.len());
        for ev in events {
            out.extend(lists::filter_sse_event(&ev, l.kind, member, l.id.as_ref()));
        }
        out
    }

    fn response_end(&mut self, now_ms: u64) {
        self.finish_call(true, now_ms);
    }

    fn finish_call(&mut self, complete: bool, now_ms: u64) {
        let started = self.started_ms;
        let Some(call) = self.call.as_mut() else {
            return;
        };
        if call.done {
            return;
        }
        call.done = true;
        // A response already seen for the request id decides the outcome, even if the stream
        // then ends early (clients such as the Python SDK stop reading once they have it).
        let seen = call.observer.as_ref().and_then(CallObserver::verdict);
        let body_error = call.observer.as_mut().is_some_and(CallObserver::finish);
        let error = call.status_error || body_error || (seen.is_none() && !complete);
        let tool = call.tool;
        if error {
            self.stats.push(tool_op(&tool, ToolMetric::Errors, 1));
        }
        self.stats.push(tool_op(
            &tool,
            ToolMetric::LatencyMs,
            now_ms.saturating_sub(started),
        ));
    }

    /// The stream is over (proxy-wasm `on_log`). A forwarded call whose response never
    /// completed (reset, timeout, client gone) counts as an error.
    pub fn on_done(&mut self, now_ms: u64) {
        self.finish_call(false, now_ms);
    }
}

fn tool_op(t: &ToolRef, metric: ToolMetric, value: u64) -> StatOp {
    StatOp {
        key: StatKey::Tool {
            tool: t.stat,
            metric,
        },
        value,
    }
}

fn index(vs: usize) -> u32 {
    u32::try_from(vs).unwrap_or(u32::MAX)
}

fn vs_rq(vs: usize, method: crate::stats::MethodStat) -> StatKey {
    StatKey::VsRq {
        vs: index(vs),
        method,
    }
}
