//! Faults a test can cause (fixtures/faults): a process that makes itself undumpable, one that
//! closes every descriptor it inherited, and one whose 200 forked children exit at once are
//! traced right: each test's own leak is found to the byte, nothing else is lost, no run is
//! incomplete, and every child is scanned at its exit. One with more distinct stacks than the
//! stack maps hold is incomplete, with the count and the fix, never a pass.

use std::process::Command;

use memleak_tests::{cargo_memleak, privileged, workspace_root};
use serde_json::Value;

/// `cargo memleak test` on the fixture with `args`: its exit code, test-finished events and
/// standard error.
fn run(args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let output = Command::new(cargo_memleak())
        .args(["test", "--message-format", "json", "--manifest-path"])
        .arg(workspace_root().join("fixtures/faults/Cargo.toml"))
        .args(args)
        .output()
        .expect("cargo memleak test runs");
    let finished = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["event"] == "test-finished")
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), finished, stderr)
}

#[test]
fn faults_a_test_causes_are_traced_right() {
    if !privileged("faults_a_test_causes_are_traced_right") {
        return;
    }
    let (code, finished, stderr) = run(&[]);
    let result = |test: &str| {
        finished
            .iter()
            .find(|result| result["test"] == test)
            .unwrap_or_else(|| panic!("{test} ran: {finished:#?}\n{stderr}"))
    };
    // Two leak by design: the run fails on them, and only on them.
    assert_eq!(code, Some(100), "{stderr}");
    assert_eq!(finished.len(), 4, "{stderr}");
    for (test, bytes, outcome) in [
        ("undumpable_then_leaks", 3001, "failed"),
        ("closes_every_descriptor_then_leaks", 4002, "failed"),
        ("two_hundred_children_exit_at_once", 0, "ok"),
        // Its own stack map full, the shared one takes the rest.
        ("eight_thousand_distinct_stacks", 0, "ok"),
    ] {
        let result = result(test);
        assert_eq!(result["result"], outcome, "{test}: {result:#}");
        assert_eq!(result["lost"]["bytes"], bytes, "{test}: {result:#}");
        assert_eq!(
            result["lost"]["blocks"],
            u64::from(bytes > 0),
            "{test}: {result:#}"
        );
        assert_eq!(
            result["incomplete"],
            serde_json::json!([]),
            "{test}: {result:#}"
        );
        assert_eq!(
            result["exit"]["code"], 0,
            "{test} itself passed: {result:#}"
        );
    }

    let children = &result("two_hundred_children_exit_at_once")["children"];
    let processes: Vec<&Value> = children
        .as_array()
        .expect("children")
        .iter()
        .flat_map(|group| group["processes"].as_array().expect("processes"))
        .collect();
    assert_eq!(processes.len(), 200, "{children:#}");
    for process in processes {
        assert_eq!(process["fate"], "scanned", "{process:#}");
        assert_eq!(process["exit"]["code"], 0, "{process:#}");
    }
}

#[test]
fn stacks_the_maps_cannot_hold_make_the_run_incomplete() {
    if !privileged("stacks_the_maps_cannot_hold_make_the_run_incomplete") {
        return;
    }
    let (code, finished, stderr) = run(&["--max-stacks", "64", "--", "eight_thousand"]);
    assert_eq!(code, Some(100), "{stderr}");
    let [result] = finished.as_slice() else {
        panic!("one test ran: {finished:#?}\n{stderr}");
    };
    assert_eq!(result["result"], "failed", "{result:#}");
    assert_eq!(result["lost"]["bytes"], 0, "{result:#}");
    let reasons = result["incomplete_reasons"].as_array().expect("reasons");
    let [reason] = reasons.as_slice() else {
        panic!("one reason: {result:#}");
    };
    assert_eq!(reason["kind"], "dropped", "{result:#}");
    assert_eq!(reason["counter"], "stack_map_full", "{result:#}");
    // 8192 distinct stacks of the test's own, past a process's 4096 and the shared 64.
    let dropped = reason["n"].as_u64().expect("a count");
    assert!((8192 - 4096 - 64..=8192).contains(&dropped), "{result:#}");
    assert!(
        result["failures"][0]
            .as_str()
            .is_some_and(|failure| failure.contains("raise --max-stacks")),
        "{result:#}"
    );
}
