//! Faults a test can cause (fixtures/faults): a process that makes itself undumpable, one that
//! closes every descriptor it inherited, and one whose 200 forked children exit at once are
//! traced right: each test's own leak is found to the byte, nothing else is lost, no run is
//! incomplete, and every child is scanned at its exit.

use std::process::Command;

use memleak_tests::{cargo_memleak, privileged, workspace_root};
use serde_json::Value;

#[test]
fn faults_a_test_causes_are_traced_right() {
    if !privileged("faults_a_test_causes_are_traced_right") {
        return;
    }
    let output = Command::new(cargo_memleak())
        .args(["test", "--message-format", "json", "--manifest-path"])
        .arg(workspace_root().join("fixtures/faults/Cargo.toml"))
        .output()
        .expect("cargo memleak test runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let finished: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["event"] == "test-finished")
        .collect();
    let result = |test: &str| {
        finished
            .iter()
            .find(|result| result["test"] == test)
            .unwrap_or_else(|| panic!("{test} ran: {finished:#?}\n{stderr}"))
    };
    // Two leak by design: the run fails on them, and only on them.
    assert_eq!(output.status.code(), Some(100), "{stderr}");
    assert_eq!(finished.len(), 3, "{stderr}");
    for (test, bytes, outcome) in [
        ("undumpable_then_leaks", 3001, "failed"),
        ("closes_every_descriptor_then_leaks", 4002, "failed"),
        ("two_hundred_children_exit_at_once", 0, "ok"),
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
