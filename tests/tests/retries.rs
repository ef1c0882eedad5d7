//! `--retries` (fixtures/flaky): a test that failed by itself runs again and passes as flaky,
//! in every reporter; a test that always fails fails after every attempt; a leak verdict is
//! not retried unless `--retries-leaks` asks for it.

use std::process::Command;

use memleak_tests::{cargo_memleak, privileged, scratch, workspace_root};
use serde_json::{Value, json};

/// `cargo memleak test` on the fixture with `args`, the tests' markers in a fresh directory:
/// its exit code, stdout and the test-finished and run-finished events (JSON runs).
fn run(name: &str, args: &[&str]) -> (Option<i32>, String, Vec<Value>) {
    let state = scratch(name);
    let output = Command::new(cargo_memleak())
        .args(["test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/flaky/Cargo.toml"))
        .args(args)
        .env("FLAKY_STATE", &state)
        .output()
        .expect("cargo memleak test runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let events = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["event"] == "test-finished" || event["event"] == "run-finished")
        .collect();
    (output.status.code(), stdout, events)
}

fn finished<'a>(events: &'a [Value], test: &str) -> &'a Value {
    events
        .iter()
        .find(|event| event["test"] == test)
        .unwrap_or_else(|| panic!("{test} finished: {events:#?}"))
}

fn run_finished(events: &[Value]) -> &Value {
    events
        .iter()
        .find(|event| event["event"] == "run-finished")
        .expect("run-finished")
}

/// The failure kinds of a result or an attempt.
fn kinds(value: &Value) -> Vec<&str> {
    value["failure_reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|reason| reason["kind"].as_str())
        .collect()
}

#[test]
fn a_test_that_fails_by_itself_is_retried_and_passes_as_flaky() {
    if !privileged("a_test_that_fails_by_itself_is_retried_and_passes_as_flaky") {
        return;
    }
    let (code, _, events) = run(
        "retries-json",
        &["--message-format", "json", "--retries", "2"],
    );
    // always_fails and leaks_once_then_passes fail the run.
    assert_eq!(code, Some(100), "{events:#?}");

    let flaky = finished(&events, "fails_once_then_passes");
    assert_eq!(flaky["result"], "ok", "{flaky:#}");
    assert_eq!(flaky["flaky"], true);
    assert_eq!(flaky["attempts"], 2);
    let earlier = flaky["earlier_attempts"]
        .as_array()
        .expect("earlier attempts");
    assert_eq!(earlier.len(), 1, "{flaky:#}");
    assert_eq!(kinds(&earlier[0]), ["test_failed"], "{flaky:#}");
    assert_eq!(
        earlier[0]["exit"],
        json!({"kind": "exited", "code": 101}),
        "{flaky:#}"
    );
    assert!(
        earlier[0]["output"]
            .as_str()
            .is_some_and(|output| output.contains("the first run fails")),
        "the first attempt's output is kept: {flaky:#}"
    );

    // Every attempt fails: three runs, the last one's failure, the two before it kept.
    let failing = finished(&events, "always_fails");
    assert_eq!(failing["result"], "failed", "{failing:#}");
    assert_eq!(failing["flaky"], false);
    assert_eq!(failing["attempts"], 3);
    assert_eq!(
        failing["earlier_attempts"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(kinds(failing), ["test_failed"]);

    // A leak verdict is not retried: one attempt, failed with the 4096 bytes.
    let leaking = finished(&events, "leaks_once_then_passes");
    assert_eq!(leaking["result"], "failed", "{leaking:#}");
    assert_eq!(leaking["attempts"], 1);
    assert_eq!(
        leaking["lost"],
        json!({"bytes": 4096, "blocks": 1}),
        "{leaking:#}"
    );

    let clean = finished(&events, "passes");
    assert_eq!(
        (clean["attempts"].clone(), clean["flaky"].clone()),
        (json!(1), json!(false))
    );

    let stats = run_finished(&events);
    assert_eq!(
        (
            stats["passed"].clone(),
            stats["failed"].clone(),
            stats["flaky"].clone()
        ),
        (json!(2), json!(2), json!(1)),
        "{stats:#}"
    );
}

#[test]
fn without_retries_a_test_runs_once_and_retries_leaks_retries_a_leak() {
    if !privileged("without_retries_a_test_runs_once_and_retries_leaks_retries_a_leak") {
        return;
    }
    let (code, _, events) = run("retries-none", &["--message-format", "json"]);
    assert_eq!(code, Some(100), "{events:#?}");
    let once = finished(&events, "fails_once_then_passes");
    assert_eq!(
        (once["result"].clone(), once["attempts"].clone()),
        (json!("failed"), json!(1))
    );
    assert_eq!(once["earlier_attempts"], json!([]));

    let (code, _, events) = run(
        "retries-leaks",
        &[
            "--message-format",
            "json",
            "--retries",
            "1",
            "--retries-leaks",
            "--",
            "once_then",
        ],
    );
    assert_eq!(code, Some(0), "{events:#?}");
    let leaking = finished(&events, "leaks_once_then_passes");
    assert_eq!(leaking["result"], "ok", "{leaking:#}");
    assert_eq!(
        (leaking["flaky"].clone(), leaking["attempts"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(
        kinds(&leaking["earlier_attempts"][0]),
        ["lost_over_budget"],
        "{leaking:#}"
    );
    assert_eq!(leaking["lost"], json!({"bytes": 0, "blocks": 0}));
    // fails_once_then_passes, selected too, passes on its retry as well.
    assert_eq!(finished(&events, "fails_once_then_passes")["flaky"], true);
    assert_eq!(run_finished(&events)["flaky"], 2);
}

#[test]
fn a_flaky_test_reads_as_such_in_libtests_lines_and_in_junit() {
    if !privileged("a_flaky_test_reads_as_such_in_libtests_lines_and_in_junit") {
        return;
    }
    let junit = scratch("retries-junit").join("junit.xml");
    let (code, stdout, _) = run(
        "retries-human",
        &[
            "--retries",
            "2",
            "--junit",
            junit.to_str().expect("a UTF-8 path"),
            "--",
            "fails",
        ],
    );
    assert_eq!(code, Some(100), "{stdout}");
    let line = |test: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with("test ") && line.contains(test))
            .unwrap_or_else(|| panic!("a line for {test}: {stdout}"))
            .to_owned()
    };
    assert!(
        line("fails_once_then_passes").ends_with("... ok (flaky: passed on attempt 2)"),
        "{stdout}"
    );
    assert!(
        line("always_fails").ends_with("... FAILED (3 attempts)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "flaky (passed on a retry):\n    [flaky::flaky] fails_once_then_passes: passed on \
             attempt 2; attempt 1: the test failed: exit code 101\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("test result: FAILED. 1 passed; 1 failed;"),
        "{stdout}"
    );

    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    let case = |test: &str| -> String {
        let start = xml
            .find(&format!("<testcase name=\"{test}\""))
            .unwrap_or_else(|| panic!("{test} in {xml}"));
        let end = start + xml[start..].find("</testcase>").expect("its end");
        xml[start..end].to_owned()
    };
    let flaky = case("fails_once_then_passes");
    assert_eq!(flaky.matches("<flakyFailure").count(), 1, "{flaky}");
    assert!(!flaky.contains("<failure"), "{flaky}");
    let failing = case("always_fails");
    assert_eq!(failing.matches("<rerunFailure").count(), 2, "{failing}");
    assert_eq!(failing.matches("<failure").count(), 1, "{failing}");
}
