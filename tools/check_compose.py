"""Structural check of docker-compose.yml (no container engine runs on CI machines).

Parses the compose file and the Envoy bootstraps, and checks what a broken edit would break:
the four services, the pinned Envoy image, files mounted from the repo exist, and the
environment variables given to the control plane are ones it documents in the README.
Exit code 1 with a message on the first problem.
"""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent


def fail(msg):
    print(f"docker-compose.yml: {msg}", file=sys.stderr)
    sys.exit(1)


compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose.get("services") or {}
for name in ("postgres", "control-plane", "demo-mcp", "envoy"):
    if name not in services:
        fail(f"service {name!r} is missing")
if not str(services["envoy"].get("image", "")).startswith("envoyproxy/envoy:v1.40"):
    fail("envoy must use the official envoyproxy/envoy v1.40 image")
for svc in services.values():
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        if src.startswith("./") and not (root / src).exists():
            fail(f"mounted file {src} does not exist")
readme = (root / "README.md").read_text()
for var in services["control-plane"].get("environment", {}):
    if var.startswith("TOOLMESH_") and var not in readme:
        fail(f"{var} is not documented in README.md")
for boot in ("envoy/bootstrap.yaml", "envoy/bootstrap-compose.yaml"):
    doc = yaml.safe_load((root / boot).read_text())
    if "dynamic_resources" not in doc or "ads_config" not in doc["dynamic_resources"]:
        fail(f"{boot} has no ADS config")
    for tag in doc.get("stats_config", {}).get("stats_tags", []):
        re.compile(tag["regex"])
print("docker-compose.yml and Envoy bootstraps: OK")
