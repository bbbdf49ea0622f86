//! `toolmesh` binary entry point.
fn main() {}
