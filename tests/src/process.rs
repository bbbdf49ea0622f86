//! Child processes that never outlive their test, and free loopback ports.
//!
//! [`ChildProcess`] owns a spawned process and its log (stdout and stderr, interleaved, in a file).
//! Dropping it kills the process, also when the test panics; when it is dropped *because* the
//! test is panicking, it first prints the last lines of its log to stderr, so a failing test
//! shows what Envoy or the control plane said, and keeps the log file on disk.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How many log lines a failing test prints per process.
pub const LOG_TAIL_LINES: usize = 200;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free TCP port on 127.0.0.1.
///
/// The port is bound, read and released; a port is never handed out twice by one test process,
/// so parallel tests in the same binary cannot collide. (Another process could still take it
/// in between; the OS rarely reuses a just-released ephemeral port.)
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Mutex::default);
    for _ in 0..1000 {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no local address: {e}"))
            .port();
        if lock(given).insert(port) {
            return port;
        }
    }
    panic!("could not find a free port in 1000 tries")
}

/// A spawned process that is killed when dropped, with its output captured to a log file.
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    /// The temp dir holding the log when the guard created it (kept on panic).
    dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log", &self.log_path)
            .finish()
    }
}

fn pump(
    source: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<File>>,
    lines: Option<Arc<Mutex<Vec<String>>>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = lock(&log).write_all(&buf);
                    if let Some(lines) = &lines {
                        let line = String::from_utf8_lossy(&buf);
                        lock(lines).push(line.trim_end_matches(['\r', '\n']).to_owned());
                    }
                }
            }
        }
    });
}

impl ChildProcess {
    /// Spawns `command` (stdin closed, stdout and stderr captured) with its log in a new temp
    /// dir. `name` labels the log when it is printed.
    pub fn spawn(name: &str, command: Command) -> anyhow::Result<ChildProcess> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("toolmesh-e2e-{name}-"))
            .tempdir()
            .context("creating a temp dir for the log")?;
        let log_path = dir.path().join(format!("{name}.log"));
        let mut process = Self::spawn_with_log(name, command, log_path)?;
        process.dir = Some(dir);
        Ok(process)
    }

    /// Spawns `command` with its log written to `log_path` (the caller owns that directory).
    pub fn spawn_with_log(
        name: &str,
        mut command: Command,
        log_path: PathBuf,
    ) -> anyhow::Result<ChildProcess> {
        let log = File::create(&log_path)
            .with_context(|| format!("creating the log {}", log_path.display()))?;
        let log = Arc::new(Mutex::new(log));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{command:?}");
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}: {shown}"))?;
        let _ = writeln!(lock(&log), "# {name}: {shown}");
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            pump(out, log.clone(), Some(stdout_lines.clone()));
        }
        if let Some(err) = child.stderr.take() {
            pump(err, log, None);
        }
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            log_path,
            stdout_lines,
            dir: None,
        })
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The stdout lines read so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.stdout_lines).clone()
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (polling, without blocking the async runtime) until a stdout line starts with
    /// `prefix`, and returns that line. Fails with the log tail if the process exits first or
    /// the timeout passes.
    pub async fn wait_for_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = lock(&self.stdout_lines)
                .iter()
                .find(|l| l.starts_with(prefix))
            {
                return Ok(line.clone());
            }
            if let Some(status) = self.try_wait() {
                // Let the reader threads drain what the process wrote last.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(line) = lock(&self.stdout_lines)
                    .iter()
                    .find(|l| l.starts_with(prefix))
                {
                    return Ok(line.clone());
                }
                bail!(
                    "{} exited ({status}) before printing {prefix:?}; log:\n{}",
                    self.name,
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {prefix:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop with SIGTERM (through the `kill` command, the crate forbids
    /// `unsafe`), waits up to `timeout` for it to exit, then kills it. Returns the exit status
    /// if it exited on its own.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        None
    }

    /// Prints the log tail to stderr, framed with the process name.
    pub fn print_log_tail(&self, n: usize) {
        eprintln!(
            "\n===== {} (pid {}): last {n} log lines of {} =====\n{}\n===== end of {} log =====",
            self.name,
            self.child.id(),
            self.log_path.display(),
            self.log_tail(n),
            self.name
        );
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.print_log_tail(LOG_TAIL_LINES);
        }
        self.kill();
        if panicking && let Some(dir) = self.dir.take() {
            let kept = dir.keep();
            eprintln!("(kept {} for inspection)", kept.display());
        }
    }
}
