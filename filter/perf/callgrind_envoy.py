#!/usr/bin/env python3
"""Envoy instructions per request, under callgrind: bare Envoy vs Envoy + a toolmesh wasm.

Why: CPU time on the shared 2-core machines varies by +-20% between runs; the number of
instructions Envoy executes per request does not (repeat runs agree within ~1%). This runs
the benchmark's gateway (one worker) under `valgrind --tool=callgrind`, sends 200 warm-up
requests, counts the next N (the benchmark's allowed `tools/call`, keep-alive, one at a time)
and prints instructions per request, split into Envoy/host code and wasm JIT code.

usage: filter/perf/callgrind_envoy.py [N] [path/to/toolmesh_filter.wasm ...]
(default: target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm; needs valgrind.)
"""
import glob, http.client, os, re, socket, subprocess, sys, time, urllib.request
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVOY = os.environ.get("ENVOY", os.path.join(ROOT, ".tools/venv/lib/python3.11/site-packages/envoy/_bin/envoy"))
BODY = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}}'
RESULT = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"5"}],"structuredContent":{"sum":5},"isError":false}}'
POLICY = '{"schema_version":2,"catalog_version":"bench","sessions":{"keys":[{"id":"bench","secret":"dG9vbG1lc2gtdGVzdC1zZXNzaW9uLWtleS0zMi1ieXRlcyEhIQ"}]},"virtual_servers":[{"name":"bench","members":[{"mcp_server":"upstream","cluster":"mcp_upstream","path":"/mcp","authority":"127.0.0.1","tools":[{"name":"add","upstream_name":"add"},{"name":"echo","upstream_name":"echo"}]}]}]}'
D = os.environ.get("OUT", "/tmp/toolmesh-callgrind"); os.makedirs(D, exist_ok=True)
def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def esc(s): return s.replace('\\', '\\\\').replace('"', '\\"')
def admin(p): return f"admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}\n"
procs = []
def start(name, yaml, adm):
    cfg = f"{D}/{name}.yaml"; open(cfg, "w").write(yaml)
    p = subprocess.Popen([ENVOY, "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"],
                         stdout=subprocess.DEVNULL, stderr=open(f"{D}/{name}.log", "w"))
    procs.append(p)
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{adm}/ready", timeout=1).status == 200: return p
        except Exception: pass
        if p.poll() is not None: sys.exit(f"{name} exited; see {D}/{name}.log")
        time.sleep(0.1)
    sys.exit(f"{name} not ready")
def upstream_yaml(adm, p):
    return admin(adm) + f'''static_resources:
  listeners:
  - name: up
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: up
          route_config:
            response_headers_to_add:
            - header: {{key: content-type, value: application/json}}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "{esc(RESULT)}"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
'''
def gw_yaml(adm, p, up, wasm, hdr):
    filt = ""
    if wasm != "bare":
        filt = f'''          - name: toolmesh
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: toolmesh
                root_id: toolmesh
                failure_policy: FAIL_RELOAD
                allow_on_headers_stop_iteration: true
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "{esc(POLICY)}"
                vm_config:
                  vm_id: toolmesh
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{wasm}"}}}}
'''
    m = '{prefix: "/", headers: [{name: x-toolmesh-cluster, string_match: {exact: mcp_upstream}}]}' if hdr else '{prefix: "/"}'
    return admin(adm) + f'''static_resources:
  listeners:
  - name: gw
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gw
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {m}
                route: {{cluster: mcp_upstream, timeout: 0s}}
          http_filters:
{filt}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: mcp_upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: mcp_upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}
'''

def by_object(out, n):
    """Instructions per request: (JIT = wasm and V8 generated code, everything else)."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", out], capture_output=True, text=True).stdout
    jit = other = 0
    for line in r.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(.*?\)\s+(.*)\[(.*)\]\s*$", line)
        if not m:
            continue
        v = int(m.group(1).replace(",", ""))
        if m.group(3) == "???" and "0x00000000" not in m.group(2):
            jit += v
        else:
            other += v
    return jit / n, other / n

def measure(name, wasm, n, up):
    p, adm = port(), port()
    cfg = f"{D}/{name}.yaml"
    open(cfg, "w").write(gw_yaml(adm, p, up, wasm, wasm != "bare"))
    out = f"{D}/{name}.callgrind"
    for f in glob.glob(out + "*"):
        os.remove(f)
    vg = subprocess.Popen(["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no",
        f"--callgrind-out-file={out}", ENVOY, "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
        "--log-level", "warn", "--base-id", str(port())],
        stdout=subprocess.DEVNULL, stderr=open(f"{D}/{name}.log", "w"))
    procs.append(vg)
    t0 = time.time()
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{adm}/ready", timeout=5).status == 200:
                break
        except Exception:
            pass
        if vg.poll() is not None or time.time() - t0 > 600:
            sys.exit(f"{name}: Envoy under valgrind did not start; see {D}/{name}.log")
        time.sleep(1)
    c = http.client.HTTPConnection("127.0.0.1", p, timeout=120)
    def one():
        c.request("POST", "/servers/bench/mcp", body=BODY.encode(),
                  headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200 or b'"sum":5' not in data:
            sys.exit(f"{name}: unexpected answer {r.status} {data!r}")
    for _ in range(200):
        one()
    subprocess.run(["callgrind_control", "-i", "on", str(vg.pid)], capture_output=True)
    for _ in range(n):
        one()
    subprocess.run(["callgrind_control", "-i", "off", str(vg.pid)], capture_output=True)
    subprocess.run(["callgrind_control", "-d", str(vg.pid)], capture_output=True)
    time.sleep(2)
    vg.kill(); vg.wait()
    dumps = [f for f in glob.glob(out + "*") if os.path.getsize(f) > 0]
    jit, other = by_object(max(dumps, key=os.path.getmtime), n)
    return jit, other

def main():
    args = sys.argv[1:]
    n = int(args.pop(0)) if args and args[0].isdigit() else 500
    wasms = args or [os.path.join(ROOT, "target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm")]
    up, upa = port(), port()
    start("upstream", upstream_yaml(upa, up), upa)
    base = None
    for i, w in enumerate(["bare"] + wasms):
        name = "bare" if w == "bare" else f"filter{i}"
        jit, other = measure(name, w, n, up)
        total = jit + other
        if base is None:
            base = total
        print(f"{w}: {total:,.0f} instructions/request ({total - base:+,.0f} vs bare; wasm JIT {jit:,.0f})", flush=True)

try:
    main()
finally:
    for p in procs:
        p.kill()
        p.wait()
