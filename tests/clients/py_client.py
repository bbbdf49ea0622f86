#!/usr/bin/env python3
"""A scriptable MCP client on the official Python SDK (`mcp`, 2.x), for toolmesh's end-to-end tests.

It connects to one Streamable HTTP URL, runs a list of operations and prints ONE JSON document on
stdout. It never crashes on an MCP error: each operation's error is captured with its message, so
a test can assert on what a real client saw (a denial, a missing tool, a dropped session).

Usage:
    py_client.py URL OPS_JSON [--mode legacy|auto|2026-07-28] [--header 'Name: value']...
                 [--timeout SECONDS]

OPS_JSON is a JSON list of operations (or @file to read it from a file):
    {"op": "list_tools"}                      every page; result {"tools": [...], "pages": N}
    {"op": "list_tools_page", "cursor": C}    one page; result is the page
    {"op": "call_tool", "name": "add", "arguments": {"a": 1, "b": 2}}
    {"op": "list_prompts"}                    every page
    {"op": "get_prompt", "name": "greet", "arguments": {"name": "x"}}
    {"op": "list_resources"}                  every page
    {"op": "list_resource_templates"}         every page
    {"op": "read_resource", "uri": "test://static/readme"}
    {"op": "subscribe_resource", "uri": ...} / {"op": "unsubscribe_resource", "uri": ...}
    {"op": "ping"}                            result {}
    {"op": "set_logging_level", "level": "warning"}   logging/setLevel; result {}
    {"op": "sleep", "seconds": 0.5}

Output:
    {"connected": bool, "connect_error": str|null, "connect_elapsed_s": float|null,
     "protocol_version": str|null,
     "server_info": {...}|null, "server_capabilities": {...}|null,
     "results": [{"op": ..., "ok": bool, "result": {...}|null, "error": {"type", "message", "code"}|null,
                  "elapsed_s": float, "progress": [{"progress", "total", "message", "t_s"}]}],
     "notifications": [{"method": str, "t_s": float}],
     "fatal_error": str|null}
Times (`t_s`) are seconds since the operation started (progress) or since the client started
(notifications). `connect_elapsed_s` is how long connecting (the initialize handshake) took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

START = time.monotonic()


def dump(model: Any) -> Any:
    """Pydantic model (or anything) -> JSON-able value, with wire (camelCase) names."""
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return model


def error_info(exc: BaseException) -> dict[str, Any]:
    """Flatten an exception (group) into type/message/code."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc), "code": None}
    error = getattr(exc, "error", None)
    if error is not None and hasattr(error, "code"):
        info["code"] = error.code
        info["message"] = error.message
        if getattr(error, "data", None) is not None:
            info["data"] = dump(error.data)
    return info


async def all_pages(fetch, key: str) -> dict[str, Any]:
    items: list[Any] = []
    cursor = None
    pages = 0
    while True:
        page = await fetch(cursor)
        pages += 1
        items.extend(dump(x) for x in getattr(page, key))
        cursor = page.next_cursor
        if not cursor:
            break
        if pages > 1000:
            raise RuntimeError("more than 1000 pages: cursor loop?")
    return {key_to_wire(key): items, "pages": pages}


def key_to_wire(key: str) -> str:
    return {"resource_templates": "resourceTemplates"}.get(key, key)


async def run_op(client: Client, op: dict[str, Any]) -> dict[str, Any]:
    kind = op.get("op")
    record: dict[str, Any] = {"op": kind, "ok": False, "result": None, "error": None, "progress": []}
    started = time.monotonic()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        record["progress"].append(
            {"progress": progress, "total": total, "message": message, "t_s": time.monotonic() - started}
        )

    try:
        if kind == "list_tools":
            result = await all_pages(lambda c: client.list_tools(cursor=c, cache_mode="bypass"), "tools")
        elif kind == "list_tools_page":
            result = dump(await client.list_tools(cursor=op.get("cursor"), cache_mode="bypass"))
        elif kind == "call_tool":
            result = dump(
                await client.call_tool(op["name"], op.get("arguments") or {}, progress_callback=on_progress)
            )
        elif kind == "list_prompts":
            result = await all_pages(lambda c: client.list_prompts(cursor=c, cache_mode="bypass"), "prompts")
        elif kind == "get_prompt":
            result = dump(await client.get_prompt(op["name"], op.get("arguments")))
        elif kind == "list_resources":
            result = await all_pages(lambda c: client.list_resources(cursor=c, cache_mode="bypass"), "resources")
        elif kind == "list_resource_templates":
            result = await all_pages(
                lambda c: client.list_resource_templates(cursor=c, cache_mode="bypass"), "resource_templates"
            )
        elif kind == "read_resource":
            result = dump(await client.read_resource(op["uri"], cache_mode="bypass"))
        elif kind == "subscribe_resource":
            result = dump(await client.subscribe_resource(op["uri"]))
        elif kind == "unsubscribe_resource":
            result = dump(await client.unsubscribe_resource(op["uri"]))
        elif kind == "ping":
            result = dump(await client.send_ping())
        elif kind == "set_logging_level":
            result = dump(await client.set_logging_level(op["level"]))
        elif kind == "sleep":
            await anyio.sleep(float(op.get("seconds", 0)))
            result = {}
        else:
            raise ValueError(f"unknown op {kind!r}")
        record["ok"] = True
        record["result"] = result
    except Exception as exc:  # noqa: BLE001 - every failure is data for the test
        record["error"] = error_info(exc)
    record["elapsed_s"] = time.monotonic() - started
    return record


async def main_async(args: argparse.Namespace, ops: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "connected": False,
        "connect_error": None,
        "connect_elapsed_s": None,
        "protocol_version": None,
        "server_info": None,
        "server_capabilities": None,
        "results": [],
        "notifications": [],
        "fatal_error": None,
    }

    async def on_message(message: Any) -> None:
        method = getattr(getattr(message, "root", message), "method", None)
        if method is None:
            method = getattr(message, "method", None)
        if method is not None:
            out["notifications"].append({"method": method, "t_s": time.monotonic() - START})

    headers = {}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    http_client = create_mcp_http_client(headers=headers or None)
    transport = streamable_http_client(args.url, http_client=http_client)
    client = Client(
        transport,
        mode=args.mode,
        cache=None,
        message_handler=on_message,
        read_timeout_seconds=args.timeout,
    )
    async with http_client:
        entered = False
        connecting = time.monotonic()
        try:
            async with client:
                entered = True
                out["connect_elapsed_s"] = time.monotonic() - connecting
                out["connected"] = True
                out["protocol_version"] = client.protocol_version
                out["server_info"] = dump(client.server_info)
                out["server_capabilities"] = dump(client.server_capabilities)
                for op in ops:
                    out["results"].append(await run_op(client, op))
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            info = error_info(exc)
            text = f"{info['type']}: {info['message']}"
            if entered:
                out["fatal_error"] = text
            else:
                out["connect_error"] = text
            if args.verbose:
                traceback.print_exc(file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("ops", help="JSON list of operations, or @file")
    parser.add_argument("--mode", default="auto", help="legacy | auto | a modern protocol version")
    parser.add_argument("--header", action="append", default=[], help="extra HTTP header 'Name: value'")
    parser.add_argument("--timeout", type=float, default=60.0, help="read timeout per request, seconds")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks to stderr")
    args = parser.parse_args()
    raw = args.ops
    if raw.startswith("@"):
        with open(raw[1:], encoding="utf-8") as f:
            raw = f.read()
    ops = json.loads(raw)
    if not isinstance(ops, list):
        parser.error("OPS_JSON must be a JSON list")
    out = anyio.run(main_async, args, ops)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
