//! Helpers for the integration tests: build cargo-memleak and the fixtures once, run
//! `cargo memleak` on them for real, and read its JSON report.
//!
//! Tracing needs root. Without it a test says so loudly and passes, except under `CI=true`,
//! where it fails: CI must run them for real.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use serde_json::Value;

pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A fresh scratch directory for one test's baselines, reports and pictures, under
/// `target/test-scratch/` and unique to this test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A copy of `fixtures/FIXTURE`'s sources (not its target directory) at `to`, for a test that
/// writes into the workspace (a baseline at its root, an edit).
pub fn copy_fixture(fixture: &str, to: &Path) {
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("directory");
        for entry in std::fs::read_dir(from).expect("fixture directory") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if entry.file_name() == "target" {
                continue;
            }
            if path.is_dir() {
                copy_tree(&path, &to.join(entry.file_name()));
            } else {
                std::fs::copy(&path, to.join(entry.file_name())).expect("file copied");
            }
        }
    }
    copy_tree(&workspace_root().join("fixtures").join(fixture), to);
}

/// True when this process may trace. Panics under CI when it may not.
pub fn privileged(test: &str) -> bool {
    let root = nix_geteuid() == 0;
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: tracing tests need root, and CI=true requires them to run"
        );
        eprintln!("SKIPPED {test}: tracing needs root (run the tests with sudo)");
    }
    root
}

fn nix_geteuid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .unwrap_or(u32::MAX)
}

/// The cargo-memleak binary, built once per test process.
pub fn cargo_memleak() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        escargot::CargoBuild::new()
            .package("cargo-memleak")
            .bin("cargo-memleak")
            .manifest_path(workspace_root().join("Cargo.toml"))
            .run()
            .expect("cargo-memleak builds")
            .path()
            .to_owned()
    })
}

/// The cargo-nextest the tests run cargo memleak inside.
pub const NEXTEST_VERSION: &str = "0.9.143";

/// cargo-nextest [`NEXTEST_VERSION`]: the one on PATH when it is that version, else one
/// installed once into `target/tools` (`cargo install --locked`, about 9 minutes to build).
pub fn cargo_nextest() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let version = |binary: &Path| -> Option<String> {
            let output = Command::new(binary)
                .args(["nextest", "--version"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.split_whitespace().nth(1).map(str::to_owned)
        };
        if let Ok(found) = which::which("cargo-nextest")
            && version(&found).as_deref() == Some(NEXTEST_VERSION)
        {
            return found;
        }
        let root = workspace_root().join("target/tools");
        let installed = root.join("bin/cargo-nextest");
        if version(&installed).as_deref() != Some(NEXTEST_VERSION) {
            eprintln!(
                "installing cargo-nextest {NEXTEST_VERSION} into {}",
                root.display()
            );
            let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args([
                    "install",
                    "--locked",
                    "--quiet",
                    "cargo-nextest",
                    "--version",
                ])
                .arg(NEXTEST_VERSION)
                .arg("--root")
                .arg(&root)
                .status()
                .expect("cargo install runs");
            assert!(
                status.success(),
                "cargo install cargo-nextest {NEXTEST_VERSION}"
            );
        }
        installed
    })
}

/// The C fixture, compiled once with frame pointers and debug info.
pub fn c_fixture() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let out_dir = workspace_root().join("target/fixtures");
        std::fs::create_dir_all(&out_dir).expect("target/fixtures can be created");
        let binary = out_dir.join(format!("leaky-c-{}", std::process::id()));
        let status = Command::new("cc")
            .args(["-Wall", "-O0", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&binary)
            .arg(c_fixture_source())
            .status()
            .expect("cc runs");
        assert!(status.success(), "fixtures/c/leaky.c compiles");
        binary
    })
}

pub fn c_fixture_source() -> PathBuf {
    workspace_root().join("fixtures/c/leaky.c")
}

pub fn rust_fixture_source() -> PathBuf {
    workspace_root().join("fixtures/leaky/src/main.rs")
}

/// The line of `source` marked `LEAK:<mode>` (followed by a space, `*` or end of line).
pub fn marker_line(source: &Path, mode: &str) -> u64 {
    let text = std::fs::read_to_string(source).expect("fixture source is readable");
    let marker = format!("LEAK:{mode}");
    let found: Vec<u64> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            line.split(&marker)
                .nth(1)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '*']))
        })
        .map(|(index, _)| index as u64 + 1)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {marker} in {}",
        source.display()
    );
    found[0]
}

/// One cargo-memleak run: its exit code, output, and JSON report (when it wrote one).
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub report: Value,
}

impl Run {
    pub fn stacks(&self) -> &[Value] {
        stacks_of(&self.report)
    }

    /// Stacks with a frame whose symbol contains `symbol`.
    pub fn stacks_with(&self, symbol: &str) -> Vec<&Value> {
        report_stacks_with(&self.report, symbol)
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.report["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("counter {name} in {}", self.report))
    }
}

pub fn frames(stack: &Value) -> &[Value] {
    stack["frames"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

pub fn symbol_of(frame: &Value) -> &str {
    frame["symbol"].as_str().unwrap_or("")
}

/// Runs `cargo-memleak <args>` with `--format json --output FILE` inserted after the
/// subcommand (`args[0]`), and reads the report.
pub fn memleak(args: &[&str]) -> Run {
    let report_path = std::env::temp_dir().join(format!(
        "memleak-report-{}-{}.json",
        std::process::id(),
        unique()
    ));
    let mut command = Command::new(cargo_memleak());
    command
        .arg(args[0])
        .args(["--show-reachable", "--format", "json", "--output"])
        .arg(&report_path)
        .args(&args[1..]);
    let run = finish(command.output().expect("cargo-memleak runs"), &report_path);
    let _ = std::fs::remove_file(&report_path);
    run
}

/// Runs `cargo-memleak <args>` as given.
/// A run's LEAK SUMMARY: (definitely lost, indirectly lost, still reachable), each
/// (bytes, blocks).
pub fn leak_summary(run: &Run) -> [(u64, u64); 3] {
    ["definitely_lost", "indirectly_lost", "still_reachable"].map(|category| {
        let amount = &run.report["leak_summary"][category];
        let field = |name: &str| {
            amount[name]
                .as_u64()
                .unwrap_or_else(|| panic!("leak_summary.{category}.{name} in {}", run.report))
        };
        (field("bytes"), field("blocks"))
    })
}

/// The `scenarios` test binary of the Rust fixture, built with frame pointers.
pub fn scenarios_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| fixture_test_binary("leaky", "scenarios"))
}

/// Test target `test` of `fixtures/<fixture>`, built with frame pointers in a target directory
/// of its own (under `target/fixtures`).
pub fn fixture_test_binary(fixture: &str, test: &str) -> PathBuf {
    escargot::CargoBuild::new()
        .manifest_path(workspace_root().join(format!("fixtures/{fixture}/Cargo.toml")))
        .test(test)
        .target_dir(workspace_root().join(format!("target/fixtures/{fixture}")))
        .env("RUSTFLAGS", "-C force-frame-pointers=yes")
        .exec()
        .expect("cargo runs")
        .find_map(|message| {
            let message = message.expect("cargo's messages are read");
            match message.decode().expect("cargo's messages parse") {
                escargot::format::Message::CompilerArtifact(artifact)
                    if artifact.target.name == test =>
                {
                    artifact.executable.map(|path| path.into_owned())
                }
                _ => None,
            }
        })
        .unwrap_or_else(|| panic!("cargo built the {fixture} test binary {test}"))
}

/// What memcheck calls (definitely lost, indirectly lost), each (bytes, blocks), for a program
/// run under `valgrind --leak-check=full`.
pub fn memcheck_lost(program: &Path, args: &[&str]) -> [(u64, u64); 2] {
    let output = Command::new("valgrind")
        .args(["--leak-check=full", "--error-exitcode=0"])
        .arg(program)
        .args(args)
        .output()
        .expect("valgrind runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let amount = |what: &str| -> (u64, u64) {
        // `==PID==    definitely lost: 1,032 bytes in 1 blocks`
        let Some(line) = stderr.lines().find(|line| line.contains(what)) else {
            assert!(
                stderr.contains("no leaks are possible"),
                "memcheck printed a leak summary or said none are possible: {stderr}"
            );
            return (0, 0);
        };
        let numbers: Vec<u64> = line
            .split(what)
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|word| word.replace(',', "").parse().ok())
            .collect();
        assert_eq!(numbers.len(), 2, "bytes and blocks in {line:?}");
        (numbers[0], numbers[1])
    };
    [amount("definitely lost:"), amount("indirectly lost:")]
}

pub fn memleak_raw(args: &[&str]) -> Output {
    Command::new(cargo_memleak())
        .args(args)
        .output()
        .expect("cargo-memleak runs")
}

fn finish(output: Output, report_path: &Path) -> Run {
    let report = std::fs::read_to_string(report_path)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("the report is valid JSON"))
        .unwrap_or(Value::Null);
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        report,
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Asserts the one stack through `symbol` holds `bytes` in one allocation, and that its frame
/// for `symbol` points at `line` of a file named `file_name`.
pub fn assert_single_leak(run: &Run, symbol: &str, bytes: u64, file_name: &str, line: u64) {
    let stacks = run.stacks_with(symbol);
    assert_eq!(
        stacks.len(),
        1,
        "one stack through {symbol}; report: {:#}",
        run.report
    );
    let stack = stacks[0];
    assert_eq!(stack["bytes"], bytes, "bytes of {symbol}: {stack:#}");
    assert_eq!(
        stack["allocations"], 1,
        "allocations of {symbol}: {stack:#}"
    );
    let frame = frames(stack)
        .iter()
        .find(|frame| symbol_of(frame).contains(symbol))
        .expect("the frame is there");
    let file = frame["file"].as_str().unwrap_or_default();
    assert!(
        file.ends_with(file_name),
        "{symbol} in {file_name}: {frame:#}"
    );
    assert_eq!(frame["line"], line, "{symbol}'s line: {frame:#}");
}

pub fn assert_complete(run: &Run) {
    assert_eq!(
        run.report["dropped"],
        serde_json::json!({}),
        "no drops: {:#}",
        run.report
    );
    assert_eq!(
        run.report["incomplete"],
        serde_json::json!([]),
        "complete: {:#}",
        run.report
    );
}

/// A `cargo-memleak` that keeps running (`attach`, `kernel`): its JSON reports (one per line on
/// stdout) and its stderr lines arrive on channels, so a test can wait for them with a
/// deadline instead of hanging.
pub struct Periodic {
    pub child: std::process::Child,
    reports: std::sync::mpsc::Receiver<Value>,
    stderr: std::sync::mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub stderr_seen: Vec<String>,
}

impl Periodic {
    /// Starts `cargo-memleak <args>`; `args` must ask for `--format json`.
    pub fn start(args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new(cargo_memleak())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cargo-memleak starts");
        let (report_tx, reports) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let report = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("a report per line ({err}): {line}"));
                if report_tx.send(report).is_err() {
                    break;
                }
            }
        });
        let (stderr_tx, stderr) = std::sync::mpsc::channel();
        let child_stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(child_stderr).lines() {
                let Ok(line) = line else { break };
                if stderr_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            reports,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `text`.
    pub fn wait_for_stderr(&mut self, text: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {text:?} within {timeout:?}; stderr: {:#?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// Waits for the first report that satisfies `wanted`, and returns it.
    pub fn wait_for_report(
        &mut self,
        what: &str,
        timeout: std::time::Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(report) if wanted(&report) => return report,
                Ok(report) => last = report,
                Err(_) => panic!(
                    "no report with {what} within {timeout:?}; last report: {last:#}; stderr: {:#?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// Waits for the process to end by itself; its exit code and the rest of its stderr.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> (i32, String) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid works") {
                while let Ok(line) = self.stderr.recv_timeout(std::time::Duration::from_secs(5)) {
                    self.stderr_seen.push(line);
                }
                return (status.code().unwrap_or(-1), self.stderr_seen.join("\n"));
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "cargo-memleak still running after {timeout:?}; stderr: {:#?}",
                    self.stderr_seen
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stacks of a report (at exit, or periodic).
pub fn stacks_of(report: &Value) -> &[Value] {
    report["stacks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The stacks of a report with a frame whose symbol contains `symbol`.
pub fn report_stacks_with<'a>(report: &'a Value, symbol: &str) -> Vec<&'a Value> {
    stacks_of(report)
        .iter()
        .filter(|stack| {
            frames(stack)
                .iter()
                .any(|frame| symbol_of(frame).contains(symbol))
        })
        .collect()
}

/// The text of the `<title>`s of the SVG at `path` (a flame graph's frames, `name (N bytes,
/// P%)`), after checking it parses as XML.
pub fn svg_titles(path: &Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path).expect("the flame graph is written");
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let document =
        roxmltree::Document::parse_with_options(&svg, options).expect("the SVG parses as XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    document
        .descendants()
        .filter(|node| node.has_tag_name("title"))
        .filter_map(|node| node.text().map(str::to_owned))
        .collect()
}

/// One `cargo memleak test --message-format json` run on a fixture: its exit code, its
/// `test-finished` events in the order the tests finished, and its standard error.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub tests: Vec<Value>,
    pub stderr: String,
}

impl Finished {
    /// The event of the test named `test`; panics, with every event, when none is.
    pub fn of(&self, test: &str) -> &Value {
        self.tests
            .iter()
            .find(|event| event["test"] == test)
            .unwrap_or_else(|| panic!("{test} finished: {:#?}\n{}", self.tests, self.stderr))
    }
}

/// `cargo memleak test --message-format json --manifest-path fixtures/FIXTURE/Cargo.toml
/// ARGS`, with `env` added to the environment.
pub fn test_finished(fixture: &str, args: &[&str], env: &[(&str, &str)]) -> Finished {
    let manifest = workspace_root()
        .join("fixtures")
        .join(fixture)
        .join("Cargo.toml");
    test_finished_in(&manifest, args, env)
}

/// [`test_finished`] on the workspace of `manifest` (a copy of a fixture, a scratch crate).
pub fn test_finished_in(manifest: &Path, args: &[&str], env: &[(&str, &str)]) -> Finished {
    let output = Command::new(cargo_memleak())
        .args(["test", "--message-format", "json", "--manifest-path"])
        .arg(manifest)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("cargo memleak test runs");
    Finished {
        code: output.status.code(),
        tests: String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["event"] == "test-finished")
            .collect(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
