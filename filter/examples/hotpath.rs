//! Profiling harness for the filter's hot path: one allowed `tools/call` (the request
//! `cargo xtask bench` sends) and its JSON response, through the pure core, N times.
//!
//! Why: wall-clock numbers on the shared 2-core machines are noisy; instruction counts are not.
//! Run it under callgrind to see what the core costs per request:
//!
//! ```sh
//! CARGO_PROFILE_WASM_RELEASE_STRIP=false CARGO_PROFILE_WASM_RELEASE_DEBUG=1 \
//!   cargo build -p toolmesh-filter --example hotpath --profile wasm-release
//! valgrind --tool=callgrind target/wasm-release/examples/hotpath 10000
//! ```
//!
//! (Instructions per request = total / N, minus the setup measured with N = 0.) A second
//! argument `stateless` sends the same call at protocol 2026-07-28 instead (`_meta` envelope,
//! `MCP-Protocol-Version` and `Mcp-Method`/`Mcp-Name` headers, no session).

use std::hint::black_box;
use std::rc::Rc;

use toolmesh_filter::decide::RequestHeaders;
use toolmesh_filter::flow::{Flow, RequestAction};
use toolmesh_filter::policy::CompiledPolicy;
use toolmesh_filter::stats::{MetricKind, StatOp};

const POLICY: &str = r#"{"schema_version": 3,"catalog_version":"bench","sessions":{"keys":[{"id":"bench","secret":"dG9vbG1lc2gtdGVzdC1zZXNzaW9uLWtleS0zMi1ieXRlcyEhIQ"}]},"virtual_servers":[{"name":"bench","members":[{"mcp_server":"upstream","cluster":"mcp_upstream","path":"/mcp","authority":"127.0.0.1","modern_versions":["2026-07-28"],"tools":[{"name":"add","upstream_name":"add"},{"name":"echo","upstream_name":"echo"}]}]}]}"#;
const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}}"#;
const STATELESS_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1"}}}}"#;
/// The headers a protocol 2026-07-28 client adds.
const STATELESS_HEADERS: [(&str, &str); 3] = [
    ("mcp-protocol-version", "2026-07-28"),
    ("mcp-method", "tools/call"),
    ("mcp-name", "add"),
];
const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"5"}],"structuredContent":{"sum":5},"isError":false}}"#;
/// The request headers Envoy hands the filter for the benchmark's request.
const HEADERS: [(&str, &str); 9] = [
    (":authority", "127.0.0.1:10000"),
    (":path", "/servers/bench/mcp"),
    (":method", "POST"),
    (":scheme", "http"),
    ("content-length", "94"),
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "6a3e4a7e-1d4b-4c55-9f0e-3c1f5b0c2d11"),
];

/// What the shell does with a stat update, minus the hostcall: find the slot's cached id (the
/// first time: build the name and "define" it), skip an unchanged gauge.
fn record(policy: &CompiledPolicy, op: &StatOp, defined: &mut u32) -> u64 {
    let Some(slot) = policy.stat_slot(op.key) else {
        return 0;
    };
    let (id, last) = match policy.metric_ids.get(slot) {
        Some(v) => v,
        None => {
            black_box(policy.stat_name(op.key));
            *defined += 1;
            policy.metric_ids.set(slot, *defined, u64::MAX);
            (*defined, u64::MAX)
        }
    };
    if op.kind() == MetricKind::Gauge {
        if op.value == last {
            return 0;
        }
        policy.metric_ids.set(slot, id, op.value);
    }
    black_box(u64::from(id) + op.value)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let stateless = std::env::args().nth(2).as_deref() == Some("stateless");
    let (body, extra): (&str, &[(&str, &str)]) = if stateless {
        (STATELESS_BODY, &STATELESS_HEADERS)
    } else {
        (BODY, &[])
    };
    let policy = match CompiledPolicy::from_json(POLICY.as_bytes()) {
        Ok(p) => Rc::new(p),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let mut defined = 0u32;
    let mut forwarded = 0u64;
    for i in 0..n {
        // The shell's request-header phase: the list as the SDK hands it over, then the scan.
        let pairs: Vec<(String, Vec<u8>)> = HEADERS
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        let headers = RequestHeaders::scan(black_box(&pairs));
        let mut flow = Flow::new(Rc::clone(&policy));
        let now = 1_700_000_000_000 + i;
        let a = flow.on_request_headers(&headers.head(false), now);
        if a == RequestAction::ReadBody
            && let RequestAction::Forward(route) =
                flow.on_request_body(black_box(body.as_bytes()), now)
        {
            forwarded += u64::from(route.body.is_none());
        }
        let p = Rc::clone(flow.policy());
        for op in flow.drain_stats() {
            record(&p, &op, &mut defined);
        }
        if flow.wants_response() {
            flow.on_response_headers(200, Some("application/json"), false, 0);
        }
        if flow.wants_response_bytes() {
            let chunk = RESULT.as_bytes().to_vec();
            flow.on_response_body(black_box(&chunk), true, now + 2);
        }
        if flow.call_pending() {
            flow.on_done(now + 3);
        }
        for op in flow.drain_stats() {
            record(&p, &op, &mut defined);
        }
    }
    println!("{forwarded} of {n} forwarded unchanged; {defined} metrics");
}
