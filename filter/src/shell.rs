//! The proxy-wasm shell: moves bytes between Envoy and [`crate::flow::Flow`].
//!
//! Why so thin: every decision is in the pure core and tested natively; this module only reads
//! headers and bodies through hostcalls, applies the flow's actions and records its stats.
//!
//! Panic discipline: the `HttpContext` helper methods unwrap hostcall errors, so they are never
//! used. Note that in proxy-wasm 0.2.5 several raw `hostcalls::*` functions also panic on a host
//! status they do not expect (`set_map_value` on `BadArgument`, which Envoy returns for a request
//! header write after the headers were released). The shell therefore mutates request headers
//! only while they are paused (in `on_http_request_headers`, or in `on_http_request_body` after
//! pausing the headers), and response headers only in `on_http_response_headers`, where Envoy
//! answers `Ok`. Run the plugin with `failure_policy: FAIL_RELOAD` all the same. Header lists
//! are read with `get_map_bytes` (`get_map` panics on a header value that is not UTF-8).
//!
//! Cost discipline (measured with callgrind on Envoy 1.40, see `examples/hotpath.rs`): every
//! hostcall that returns data (`get_map*`, `get_buffer`) makes Envoy call back into the VM to
//! allocate, which costs several thousand instructions; plain hostcalls cost one or two
//! thousand. So the shell reads each header list at most once, reads response headers only
//! when the flow observes the response, asks for the time only at the start and at the end of
//! a call, caches metric ids by stat slot, and sets the `last_call_ts` gauge only when its
//! value (in seconds) changes. It does not call Envoy's `clear_route_cache` foreign function:
//! Envoy already clears the route cache when a filter writes request headers (research notes,
//! section 1.4; re-verified: routing on `x-toolmesh-cluster` works without the call, which
//! cost about 7,000 instructions per request).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use toolmesh_proto::PolicySnapshot;

use crate::auth::TokenFacts;
use crate::decide::{Reply, RequestHeaders, SessionHeader};
use crate::flow::{Callout, CalloutAction, CalloutResponse, Flow, RequestAction, ResponseBodyMode};
use crate::policy::CompiledPolicy;
use crate::stats::{MetricKind, StatOp};

/// Header carrying the chosen member's cluster; Envoy's routes match it exactly.
pub const CLUSTER_HEADER: &str = "x-toolmesh-cluster";

/// "No value set yet" for a slot's last gauge value.
const UNSET: u64 = u64::MAX;

thread_local! {
    /// The last policy a root context in this VM accepted (survives root-context replacement
    /// on ECDS updates; see the research notes, section 2.1).
    static POLICY: RefCell<Option<Rc<CompiledPolicy>>> = const { RefCell::new(None) };
    /// Metric ids by name (ids are per VM; a new policy finds its metrics here instead of
    /// defining them again).
    static METRICS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { policy: None }) });
}}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The host id of `op`'s metric (defined on first use) and the last value the shell set.
fn metric_id(policy: &CompiledPolicy, slot: u32, op: &StatOp) -> Option<(u32, u64)> {
    if let Some(known) = policy.metric_ids.get(slot) {
        return Some(known);
    }
    let name = policy.stat_name(op.key)?;
    let id = METRICS.with(|cell| {
        let mut ids = cell.try_borrow_mut().ok()?;
        if let Some(id) = ids.get(&name) {
            return Some(*id);
        }
        let kind = match op.kind() {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        match hostcalls::define_metric(kind, &name) {
            Ok(id) => {
                ids.insert(name, id);
                Some(id)
            }
            Err(e) => {
                warn!("toolmesh: cannot define metric {name}: {e:?}");
                None
            }
        }
    })?;
    policy.metric_ids.set(slot, id, UNSET);
    Some((id, UNSET))
}

fn record(policy: &CompiledPolicy, op: &StatOp) {
    let Some(slot) = policy.stat_slot(op.key) else {
        return;
    };
    let Some((id, last)) = metric_id(policy, slot, op) else {
        return;
    };
    let result = match op.kind() {
        MetricKind::Counter => {
            hostcalls::increment_metric(id, i64::try_from(op.value).unwrap_or(i64::MAX))
        }
        MetricKind::Histogram => hostcalls::record_metric(id, op.value),
        MetricKind::Gauge if op.value == last => Ok(()),
        MetricKind::Gauge => {
            let r = hostcalls::record_metric(id, op.value);
            if r.is_ok() {
                policy.metric_ids.set(slot, id, op.value);
            }
            r
        }
    };
    if let Err(e) = result {
        debug!("toolmesh: metric {slot} not updated: {e:?}");
    }
}

/// Apply the flow's pending stat updates, log its notes and set its access-log properties.
fn apply_stats(flow: &mut Flow) {
    let policy = Rc::clone(flow.policy());
    for op in flow.drain_stats() {
        record(&policy, &op);
    }
    for note in flow.take_notes() {
        warn!("toolmesh: {note}");
    }
    if let Some(value) = flow.take_log_property() {
        // Envoy keeps it as filter state `wasm.toolmesh` for the access log. (The hostcall
        // panics only on a status Envoy returns without stream info, i.e. never in an HTTP
        // context.)
        if let Err(e) =
            hostcalls::set_property(vec![crate::flow::LOG_PROPERTY], Some(value.as_bytes()))
        {
            debug!("toolmesh: access-log property not set: {e:?}");
        }
    }
}

struct Root {
    policy: Option<Rc<CompiledPolicy>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            Ok(None) => {
                error!(
                    "toolmesh: the plugin configuration is empty; expected a policy snapshot (JSON)"
                );
                return false;
            }
            Err(e) => {
                error!("toolmesh: cannot read the plugin configuration: {e:?}");
                return false;
            }
        };
        match CompiledPolicy::from_json(&bytes) {
            Ok(policy) => {
                info!(
                    "toolmesh: policy {} loaded ({} virtual servers)",
                    policy.catalog_version,
                    policy.virtual_servers().len()
                );
                let policy = Rc::new(policy);
                POLICY.with(|p| *p.borrow_mut() = Some(Rc::clone(&policy)));
                self.policy = Some(policy);
                true
            }
            Err(e) => {
                error!("toolmesh: invalid policy, configuration rejected: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let policy = self
            .policy
            .clone()
            .or_else(|| POLICY.with(|p| p.borrow().clone()))
            // Never return None (the SDK panics): without a policy every request is refused.
            .unwrap_or_else(|| Rc::new(CompiledPolicy::compile(&PolicySnapshot::empty("none"))));
        Some(Box::new(Http {
            flow: Flow::new(policy),
            mode: ResponseBodyMode::Pass,
            request_body_size: 0,
            replied: false,
            callouts: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    flow: Flow,
    mode: ResponseBodyMode,
    /// Size of the buffered request body (to replace it after callouts).
    request_body_size: usize,
    /// A local reply was sent: ignore the rest of the stream.
    replied: bool,
    /// Callouts in flight: (host token, flow key).
    callouts: Vec<(u32, u32)>,
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(pos) = self.callouts.iter().position(|(t, _)| *t == token_id) else {
            return;
        };
        let (_, key) = self.callouts.swap_remove(pos);
        if self.replied {
            return;
        }
        let pairs = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let header = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        // No `:status`: the call failed (timeout, reset, unknown cluster).
        let status = header(":status").and_then(|s| s.parse::<u16>().ok());
        let body = if status.is_some() && body_size > 0 {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let response = status.map(|status| CalloutResponse {
            status,
            session_id: header("mcp-session-id"),
            content_type: header("content-type"),
            body: &body,
        });
        let action = self.flow.on_callout_response(key, response, now_ms());
        self.after_callout(action);
    }
}

/// Send one of the flow's calls; the host's token for its answer.
fn send_callout(call: &Callout) -> Result<u32, proxy_wasm::types::Status> {
    let headers: Vec<(&str, &str)> = call.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let timeout = std::time::Duration::from_millis(u64::from(call.timeout_ms));
    hostcalls::dispatch_http_call(
        &call.cluster,
        headers,
        call.body.as_deref(),
        Vec::new(),
        timeout,
    )
}

/// A dynamic property as a string (`None` when absent or not UTF-8).
fn property(path: &[&str]) -> Option<String> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok(),
        _ => None,
    }
}

/// What Envoy's `jwt_authn` left in dynamic metadata (see [`crate::auth`]; verified in Envoy
/// 1.40: a string claim comes back as its bytes), the client's address when the token is
/// restricted to networks, and the `Authorization` header only when verification failed.
fn token_facts(pairs: &[(String, Vec<u8>)]) -> TokenFacts {
    use toolmesh_proto::{
        CLAIM_SOURCE_CIDRS, CLAIM_VIRTUAL_SERVERS, JWT_FAILURE_KEY, JWT_METADATA_NAMESPACE,
        JWT_PAYLOAD_KEY,
    };
    let claim = |name: &str| {
        property(&[
            "metadata",
            "filter_metadata",
            JWT_METADATA_NAMESPACE,
            JWT_PAYLOAD_KEY,
            name,
        ])
    };
    let mut facts = TokenFacts {
        jti: claim("jti"),
        ..TokenFacts::default()
    };
    if facts.jti.is_some() {
        facts.virtual_servers = claim(CLAIM_VIRTUAL_SERVERS);
        facts.source_cidrs = claim(CLAIM_SOURCE_CIDRS);
        if facts.source_cidrs.is_some() {
            facts.source = property(&["source", "address"]);
        }
    } else {
        facts.failure = property(&[
            "metadata",
            "filter_metadata",
            JWT_METADATA_NAMESPACE,
            JWT_FAILURE_KEY,
            "message",
        ]);
        facts.authorization = pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::to_owned);
    }
    facts
}

impl Http {
    fn reply(&mut self, status: u16, body: &[u8]) -> Action {
        self.send(&Reply::new(status, body.to_vec()))
    }

    /// Send a local reply (JSON unless the body is empty) and stop the stream.
    fn send(&mut self, r: &Reply) -> Action {
        self.replied = true;
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(2 + r.headers.len());
        if !r.body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        if let Some(w) = &r.www_authenticate {
            headers.push(("www-authenticate", w));
        }
        for (name, value) in &r.headers {
            headers.push((name, value));
        }
        let body = (!r.body.is_empty()).then_some(r.body.as_slice());
        if let Err(e) = hostcalls::send_http_response(u32::from(r.status), headers, body) {
            error!("toolmesh: cannot send local reply: {e:?}");
        }
        Action::Pause
    }

    /// Dispatch the flow's callouts; a call Envoy refuses at once is answered as failed.
    fn dispatch(&mut self, calls: Vec<Callout>) {
        let mut queue = calls;
        while let Some(call) = queue.pop() {
            match send_callout(&call) {
                Ok(token) => self.callouts.push((token, call.key)),
                Err(e) => {
                    warn!("toolmesh: {} could not be sent: {e:?}", call.label);
                    match self.flow.on_callout_response(call.key, None, now_ms()) {
                        CalloutAction::Wait => {}
                        CalloutAction::Dispatch(more) => queue.extend(more),
                        other => {
                            self.after_callout(other);
                            return;
                        }
                    }
                }
            }
        }
        apply_stats(&mut self.flow);
    }

    fn after_callout(&mut self, action: CalloutAction) {
        match action {
            CalloutAction::Wait => apply_stats(&mut self.flow),
            CalloutAction::Dispatch(calls) => self.dispatch(calls),
            CalloutAction::Reply(r) => {
                apply_stats(&mut self.flow);
                self.send(&r);
            }
            CalloutAction::Forward(route) => {
                if self.apply(RequestAction::Forward(route), self.request_body_size)
                    == Action::Continue
                {
                    self.resume_http_request();
                }
            }
        }
    }

    /// At the end of a response whose member session was opened for its request alone (or of
    /// its stream, if the response never ended): send that session's DELETE. Nothing waits for
    /// it: the host makes every call on behalf of the plugin's root context
    /// (`proxy_http_call` uses `root_context()`), so it outlives this stream, and its answer
    /// is nobody's business.
    fn end_member_session(&mut self) {
        if let Some(call) = self.flow.take_session_to_end()
            && let Err(e) = send_callout(&call)
        {
            warn!("toolmesh: {} could not be sent: {e:?}", call.label);
        }
    }

    fn internal_error(&mut self, what: &str) -> Action {
        error!("toolmesh: {what}");
        let body = crate::jsonrpc::error_body(
            None,
            crate::decide::codes::INTERNAL_ERROR,
            "toolmesh gateway internal error",
        );
        self.reply(500, &body)
    }

    /// Apply the flow's request action. `body_size` is the buffered body's size (0 in the
    /// header phase).
    fn apply(&mut self, action: RequestAction, body_size: usize) -> Action {
        apply_stats(&mut self.flow);
        match action {
            RequestAction::ReadBody => Action::Pause,
            RequestAction::Deny(r) => self.send(&r),
            RequestAction::Callouts(calls) => {
                self.dispatch(calls);
                Action::Pause
            }
            RequestAction::Forward(route) => {
                let headers = MapType::HttpRequestHeaders;
                if let Some(body) = &route.body {
                    if let Err(e) =
                        hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, body)
                    {
                        return self.internal_error(&format!("cannot rewrite the body: {e:?}"));
                    }
                    let len = body.len().to_string();
                    if let Err(e) = hostcalls::set_map_value(headers, "content-length", Some(&len))
                    {
                        return self.internal_error(&format!("cannot set content-length: {e:?}"));
                    }
                }
                if let Some(name) = &route.mcp_name
                    && let Err(e) = hostcalls::set_map_value(headers, "mcp-name", Some(name))
                {
                    return self.internal_error(&format!("cannot set mcp-name: {e:?}"));
                }
                let session = match &route.session {
                    SessionHeader::Keep => None,
                    SessionHeader::Set(sid) => Some(Some(sid.as_str())),
                    SessionHeader::Remove => Some(None),
                };
                if let Some(value) = session
                    && let Err(e) = hostcalls::set_map_value(headers, "mcp-session-id", value)
                {
                    return self.internal_error(&format!("cannot set mcp-session-id: {e:?}"));
                }
                if let Some(v) = &route.protocol_version
                    && let Err(e) =
                        hostcalls::set_map_value(headers, "mcp-protocol-version", Some(v))
                {
                    return self.internal_error(&format!("cannot set mcp-protocol-version: {e:?}"));
                }
                if let Err(e) = hostcalls::set_map_value(headers, ":path", Some(&route.path)) {
                    return self.internal_error(&format!("cannot set :path: {e:?}"));
                }
                // Envoy clears the route cache on this write, so the route matching
                // `x-toolmesh-cluster` is chosen (see the module docs).
                if let Err(e) =
                    hostcalls::set_map_value(headers, CLUSTER_HEADER, Some(&route.cluster))
                {
                    return self.internal_error(&format!("cannot set {CLUSTER_HEADER}: {e:?}"));
                }
                Action::Continue
            }
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let pairs = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(h) => h,
            Err(e) => return self.internal_error(&format!("cannot read request headers: {e:?}")),
        };
        let headers = RequestHeaders::scan(&pairs);
        // Internal headers are the gateway's own: never accept them from a client.
        for name in &headers.internal {
            if let Err(e) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None) {
                return self.internal_error(&format!("cannot remove {name}: {e:?}"));
            }
        }
        let head = headers.head(end_of_stream);
        if head.path.starts_with(crate::auth::METADATA_PREFIX)
            && let Some(doc) = self.flow.metadata_document(head.method, head.path)
        {
            return self.reply(200, &doc);
        }
        let now = now_ms();
        if let Some(vs) = self.flow.token_check_for(head.path) {
            let facts = token_facts(&pairs);
            self.flow.check_token(vs, &facts, now / 1000);
        }
        let action = self.flow.on_request_headers(&head, now);
        self.apply(action, 0)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Pause;
        }
        if let Some(reply) = self.flow.on_request_body_progress(body_size) {
            apply_stats(&mut self.flow);
            return self.send(&reply);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if !self.flow.wants_request_body() {
            // Not waiting for a body (already forwarded or refused): let it pass.
            return Action::Continue;
        }
        let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => return self.internal_error(&format!("cannot read the request body: {e:?}")),
        };
        // A call counts as made when its request started (`last_call_ts`, in seconds).
        let started = self.flow.started_ms();
        let action = self.flow.on_request_body(&body, started);
        if action == RequestAction::ReadBody {
            return Action::Continue;
        }
        self.request_body_size = body_size;
        self.apply(action, body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.replied {
            return Action::Pause;
        }
        match self.flow.on_request_trailers() {
            Some(reply) => {
                apply_stats(&mut self.flow);
                self.send(&reply)
            }
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        // The upstream's own session id must not replace the sealed one the client holds
        // (clients adopt an `mcp-session-id` from any response).
        if self.flow.strips_response_session()
            && let Err(e) =
                hostcalls::set_map_value(MapType::HttpResponseHeaders, "mcp-session-id", None)
        {
            warn!("toolmesh: cannot remove the upstream's mcp-session-id: {e:?}");
        }
        if !self.flow.wants_response() {
            return Action::Continue;
        }
        let pairs = hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default();
        let mut status = 0;
        let mut content_type = None;
        for (name, value) in &pairs {
            if name == ":status" {
                status = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
                    .unwrap_or(0);
            } else if content_type.is_none() && name.eq_ignore_ascii_case("content-type") {
                // Not UTF-8: not a media type the filter knows (the body is only observed).
                content_type = Some(std::str::from_utf8(value).unwrap_or_default());
            }
        }
        let now = if end_of_stream { now_ms() } else { 0 };
        let action = self
            .flow
            .on_response_headers(status, content_type, end_of_stream, now);
        self.mode = action.body;
        apply_stats(&mut self.flow);
        if self.mode == ResponseBodyMode::Rewrite
            && let Err(e) =
                hostcalls::set_map_value(MapType::HttpResponseHeaders, "content-length", None)
        {
            warn!("toolmesh: cannot remove the content-length of a rewritten response: {e:?}");
        }
        if end_of_stream {
            self.end_member_session();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        if self.mode == ResponseBodyMode::Pass {
            if end_of_stream {
                self.end_member_session();
            }
            return Action::Continue;
        }
        let now = if end_of_stream { now_ms() } else { 0 };
        let chunk = if self.flow.wants_response_bytes() {
            hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if self.mode == ResponseBodyMode::Rewrite
            && let Some(new) = self.flow.rewrite_response_body(&chunk, end_of_stream)
            && let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &new)
        {
            warn!("toolmesh: cannot rewrite the response body: {e:?}");
        }
        self.flow.on_response_body(&chunk, end_of_stream, now);
        apply_stats(&mut self.flow);
        if end_of_stream {
            self.end_member_session();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.flow.call_pending() {
            self.flow.on_done(now_ms());
            apply_stats(&mut self.flow);
        }
        // A member session opened for this request whose response never ended (the client or
        // the upstream went away) is ended all the same.
        self.end_member_session();
    }
}
