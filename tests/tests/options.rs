//! BCC memleak's options on `cargo memleak exec` (and their refusal by the leak gate), on the
//! C fixture: `-t` (trace lines), `-s` (sampling), `--combined-only` (per-stack totals kept in
//! the kernel), `exec INTERVAL` (reports while the program runs).

use std::collections::BTreeMap;

use memleak_tests::{c_fixture, frames, leak_summary, memleak, memleak_raw, privileged, symbol_of};
use serde_json::Value;

fn fixture() -> &'static str {
    c_fixture().to_str().expect("utf-8 path")
}

/// (bytes, allocations) of each stack of a report, by its innermost frame's function.
fn by_function(report: &Value) -> BTreeMap<String, (u64, u64)> {
    let mut stacks = BTreeMap::new();
    for stack in report["stacks"].as_array().expect("stacks") {
        let function = symbol_of(&frames(stack)[0]).to_owned();
        let figure = |name: &str| stack[name].as_u64().expect("a number");
        let entry: &mut (u64, u64) = stacks.entry(function).or_default();
        entry.0 += figure("bytes");
        entry.1 += figure("allocations");
    }
    stacks
}

#[test]
fn trace_prints_every_allocation_and_free_in_order() {
    if !privileged("trace_prints_every_allocation_and_free_in_order") {
        return;
    }
    let run = memleak(&["exec", "--trace", "--", fixture(), "trace-sequence"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // `[HH:MM:SS] alloc 1111 bytes at 0x... pid P tid T from trace_sequence+0x12 (...)`
    let lines: Vec<(&str, u64, &str)> = run
        .stderr
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip(1);
            let kind = words.next()?;
            let size = words.next()?.parse().ok()?;
            (words.next()? == "bytes").then_some((kind, size, line))
        })
        .collect();
    let sequence: Vec<(&str, u64)> = lines.iter().map(|&(kind, size, _)| (kind, size)).collect();
    assert_eq!(
        sequence,
        [
            ("alloc", 1111),
            ("alloc", 2222),
            ("free", 1111),
            ("alloc", 3333),
            ("free", 2222),
            ("alloc", 4444),
            ("free", 3333),
            ("free", 4444),
        ],
        "the trace lines, in order: {}",
        run.stderr
    );
    for (kind, _, line) in &lines {
        let pid_and_tid = line.contains(" pid ") && line.contains(" tid ");
        assert!(pid_and_tid, "{line}");
        assert_eq!(*kind == "alloc", line.contains(" from "), "{line}");
    }
    assert_eq!(run.counter("trace_lost"), 0, "{:#}", run.report);
    assert_eq!(run.counter("allocs"), 4, "{:#}", run.report);
}

#[test]
fn sampling_records_one_allocation_in_n_of_each_thread() {
    if !privileged("sampling_records_one_allocation_in_n_of_each_thread") {
        return;
    }
    let run = memleak(&["exec", "--sample-rate", "10", "--", fixture(), "thousand"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &run.report;
    // Any 10 consecutive allocations of a thread record one: exactly 100 of the 1000.
    assert_eq!(
        by_function(report),
        BTreeMap::from([("leak_thousand".to_owned(), (10_000, 100))]),
        "{report:#}"
    );
    assert_eq!(report["sampled_one_in"], 10, "{report:#}");
    assert_eq!(run.counter("allocs"), 100, "{report:#}");
    assert_eq!(run.counter("sampled_out"), 900, "{report:#}");
    let why = report["at_exit"].as_str().unwrap_or_default();
    assert!(why.starts_with("--sample-rate 10: "), "{report:#}");
    assert_eq!(report["incomplete"], serde_json::json!([]), "{report:#}");
}

#[test]
fn combined_totals_equal_the_per_allocation_figures() {
    if !privileged("combined_totals_equal_the_per_allocation_figures") {
        return;
    }
    let modes = ["thousand", "chain", "keep-static", "realloc", "munmap"];
    let mut per_allocation = vec!["exec", "--", fixture()];
    per_allocation.extend(modes);
    let mut combined = vec!["exec", "--combined-only", "--", fixture()];
    combined.extend(modes);
    let (per_allocation, combined) = (memleak(&per_allocation), memleak(&combined));
    assert_eq!(combined.code, 0, "{}", combined.stderr);
    let expected = by_function(&per_allocation.report);
    assert_eq!(
        expected.get("leak_thousand"),
        Some(&(100_000, 1000)),
        "{:#}",
        per_allocation.report
    );
    assert_eq!(by_function(&combined.report), expected);
    for total in ["outstanding_bytes", "outstanding_allocations"] {
        assert_eq!(
            combined.report[total], per_allocation.report[total],
            "{total}: {:#}",
            combined.report
        );
    }
    assert_eq!(combined.report["combined"], true);
    assert_eq!(combined.counter("frees"), per_allocation.counter("frees"));
}

#[test]
fn exec_with_an_interval_reports_while_the_program_runs() {
    if !privileged("exec_with_an_interval_reports_while_the_program_runs") {
        return;
    }
    let run = memleak(&["exec", "--older", "0", "0.5", "--", fixture(), "slow"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports: Vec<Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON report per line"))
        .collect();
    // Three seconds at 0.5 s: five or six reports, at least two before the exit.
    assert!(reports.len() >= 2, "{}", run.stdout);
    for report in &reports {
        assert_eq!(
            by_function(report),
            BTreeMap::from([("leak_then_wait".to_owned(), (30_000, 1))]),
            "{report:#}"
        );
        assert!(report["at_exit"].is_null(), "{report:#}");
    }
    // Then the report at exit, classified.
    assert_eq!(leak_summary(&run)[0], (30_000, 1), "{:#}", run.report);

    let counted = memleak(&["exec", "--older", "0", "0.5", "2", "--", fixture(), "slow"]);
    assert_eq!(
        counted.stdout.lines().count(),
        2,
        "COUNT 2: {}",
        counted.stdout
    );
}

#[test]
fn the_leak_gate_refuses_sampled_and_combined_figures() {
    for (args, flag, command) in [
        (
            &["test", "--sample-rate", "10"][..],
            "--sample-rate",
            "test",
        ),
        (&["test", "--combined-only"][..], "--combined-only", "test"),
        (&["test", "--trace"][..], "--trace", "test"),
        (&["run", "--sample-rate", "10"][..], "--sample-rate", "run"),
        (&["run", "--combined-only"][..], "--combined-only", "run"),
    ] {
        let output = memleak_raw(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "error: {flag} does not apply to `{command}`: its leak gate judges every \
                 allocation of every traced process; use `exec`, `attach` or `kernel`"
            ),
            "{args:?}"
        );
    }
    let output = memleak_raw(&["exec", "--combined-only", "-a", "--", "true"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error: --show-allocs needs each allocation's record; --combined-only keeps totals per \
         stack"
    );
    let output = memleak_raw(&["exec", "--sample-rate", "0", "--", "true"]);
    assert_eq!(output.status.code(), Some(2));
}
