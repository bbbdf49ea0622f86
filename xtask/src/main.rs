//! `cargo xtask`: the project's tasks, in Rust so they run wherever cargo runs.
//!
//! - `cargo xtask setup` installs what the project needs into `.tools/` (idempotent);
//! - `cargo xtask up` runs toolmesh: control plane + Envoy + filter;
//! - `cargo xtask test` runs every gate and test (what CI runs);
//! - `cargo xtask bench` measures the filter against bare Envoy.

mod bench;
mod setup;
mod test;
mod up;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <setup|up|test|bench|wasm> [options]

  setup   install the wasm target, Envoy 1.40.0 and the MCP test clients into .tools/ (idempotent)
  up      build and run toolmesh: control plane (SQLite by default) + Envoy + filter
  test    fmt, clippy (native + wasm32-wasip1), unit, database and end-to-end tests
  bench   tools/call throughput and latency through Envoy with the filter vs bare Envoy
  wasm    build the filter (target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm)";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "setup" => setup::run().map(|_| ()),
        "up" => up::run(&rest),
        "test" => test::run(&rest),
        "bench" => bench::run(&rest),
        "wasm" => {
            setup::run()?;
            util::build_wasm().map(|p| println!("{}", p.display()))
        }
        "" | "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{USAGE}"),
    }
}
