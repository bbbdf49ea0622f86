// A small CLI around the official TypeScript MCP SDK, used by the end-to-end tests.
//
//   node ts_client.mjs <url> '<json list of operations>' [--header k=v ...]
//
// Operations: {"op":"list_tools"} (every page), {"op":"call_tool","name":..,"arguments":{..}},
// {"op":"list_prompts"}, {"op":"get_prompt","name":..,"arguments":{..}}, {"op":"list_resources"},
// {"op":"read_resource","uri":..}, {"op":"list_resource_templates"}, {"op":"ping"},
// {"op":"terminate_session"} (DELETE of the session; later operations then fail).
// Prints one JSON document: {"initialize": {..., "sessionId": ..., "protocolVersion": ...},
// "results": [{"ok": true, "value": ...} | {"ok": false, "error": "...", "code": n}],
// "progress": [{"t": secs, "progress": n}]}.
// A failed operation never ends the session: the next one runs on the same session.
import path from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.TOOLMESH_NODE_MODULES;
if (!modules) {
  console.error("TOOLMESH_NODE_MODULES is not set (run `cargo xtask setup`)");
  process.exit(2);
}
const sdk = (p) =>
  import(pathToFileURL(path.join(modules, "@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");

const [url, opsJson, ...rest] = process.argv.slice(2);
const headers = {};
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--header" && rest[i + 1]) {
    const [k, ...v] = rest[++i].split("=");
    headers[k] = v.join("=");
  }
}
const ops = JSON.parse(opsJson || "[]");
const start = Date.now();
const progress = [];
const out = { initialize: null, results: [], progress };

const client = new Client({ name: "toolmesh-e2e-ts", version: "0.1.0" });
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
try {
  await client.connect(transport);
  out.initialize = {
    serverInfo: client.getServerVersion(),
    capabilities: client.getServerCapabilities(),
    sessionId: transport.sessionId ?? null,
    protocolVersion: transport.protocolVersion ?? null,
  };
} catch (e) {
  out.initialize = { error: String(e?.message ?? e) };
  console.log(JSON.stringify(out));
  process.exit(0);
}

async function allPages(method, key) {
  const items = [];
  let cursor;
  let pages = 0;
  do {
    const r = await client[method](cursor ? { cursor } : {});
    items.push(...r[key]);
    cursor = r.nextCursor;
    pages++;
  } while (cursor && pages < 1000);
  return { items, pages };
}

for (const op of ops) {
  try {
    let value;
    switch (op.op) {
      case "list_tools": value = await allPages("listTools", "tools"); break;
      case "list_prompts": value = await allPages("listPrompts", "prompts"); break;
      case "list_resources": value = await allPages("listResources", "resources"); break;
      case "list_resource_templates":
        value = await allPages("listResourceTemplates", "resourceTemplates"); break;
      case "call_tool":
        value = await client.callTool({ name: op.name, arguments: op.arguments ?? {} }, undefined, {
          onprogress: (p) => progress.push({ t: (Date.now() - start) / 1000, progress: p.progress }),
          timeout: 60000,
        });
        break;
      case "get_prompt":
        value = await client.getPrompt({ name: op.name, arguments: op.arguments ?? {} }); break;
      case "read_resource": value = await client.readResource({ uri: op.uri }); break;
      case "ping": value = await client.ping(); break;
      case "terminate_session": await transport.terminateSession(); value = {}; break;
      default: throw new Error(`unknown op ${op.op}`);
    }
    out.results.push({ ok: true, value });
  } catch (e) {
    out.results.push({ ok: false, error: String(e?.message ?? e), code: e?.code ?? null });
  }
}
try { await client.close(); } catch { /* closing is best effort */ }
console.log(JSON.stringify(out));
