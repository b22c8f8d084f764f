//! The built MuniFab binaries, run as separate processes that die with the test.
//!
//! [`binary`] finds `munifab-coordinator`, `munifab-agent` and `munifab-bridge` in the
//! target directory the test itself was built into (`cargo test --workspace` builds them
//! there), and builds a missing one with the cargo that runs the tests. [`Process`] captures
//! a child's output line by line (so a test can await a readiness line, and a failure can
//! show the log), and kills the child when dropped — also when the test panics.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The directory the running test executable was built into (`target/debug`), found from
/// `current_exe()`: integration tests live in `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable is in a directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// Which package builds each binary.
fn package_of(name: &str) -> &'static str {
    match name {
        "munifab-coordinator" => "munifab-coordinator",
        "munifab-agent" => "munifab-agent",
        "munifab-bridge" => "munifab-firmware-bridge",
        other => panic!("{other} is not a MuniFab binary"),
    }
}

/// The path of a workspace binary; builds it (once per test process) if it is missing.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<()>> = OnceLock::new();
    let dir = profile_dir();
    let path = dir.join(name);
    if path.exists() {
        return path;
    }
    let _one_build_at_a_time = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if path.exists() {
        return path;
    }
    // `target/<profile>`: the profile is the directory name, the target dir its parent.
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name")
        .to_string();
    let target_dir = dir.parent().expect("a target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--bin", name, "-p", package_of(name)])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace_root());
    match profile.as_str() {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    eprintln!("{name} is not built in {}; building it", dir.display());
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build {name}: {e}"));
    assert!(
        status.success() && path.exists(),
        "building {name} failed ({status}); run `cargo build --bins` or `cargo test --workspace`"
    );
    path
}

/// The repository's root (the workspace), for `designs/` and `profiles/`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Everything a child printed so far, stdout and stderr interleaved by line.
#[derive(Debug, Clone, Default)]
struct Log {
    lines: Arc<Mutex<Vec<String>>>,
}

/// A child process of the test; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: Log,
    printed: watch::Receiver<usize>,
}

impl Process {
    /// Spawns `command` with its output captured; `name` labels it in messages.
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Process {
        let name = name.into();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let log = Log::default();
        let (count, printed) = watch::channel(0usize);
        let count = Arc::new(count);
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("MUNIFAB_E2E_ECHO").is_some() {
                        eprintln!("{line}");
                    }
                    let n = {
                        let mut lines = log.lines.lock().unwrap_or_else(|p| p.into_inner());
                        lines.push(line);
                        lines.len()
                    };
                    count.send_replace(n);
                }
            });
        }
        Process {
            name,
            child: Some(child),
            log,
            printed,
        }
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The last `n` lines printed, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.log.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a printed line contains `needle`, failing (with the log) if the process
    /// exits first or `within` passes.
    pub async fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .log
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
            // Woken by every new line; the exit check above needs a look now and then too.
            self.next_line_or(deadline.min(Instant::now() + Duration::from_millis(100)))
                .await;
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {within:?}:\n{}",
                self.name,
                self.tail(40)
            );
        }
    }

    /// Returns when the child prints a line or at `until`, whichever is first (at `until`
    /// too once its output is closed, so callers polling its exit do not spin).
    async fn next_line_or(&mut self, until: Instant) {
        match tokio::time::timeout_at(until, self.printed.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_closed)) => tokio::time::sleep_until(until).await,
        }
    }

    /// The exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Fails the test with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_status() {
            panic!("{} exited ({status}):\n{}", self.name, self.tail(40));
        }
    }

    /// Fails the test with the log once the process ends; never returns while it runs.
    /// Race it (`tokio::select!`) against a wait the process must outlive. The end is seen
    /// when the child's output closes (both reader threads end and drop the line counter),
    /// which MuniFab's binaries do only by exiting; the exit status is shown if the child
    /// is already reaped.
    pub async fn fail_on_exit(&mut self) {
        while self.printed.changed().await.is_ok() {}
        let how = match self.try_status() {
            Some(status) => format!("exited ({status})"),
            None => "closed its output (exiting)".to_string(),
        };
        panic!("{} {how}:\n{}", self.name, self.tail(40));
    }

    /// Sends `SIGTERM` and waits (up to `within`) for the process to exit.
    pub async fn terminate(mut self, within: Duration) -> ExitStatus {
        let pid = self.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill(1)");
        assert!(sent.success(), "kill -TERM {pid} ({}) failed", self.name);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_status() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?} of SIGTERM:\n{}",
                self.name,
                self.tail(40)
            );
            self.next_line_or(Instant::now() + Duration::from_millis(20))
                .await;
        }
    }

    /// `SIGKILL`, as a crash or a power cut would end it; returns once it is reaped.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A command for `binary` with every `MUNIFAB_*` variable of the test's environment removed
/// (the test passes everything in config files), logging at `info`.
pub fn command(binary_name: &str) -> Command {
    let mut c = Command::new(binary(binary_name));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MUNIFAB_") {
            c.env_remove(key);
        }
    }
    c.env("MUNIFAB_LOG", "info,rumqttd=warn");
    c
}

/// Runs `command` to the end and returns its stdout; fails the test with stderr if it fails.
pub fn run(what: &str, command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: stdout is not UTF-8: {e}"))
}
