//! Only the traced processes pay: every traced process gets pid-filtered multi-uprobe links of
//! its own, so a process that is not traced never meets a breakpoint — checked on real
//! processes during a real `cargo memleak test` run — and valgrind, which trips over
//! breakpoints in libc's text, runs normally beside it. Kernels without multi links get the
//! perf-event fallback, which must trace the same.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use memleak_tests::{
    c_fixture, cargo_memleak, memcheck_lost, privileged, scenarios_binary, workspace_root,
};
use serde_json::Value;

/// Whether process `pid` has the page the kernel maps for uprobes once one fires in it.
fn has_uprobes_page(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .any(|line| line.ends_with("[uprobes]"))
}

/// The pid of the process whose command line contains `needle`, within `timeout`.
fn find_process(needle: &str, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) && pid != std::process::id() {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no process with {needle:?} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn processes_that_are_not_traced_meet_no_breakpoint_and_valgrind_runs_beside_a_test_run() {
    if !privileged(
        "processes_that_are_not_traced_meet_no_breakpoint_and_valgrind_runs_beside_a_test_run",
    ) {
        return;
    }
    let scenarios = scenarios_binary();
    // A run that lasts: the fixture's test that hangs, killed by --timeout.
    let mut run = Command::new(cargo_memleak())
        .args(["test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/workspace/Cargo.toml"))
        .args([
            "-p",
            "beta",
            "--lib",
            "--exact",
            "tests::hangs",
            "--timeout",
            "30",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cargo memleak test starts");
    let traced = find_process("--exact tests::hangs --nocapture", Duration::from_secs(120));
    // Positive control: the traced test has met its probes (Rust's runtime allocates at start).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !has_uprobes_page(traced) {
        assert!(
            Instant::now() < deadline,
            "the traced test never met a probe"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // An untraced process that allocates while the run goes on: no breakpoint fires in it.
    let mut serve = Command::new(c_fixture())
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the C fixture starts");
    let mut to_serve = serve.stdin.take().expect("piped stdin");
    let mut from_serve = serve.stdout.take().expect("piped stdout");
    let mut byte = [0u8; 1];
    from_serve.read_exact(&mut byte).expect("ready");
    assert_eq!(&byte, b"r");
    for command in [b"a", b"b", b"f"] {
        to_serve.write_all(command).expect("command");
        from_serve.read_exact(&mut byte).expect("acknowledged");
        assert_eq!(&byte, b".");
    }
    assert!(
        !has_uprobes_page(serve.id()),
        "an untraced process met a breakpoint during a test run"
    );
    to_serve.write_all(b"q").expect("quit");
    assert!(serve.wait().expect("serve exits").success());

    // memcheck, started beside the run, sees exactly the leak it should.
    assert_eq!(
        memcheck_lost(scenarios, &["--exact", "leaks_a_block"]),
        [(30000, 1), (0, 0)],
        "valgrind beside a test run"
    );
    assert!(
        run.try_wait().expect("waitpid").is_none(),
        "the run was still going while the checks ran"
    );
    let _ = run.kill();
    let _ = run.wait();
}

/// One traced `exec` of the C fixture as JSON, with `env` set.
fn exec_json(modes: &[&str], env: &[(&str, &str)]) -> (i32, Value, String) {
    let report = std::env::temp_dir().join(format!(
        "memleak-isolation-{}-{}.json",
        std::process::id(),
        env.len()
    ));
    let output = Command::new(cargo_memleak())
        .args(["exec", "--show-reachable", "--format", "json", "--output"])
        .arg(&report)
        .arg("--")
        .arg(c_fixture())
        .args(modes)
        .envs(env.iter().copied())
        .output()
        .expect("cargo-memleak runs");
    let text = std::fs::read_to_string(&report).expect("a report");
    let _ = std::fs::remove_file(&report);
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(&text).expect("JSON"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_perf_event_fallback_traces_the_same_and_says_what_it_costs() {
    if !privileged("the_perf_event_fallback_traces_the_same_and_says_what_it_costs") {
        return;
    }
    let modes = ["malloc", "mmap", "churn", "realloc"];
    let (code, multi, _) = exec_json(&modes, &[]);
    let (fallback_code, fallback, _) =
        exec_json(&modes, &[("CARGO_MEMLEAK_LINK_MODE", "perf-event")]);
    assert_eq!((code, fallback_code), (0, 0));
    for field in [
        "leak_summary",
        "outstanding_bytes",
        "outstanding_allocations",
        "dropped",
    ] {
        assert_eq!(multi[field], fallback[field], "{field}");
    }
    for counter in ["allocs", "frees", "free_unknown"] {
        assert_eq!(
            multi["counters"][counter], fallback["counters"][counter],
            "{counter}"
        );
    }
    assert_eq!(multi["leak_summary"]["definitely_lost"]["bytes"], 90000);

    // A test run in that mode attaches everywhere, and says so once.
    let output = Command::new(cargo_memleak())
        .args(["test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/workspace/Cargo.toml"))
        .args(["-p", "alpha", "--test", "gate", "--exact", "adds_numbers"])
        .env("CARGO_MEMLEAK_LINK_MODE", "perf-event")
        .stdin(Stdio::null())
        .output()
        .expect("cargo memleak test runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let notes: Vec<&str> = BufReader::new(stderr.as_bytes())
        .lines()
        .map_while(Result::ok)
        .filter(|line| line.contains("no multi-uprobe links"))
        .map(|_| "note")
        .collect();
    assert_eq!(notes.len(), 1, "{stderr}");

    let output = Command::new(cargo_memleak())
        .args(["exec", "--", "true"])
        .env("CARGO_MEMLEAK_LINK_MODE", "sometimes")
        .output()
        .expect("cargo-memleak runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("expected auto, multi or perf-event"),
        "{stderr}"
    );
}
