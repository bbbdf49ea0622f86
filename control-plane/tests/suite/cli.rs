//! The `toolmesh` binary: `serve` (first start, token, key file, signals) and the catalog CLI
//! against a real server on a free port.

use crate::common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TOKEN;
use serde_json::Value;
use toolmesh_test_servers::{TestServerConfig, spawn};

const BIN: &str = env!("CARGO_BIN_EXE_toolmesh");

/// Kills the child on drop (also when the test fails).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run a CLI command; returns (success, stdout, stderr).
async fn cli(api: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env("TOOLMESH_API_URL", api)
        .env("TOOLMESH_ADMIN_TOKEN", token)
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("CLI finished in time")
        .expect("CLI ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_cli_against_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = toolmesh::ServeConfig::with_data_dir(dir.path());
    config.admin_token = Some(TOKEN.into());
    config.api_port = 0;
    config.discovery_interval_secs = 0;
    config.discovery_watch = false;
    config.xds_port = 0;
    let state = toolmesh::build_state(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        toolmesh::serve(state, listener, &config, async {
            let _ = stopped.await;
        })
        .await
    });
    let upstream = spawn(TestServerConfig::default()).await.unwrap();
    let url = upstream.url();

    let (ok, out, err) = cli(
        &api,
        TOKEN,
        &[
            "mcp-servers",
            "add",
            "up",
            "--url",
            &url,
            "--header",
            "X-Key: v1",
            "--tag",
            "prod",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("health         up"), "{out}");
    assert!(out.contains("tools          25"), "{out}");
    assert!(out.contains("stateless      2026-07-28\n"), "{out}");
    assert!(out.contains("headers x-key (values hidden)"), "{out}");
    assert!(!out.contains("v1\n"), "{out}");

    let (ok, out, _) = cli(&api, TOKEN, &["mcp-servers", "list"]).await;
    assert!(ok);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{out}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("up ") && row.contains(" up ") && row.contains(&url),
        "{row}"
    );

    let (ok, out, _) = cli(&api, TOKEN, &["mcp-servers", "list", "--json"]).await;
    assert!(ok);
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["items"][0]["name"], "up");

    let (ok, out, _) = cli(&api, TOKEN, &["tools", "list", "--mcp-server", "up"]).await;
    assert!(ok);
    assert_eq!(out.lines().count(), 1 + 25, "{out}");
    assert!(out.contains("long_list_21"));

    let (ok, out, err) = cli(&api, TOKEN, &["mcp-servers", "refresh", "up"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("added 0, drifted 0"), "{out}");

    let (ok, out, err) = cli(
        &api,
        TOKEN,
        &[
            "virtual-servers",
            "create",
            "team",
            "--tool",
            "up/echo=say",
            "--tool",
            "up/add",
            "--prompt",
            "up/greet",
            "--resource",
            "up=test://static/readme",
            "--resource-template",
            "up=test://template/{id}/data",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("http://127.0.0.1:8080/servers/team/mcp"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("tool")
            && l.contains("say")
            && l.contains("echo")
            && l.contains("active")),
        "{out}"
    );

    let (ok, _, err) = cli(
        &api,
        TOKEN,
        &["virtual-servers", "create", "bad", "--tool", "up/nope"],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("tools[0]: unknown tool 'nope' on mcp server 'up'"),
        "{err}"
    );

    let (ok, out, _) = cli(&api, TOKEN, &["virtual-servers", "list"]).await;
    assert!(ok);
    assert!(out.lines().nth(1).unwrap().starts_with("team "), "{out}");
    let (ok, out, _) = cli(&api, TOKEN, &["virtual-servers", "show", "team", "--json"]).await;
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tools"][0]["exposed_name"], "say");

    let (ok, _, err) = cli(&api, TOKEN, &["mcp-servers", "rm", "up"]).await;
    assert!(!ok);
    assert!(err.contains("used by virtual servers"), "{err}");
    let (ok, _, err) = cli(&api, "wrong-token", &["mcp-servers", "list"]).await;
    assert!(!ok);
    assert!(err.contains("invalid admin token"), "{err}");
    let (ok, _, err) = cli(&api, TOKEN, &["mcp-servers", "show", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("mcp server 'nope' not found"), "{err}");

    let (ok, out, _) = cli(&api, TOKEN, &["virtual-servers", "rm", "team"]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = cli(&api, TOKEN, &["mcp-servers", "rm", "up"]).await;
    assert!(ok);
    assert!(out.contains("deleted mcp server up"));

    let (ok, _, err) = cli("http://127.0.0.1:1", TOKEN, &["mcp-servers", "list"]).await;
    assert!(!ok);
    assert!(err.contains("cannot reach the toolmesh API"), "{err}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    upstream.shutdown().await;
}

/// A running `toolmesh serve`: the child, its API URL, its logs until it was up, and its stdout.
struct Serve {
    child: Child,
    api: String,
    logs: String,
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    /// Wait for a stdout line starting with `prefix`.
    fn wait_stdout(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no stdout line starting with {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }
}

/// Start `toolmesh serve` on a free port and wait until its API is up.
fn start_serve(data_dir: &std::path::Path) -> Serve {
    start_serve_with(data_dir, &[], &[])
}

/// [`start_serve`] with more flags and environment variables (set after the defaults).
fn start_serve_with(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--api-port",
        "0",
        "--xds-port",
        "0",
        "--log-format",
        "json",
    ])
    .args(args)
    .env("TOOLMESH_DATA_DIR", data_dir)
    .env("TOOLMESH_DISCOVERY_INTERVAL", "0")
    .env("TOOLMESH_DISCOVERY_WATCH", "false")
    .env_remove("TOOLMESH_ADMIN_TOKEN")
    .env_remove("DATABASE_URL")
    .env_remove("TOOLMESH_SECRET_KEY")
    .env_remove("TOOLMESH_SECRET_KEY_FILE")
    .env_remove("RUST_LOG")
    .env_remove("TOOLMESH_LIST_PAGE_SIZE")
    .env_remove("TOOLMESH_ALLOWED_HOSTS")
    .env_remove("TOOLMESH_MEMBER_TIMEOUT_MS")
    .env_remove("TOOLMESH_CALLER_STATS_LIMIT")
    .envs(env.iter().copied())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = Child(cmd.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let (out_tx, out_rx) = std::sync::mpsc::channel::<String>();
    let (err_tx, err_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut logs = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = err_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("serve did not come up; logs:\n{}", logs.join("\n")));
        logs.push(line.clone());
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && let Some(api) = v["fields"]["api"].as_str()
        {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || while err_rx.recv().is_ok() {});
            return Serve {
                child,
                api: api.to_string(),
                logs: logs.join("\n"),
                stdout: out_rx,
            };
        }
    }
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_first_start_generates_token_and_key_then_reuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();

    let mut first = start_serve(dir.path());
    let token = first.wait_stdout("admin token: ");
    let api = first.api.clone();
    assert!(
        first.logs.contains("generated an admin token"),
        "{}",
        first.logs
    );
    assert!(
        first
            .logs
            .contains("generated a new credential encryption key"),
        "{}",
        first.logs
    );
    assert!(
        !first.logs.contains(&token),
        "the token is printed once on stdout, not logged"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(dir.path().join("toolmesh.db").exists());

    let health = http.get(format!("{api}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let denied = http
        .get(format!("{api}/v1/mcp-servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let ok = http
        .get(format!("{api}/v1/mcp-servers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(sigterm(&mut first.child).success(), "clean exit on SIGTERM");

    // Second start: no new token, the old one still works; the key file is reused.
    let key_before = std::fs::read_to_string(dir.path().join("secret.key")).unwrap();
    let mut second = start_serve(dir.path());
    let api = second.api.clone();
    assert!(
        second.logs.contains("toolmesh admin reset-token"),
        "{}",
        second.logs
    );
    let ok = http
        .get(format!("{api}/v1/mcp-servers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret.key")).unwrap(),
        key_before
    );

    // reset-token: the running server takes the new one at once.
    let reset = Command::new(BIN)
        .args(["admin", "reset-token"])
        .env("TOOLMESH_DATA_DIR", dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(reset.status.success());
    let new_token = String::from_utf8_lossy(&reset.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("admin token: ").map(str::to_string))
        .expect("new token printed");
    let old = http
        .get(format!("{api}/v1/mcp-servers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    let new = http
        .get(format!("{api}/v1/mcp-servers"))
        .bearer_auth(&new_token)
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), 200);
    assert!(sigterm(&mut second.child).success());
    // Its whole stdout (complete now that it exited) never printed a token.
    let printed: Vec<String> = second.stdout.iter().collect();
    assert!(
        !printed.iter().any(|l| l.starts_with("admin token: ")),
        "{printed:?}"
    );

    // A different key is refused: credentials stored with the old one would not open.
    let wrong = Command::new(BIN)
        .args(["serve", "--api-port", "0", "--xds-port", "0"])
        .env("TOOLMESH_DATA_DIR", dir.path())
        .env("TOOLMESH_SECRET_KEY", "00".repeat(32))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("secret key does not match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_knobs_reach_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // Flags and environment variables; a flag wins over its variable.
    let mut serve = start_serve_with(
        dir.path(),
        &["--member-timeout-ms", "1500", "--list-page-size", "9"],
        &[
            ("TOOLMESH_ADMIN_TOKEN", TOKEN),
            ("TOOLMESH_LIST_PAGE_SIZE", "7"),
            (
                "TOOLMESH_ALLOWED_HOSTS",
                "mcp.example.com, Gateway.Internal,[::2]",
            ),
            ("TOOLMESH_CALLER_STATS_LIMIT", "1"),
        ],
    );
    // A virtual server and two tokens for it: only the newest gets per-caller stats.
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", serve.api))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    assert_eq!(
        post("/v1/virtual-servers", serde_json::json!({"name": "a"}))
            .await
            .unwrap()
            .status(),
        201
    );
    let mut ids = Vec::new();
    for name in ["older", "newer"] {
        let t: Value = post(
            "/v1/tokens",
            serde_json::json!({"name": name, "virtual_servers": ["a"]}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let policy: Value = http
        .get(format!("{}/v1/policy", serve.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(policy["limits"]["list_page_size"], 9, "{policy}");
    assert_eq!(
        policy["limits"]["allowed_hosts"],
        serde_json::json!(["mcp.example.com", "gateway.internal", "[::2]"])
    );
    assert_eq!(policy["sessions"]["member_timeout_ms"], 1500);
    assert_eq!(
        policy["virtual_servers"][0]["callers"],
        serde_json::json!([ids[1]])
    );
    assert!(sigterm(&mut serve.child).success());

    // Defaults.
    let mut serve = start_serve_with(dir.path(), &[], &[("TOOLMESH_ADMIN_TOKEN", TOKEN)]);
    let policy: Value = http
        .get(format!("{}/v1/policy", serve.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(policy["limits"]["list_page_size"], 100, "{policy}");
    assert!(policy["limits"].get("allowed_hosts").is_none(), "{policy}");
    assert_eq!(policy["sessions"]["member_timeout_ms"], 5000);
    assert_eq!(
        policy["virtual_servers"][0]["callers"],
        serde_json::json!(ids)
    );
    assert!(sigterm(&mut serve.child).success());

    // Values the filter could not use are refused at start, naming the flag.
    for (args, env, needle) in [
        (vec!["--list-page-size", "0"], vec![], "--list-page-size"),
        (
            vec![],
            vec![("TOOLMESH_MEMBER_TIMEOUT_MS", "0")],
            "--member-timeout-ms",
        ),
        (
            vec!["--allowed-hosts", "ok.example,bad.example:8443"],
            vec![],
            "without a port",
        ),
        (
            vec![],
            vec![("TOOLMESH_ALLOWED_HOSTS", "evil.example/x")],
            "is not a host name",
        ),
        (
            vec!["--caller-stats-limit", "100001"],
            vec![],
            "--caller-stats-limit",
        ),
        (
            vec![],
            vec![("TOOLMESH_ACCESS_LOG", "file")],
            "--access-log",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--api-port", "0", "--xds-port", "0"])
            .args(&args)
            .env("TOOLMESH_DATA_DIR", dir.path())
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} started");
        assert!(err.contains(needle), "{args:?} {env:?}: {err}");
    }
}
