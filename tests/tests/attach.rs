//! `cargo memleak attach`: probes put into a process that is already running, periodic
//! reports of what it allocated from then on (the C fixture's `serve` mode, driven one command
//! at a time over a pipe).

use std::{
    io::{Read as _, Write as _},
    process::{Child, Command, Stdio},
    time::Duration,
};

use memleak_tests::{
    Periodic, c_fixture, c_fixture_source, frames, marker_line, memleak_raw, privileged,
    report_stacks_with, stacks_of, symbol_of,
};
use serde_json::Value;

/// The C fixture in `serve` mode, ready for commands.
struct Served(Child);

impl Served {
    fn start() -> Self {
        let mut child = Command::new(c_fixture())
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the C fixture starts");
        let mut ready = [0u8; 1];
        child
            .stdout
            .as_mut()
            .expect("piped")
            .read_exact(&mut ready)
            .expect("the fixture says it is ready");
        assert_eq!(&ready, b"r");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends commands and waits for each one's acknowledgement.
    fn send(&mut self, commands: &str) {
        let stdin = self.0.stdin.as_mut().expect("piped");
        stdin.write_all(commands.as_bytes()).expect("commands sent");
        stdin.flush().expect("commands flushed");
        let mut acks = vec![0u8; commands.len()];
        self.0
            .stdout
            .as_mut()
            .expect("piped")
            .read_exact(&mut acks)
            .expect("every command acknowledged");
        assert!(acks.iter().all(|&ack| ack == b'.'), "acks: {acks:?}");
    }

    fn quit(&mut self) {
        let stdin = self.0.stdin.as_mut().expect("piped");
        stdin.write_all(b"q").expect("quit sent");
        let status = self.0.wait().expect("the fixture exits");
        assert!(status.success(), "the fixture exits 0: {status}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (bytes, allocations) of the one stack through `function`.
fn stack_through(report: &Value, function: &str) -> (u64, u64) {
    let stacks = report_stacks_with(report, function);
    assert_eq!(stacks.len(), 1, "one stack through {function}: {report:#}");
    let amount = |field: &str| stacks[0][field].as_u64().expect("a number");
    (amount("bytes"), amount("allocations"))
}

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn attach_reports_what_a_running_process_allocates_from_then_on() {
    if !privileged("attach_reports_what_a_running_process_allocates_from_then_on") {
        return;
    }
    let mut served = Served::start();
    // Two blocks before the probes go in: never seen, and their frees are not drops.
    served.send("aa");
    let pid = served.pid().to_string();
    let mut memleak = Periodic::start(&[
        "attach", "-p", &pid, "--older", "0", "-T", "100", "--format", "json", "0.2",
    ]);
    memleak.wait_for_stderr("Attaching to pid", WAIT);
    // Three on the main thread, one on a thread that was running before the attach.
    served.send("aaab");
    let report = memleak.wait_for_report("the four new blocks", WAIT, |report| {
        report["outstanding_allocations"] == 4
    });
    assert_eq!(report["target"], format!("pid {pid}"));
    assert_eq!(stack_through(&report, "serve_leak_on_thread"), (30000, 1));
    let main_stacks: Vec<&Value> = report_stacks_with(&report, "serve_leak")
        .into_iter()
        .filter(|stack| symbol_of(&frames(stack)[0]) == "serve_leak")
        .collect();
    assert_eq!(main_stacks.len(), 1, "{report:#}");
    assert_eq!(main_stacks[0]["bytes"], 90000, "{report:#}");
    assert_eq!(main_stacks[0]["allocations"], 3, "{report:#}");
    let leak = &frames(main_stacks[0])[0];
    assert!(
        leak["file"]
            .as_str()
            .unwrap_or_default()
            .ends_with("leaky.c"),
        "{leak:#}"
    );
    assert_eq!(
        leak["line"],
        marker_line(&c_fixture_source(), "serve"),
        "{leak:#}"
    );
    assert_eq!(report["outstanding_bytes"], 120000, "{report:#}");
    assert_eq!(report["counters"]["allocs"], 4, "{report:#}");

    // Free all six: the four traced ones go, the two older ones are counted, not dropped.
    served.send("f");
    let report = memleak.wait_for_report("the blocks freed", WAIT, |report| {
        report["counters"]["frees"] == 4
    });
    assert_eq!(report["outstanding_allocations"], 0, "{report:#}");
    assert_eq!(report["counters"]["free_unknown"], 2, "{report:#}");
    assert_eq!(report["dropped"], serde_json::json!({}), "{report:#}");
    assert_eq!(report["incomplete"], serde_json::json!([]), "{report:#}");

    // The process's exit ends the attach by itself.
    served.quit();
    ends_with_the_process(&mut memleak, &pid);
}

#[test]
fn attach_counts_reports_and_leaves_out_young_allocations() {
    if !privileged("attach_counts_reports_and_leaves_out_young_allocations") {
        return;
    }
    let mut served = Served::start();
    let pid = served.pid().to_string();
    let mut memleak = Periodic::start(&[
        "attach", "-p", &pid, "--older", "60000", "--format", "json", "0.2", "3",
    ]);
    memleak.wait_for_stderr("Attaching to pid", WAIT);
    served.send("a");
    // A minute old at least: the new block is traced but not shown.
    let report = memleak.wait_for_report("the block traced", WAIT, |report| {
        report["counters"]["allocs"] == 1
    });
    assert_eq!(report["outstanding_allocations"], 0, "{report:#}");
    assert_eq!(report["older_than_ms"], 60000, "{report:#}");
    let (code, stderr) = memleak.wait_exit(WAIT);
    assert_eq!(code, 0, "three reports, then exit 0: {stderr}");
    served.quit();
}

#[test]
fn attach_to_a_missing_process_or_a_thread_is_a_clear_error() {
    if !privileged("attach_to_a_missing_process_or_a_thread_is_a_clear_error") {
        return;
    }
    // Pids stay below pid_max (at most 2^22): this one cannot exist.
    let missing = memleak_raw(&["attach", "-p", "99999999", "1", "1"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(127), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: no process with pid 99999999; check the number with `ps -p 99999999`"
    );

    let served = Served::start();
    let pid = served.pid();
    let thread = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the fixture's threads are listed")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&tid| tid != pid)
        .expect("the serve mode runs a second thread");
    let thread = thread.to_string();
    let refused = memleak_raw(&["attach", "-p", &thread, "1", "1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!("error: {thread} is a thread of process {pid}; attach to the process: -p {pid}")
    );

    let bad_interval = memleak_raw(&["attach", "-p", &pid.to_string(), "0"]);
    let stderr = String::from_utf8_lossy(&bad_interval.stderr);
    assert_eq!(bad_interval.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: INTERVAL 0 is not a positive number of seconds"
    );
}

/// Checks that `memleak` ended by itself, with exit 0, when process `pid` exited.
fn ends_with_the_process(memleak: &mut Periodic, pid: &str) {
    let (code, stderr) = memleak.wait_exit(WAIT);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("memleak: pid {pid} exited")),
        "{stderr}"
    );
}

/// Waits for the report made at the process's exit.
fn report_at_exit(memleak: &mut Periodic) -> Value {
    memleak.wait_for_report("the report at its exit", WAIT, |report| {
        !report["at_exit"].is_null()
    })
}

/// Waits for the line of a periodic run saying it attached, and for its first report (so that
/// the probes are in and the process is seized).
fn attached(memleak: &mut Periodic) {
    memleak.wait_for_stderr("Attaching to pid", WAIT);
    memleak.wait_for_report("a first report", WAIT, |_| true);
}

#[test]
fn attach_reports_the_blocks_outstanding_at_the_process_exit() {
    if !privileged("attach_reports_the_blocks_outstanding_at_the_process_exit") {
        return;
    }
    let mut served = Served::start();
    let pid = served.pid().to_string();
    let mut memleak = Periodic::start(&[
        "attach", "-p", &pid, "--older", "0", "--format", "json", "0.2",
    ]);
    attached(&mut memleak);
    // Two on the main thread, one on the worker thread.
    served.send("aab");
    served.quit();
    let last = report_at_exit(&mut memleak);
    assert_eq!(last["at_exit"], "tracing began while it ran", "{last:#}");
    assert_eq!(last["outstanding_allocations"], 3, "{last:#}");
    assert_eq!(last["outstanding_bytes"], 90000, "{last:#}");
    assert_eq!(stack_through(&last, "serve_leak_on_thread"), (30000, 1));
    assert!(
        stacks_of(&last)
            .iter()
            .all(|stack| stack.get("category").is_none()),
        "nothing is classified: {last:#}"
    );
    ends_with_the_process(&mut memleak, &pid);
}

#[test]
fn two_attaches_keep_their_own_entries_and_combined_totals_match() {
    if !privileged("two_attaches_keep_their_own_entries_and_combined_totals_match") {
        return;
    }
    let mut served = Served::start();
    let pid = served.pid().to_string();
    let mut first = Periodic::start(&[
        "attach", "-p", &pid, "--older", "0", "-T", "100", "--format", "json", "0.2",
    ]);
    attached(&mut first);
    // The second cannot seize the process (the first has it), and says so; its totals are
    // kept in the kernel. It ends after 8 reports, while the first goes on.
    let mut second = Periodic::start(&[
        "attach",
        "-p",
        &pid,
        "--combined-only",
        "-T",
        "100",
        "--format",
        "json",
        "0.2",
        "8",
    ]);
    second.wait_for_stderr("memleak: no report at its exit: ", WAIT);
    second.wait_for_stderr("Attaching to pid", WAIT);
    second.wait_for_report("a first report", WAIT, |_| true);
    served.send("aaab");
    let four = |report: &Value| report["outstanding_allocations"] == 4;
    let per_allocation = first.wait_for_report("the four blocks", WAIT, four);
    let combined = second.wait_for_report("the four blocks, combined", WAIT, four);
    assert_eq!(combined["combined"], true, "{combined:#}");
    for report in [&per_allocation, &combined] {
        assert_eq!(report["outstanding_bytes"], 120000, "{report:#}");
        assert_eq!(stack_through(report, "serve_leak_on_thread"), (30000, 1));
    }
    let (code, stderr) = second.wait_exit(WAIT);
    assert_eq!(code, 0, "{stderr}");
    // The second's exit removed nothing of the first's.
    served.send("a");
    let five = first.wait_for_report("the fifth block", WAIT, |report| {
        report["outstanding_allocations"] == 5
    });
    assert_eq!(five["outstanding_bytes"], 150000, "{five:#}");
    served.quit();
    let last = report_at_exit(&mut first);
    assert_eq!(last["outstanding_allocations"], 5, "{last:#}");
    ends_with_the_process(&mut first, &pid);
}

#[test]
fn attach_draws_each_reports_stacks_as_a_flame_graph() {
    if !privileged("attach_draws_each_reports_stacks_as_a_flame_graph") {
        return;
    }
    let svg = memleak_tests::scratch("attach-flamegraph").join("stacks.svg");
    let mut served = Served::start();
    let pid = served.pid().to_string();
    let mut memleak = Periodic::start(&[
        "attach",
        "-p",
        &pid,
        "--older",
        "0",
        "--format",
        "json",
        "--flamegraph",
        svg.to_str().expect("UTF-8"),
        "0.2",
    ]);
    memleak.wait_for_stderr("Attaching to pid", WAIT);
    served.send("aaa");
    memleak.wait_for_report("the three blocks", WAIT, |report| {
        report["outstanding_allocations"] == 3
    });
    // The next report comes after the picture of this one was written.
    memleak.wait_for_report("another report", WAIT, |_| true);
    let titles = memleak_tests::svg_titles(&svg);
    assert!(
        titles
            .iter()
            .any(|title| title.starts_with("serve_leak (90,000 bytes")),
        "{titles:#?}"
    );
    served.quit();
    let (code, stderr) = memleak.wait_exit(WAIT);
    assert_eq!(code, 0, "{stderr}");
}
