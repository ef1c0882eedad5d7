//! Faults a test can cause (fixtures/faults): a process that makes itself undumpable, one that
//! closes every descriptor it inherited, one whose 200 forked children exit at once and one
//! that runs a setuid program are traced right: each test's own leak is found to the byte,
//! nothing else is lost, no run is incomplete, and every child is scanned at its exit. One with
//! more distinct stacks than the stack maps hold is incomplete, with the count and the fix,
//! never a pass. A fork that a test ptraces (its own `PTRACE_TRACEME`, or the test's
//! `PTRACE_ATTACH`) is handed over to the test before the call, which then succeeds as it would
//! untraced: the test passes by itself, with its own leak found.

use memleak_tests::{marker_line, privileged, test_finished, workspace_root};
use serde_json::Value;

#[test]
fn faults_a_test_causes_are_traced_right() {
    if !privileged("faults_a_test_causes_are_traced_right") {
        return;
    }
    let run = test_finished("faults", &[], &[]);
    // Four leak by design: the run fails on them, and only on them.
    assert_eq!(run.code, Some(100), "{run:#?}");
    assert_eq!(run.tests.len(), 7, "{run:#?}");
    for (test, bytes, outcome) in [
        ("undumpable_then_leaks", 3001, "failed"),
        ("closes_every_descriptor_then_leaks", 4002, "failed"),
        ("two_hundred_children_exit_at_once", 0, "ok"),
        // Its own stack map full, the shared one takes the rest.
        ("eight_thousand_distinct_stacks", 0, "ok"),
        // The setuid program is not the workspace's: let go at its exec.
        ("runs_a_setuid_program", 0, "ok"),
        // Its fork handed over to it at its PTRACE_TRACEME, or at its PTRACE_ATTACH.
        ("ptraces_its_own_child", 6006, "failed"),
        ("attaches_to_its_own_child", 7007, "failed"),
    ] {
        let result = run.of(test);
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

    let children = &run.of("two_hundred_children_exit_at_once")["children"];
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
    let run = test_finished(
        "faults",
        &["--max-stacks", "64", "--", "eight_thousand"],
        &[],
    );
    assert_eq!(run.code, Some(100), "{run:#?}");
    let [result] = run.tests.as_slice() else {
        panic!("one test ran: {run:#?}");
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

#[test]
fn a_setuid_program_is_traced_under_its_new_ids() {
    if !privileged("a_setuid_program_is_traced_under_its_new_ids") {
        return;
    }
    let run = test_finished(
        "faults",
        &["--follow-children", "all", "--", "runs_a_setuid_program"],
        &[],
    );
    assert_eq!(run.code, Some(100), "{run:#?}");
    let result = run.of("runs_a_setuid_program");
    // The test itself passed: the program ran with euid 65534, traced.
    assert_eq!(result["exit"]["code"], 0, "{result:#}");
    assert_eq!(result["lost"]["bytes"], 0, "{result:#}");
    assert_eq!(result["incomplete"], serde_json::json!([]), "{result:#}");
    let children = result["children"].as_array().expect("children");
    let [child] = children.as_slice() else {
        panic!("one child executable: {result:#}");
    };
    assert_eq!(child["executable"], "setuid-faults", "{result:#}");
    assert_eq!(
        child["lost"],
        serde_json::json!({"bytes": 5005, "blocks": 1}),
        "{result:#}"
    );
    assert_eq!(child["processes"][0]["fate"], "scanned", "{result:#}");
    assert_eq!(child["processes"][0]["exit"]["code"], 0, "{result:#}");
    let line = child["stacks"][0]["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|frame| frame["symbol"] == "faults::leak_as_another_user")
        .map(|frame| frame["line"].clone());
    let main = workspace_root().join("fixtures/faults/src/main.rs");
    assert_eq!(
        line,
        Some(marker_line(&main, "leak_as_another_user").into()),
        "{child:#}"
    );
}

#[test]
fn a_fork_the_test_ptraces_is_handed_over_to_it() {
    if !privileged("a_fork_the_test_ptraces_is_handed_over_to_it") {
        return;
    }
    let run = test_finished("faults", &["--", "its_own_child"], &[]);
    assert_eq!(run.code, Some(100), "{run:#?}");
    assert_eq!(run.tests.len(), 2, "{run:#?}");
    for (test, bytes) in [
        ("ptraces_its_own_child", 6006),
        ("attaches_to_its_own_child", 7007),
    ] {
        let result = run.of(test);
        // The test itself passed, its ptrace calls and their stops all as untraced.
        assert_eq!(result["exit"]["code"], 0, "{test}: {result:#}");
        assert_eq!(
            result["failures"],
            serde_json::json!([format!(
                "lost {bytes} bytes in 1 blocks, over its budget of 0 bytes in 0 blocks"
            )]),
            "{test}: {result:#}"
        );
        assert_eq!(
            result["incomplete"],
            serde_json::json!([]),
            "{test}: {result:#}"
        );
        let children = result["children"].as_array().expect("children");
        let [child] = children.as_slice() else {
            panic!("{test}: one child executable: {result:#}");
        };
        let [process] = child["processes"].as_array().expect("processes").as_slice() else {
            panic!("{test}: one child: {result:#}");
        };
        assert_eq!(process["fate"], "handed_over", "{test}: {result:#}");
        assert_eq!(child["lost"]["bytes"], 0, "{test}: {result:#}");
    }
}
