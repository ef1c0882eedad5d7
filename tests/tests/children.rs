//! Following the processes a test starts (fixtures/children): the crate's own binary through
//! `CARGO_BIN_EXE_*` and a fork of the test are traced from their first instruction, scanned
//! at their own exit and judged with the test, by executable; a third-party program is not
//! followed by default; a child killed or still running is a note, never a gap.

use memleak_tests::{marker_line, memleak, privileged, test_finished, workspace_root};
use serde_json::Value;

/// The one child verdict of `result`, for `executable`.
fn child<'a>(result: &'a Value, executable: &str) -> &'a Value {
    let children = result["children"].as_array().expect("children");
    assert_eq!(children.len(), 1, "{result:#}");
    assert_eq!(children[0]["executable"], executable, "{result:#}");
    &children[0]
}

/// The line of the frame named `function` in the child's first lost stack.
fn leaking_line(child: &Value, function: &str) -> Value {
    child["stacks"][0]["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|frame| frame["symbol"] == function)
        .map(|frame| frame["line"].clone())
        .unwrap_or_else(|| panic!("{function} in {child:#}"))
}

#[test]
fn a_test_fails_with_its_childrens_leaks_and_passes_with_clean_ones() {
    if !privileged("a_test_fails_with_its_childrens_leaks_and_passes_with_clean_ones") {
        return;
    }
    let run = test_finished("children", &[], &[]);
    assert_eq!(run.code, Some(100), "{run:#?}");
    assert_eq!(run.tests.len(), 8);
    let main = workspace_root().join("fixtures/children/src/main.rs");
    let tests = workspace_root().join("fixtures/children/tests/children.rs");

    // The crate's binary, through CARGO_BIN_EXE_children, leaking 30000 bytes.
    let leaking = run.of("runs_a_leaking_child");
    assert_eq!(leaking["result"], "failed", "{leaking:#}");
    assert_eq!(
        leaking["lost"],
        serde_json::json!({"bytes": 0, "blocks": 0})
    );
    let verdict = child(leaking, "children");
    assert_eq!(
        verdict["lost"],
        serde_json::json!({"bytes": 30000, "blocks": 1})
    );
    assert_eq!(verdict["processes"][0]["fate"], "scanned", "{verdict:#}");
    assert!(
        verdict["processes"][0]["command"]
            .as_str()
            .is_some_and(|command| command.ends_with("/children leak")),
        "{verdict:#}"
    );
    assert_eq!(
        leaking_line(verdict, "children::leak_in_child"),
        marker_line(&main, "leak_in_child")
    );
    assert_eq!(
        leaking["failure_reasons"][0]["kind"], "child_over_budget",
        "{leaking:#}"
    );
    assert_eq!(
        leaking["failures"][0],
        "its child processes running children: lost 30000 bytes in 1 blocks, over its budget \
         of 0 bytes in 0 blocks"
    );

    // A fork of the test itself: keyed by the test binary's name without cargo's hash.
    let forked = run.of("forks_a_leaking_child");
    assert_eq!(forked["result"], "failed", "{forked:#}");
    let verdict = child(forked, "children");
    assert_eq!(
        verdict["lost"],
        serde_json::json!({"bytes": 20000, "blocks": 1})
    );
    assert_eq!(
        leaking_line(verdict, "children::leak_in_fork"),
        marker_line(&tests, "leak_in_fork")
    );

    // Clean children, a third-party program, a child left running and a child killed pass,
    // completely traced.
    for test in [
        "runs_a_clean_child",
        "runs_a_third_party_program",
        "leaves_a_child_running",
        "kills_its_child",
    ] {
        let passed = run.of(test);
        assert_eq!(passed["result"], "ok", "{passed:#}");
        assert_eq!(passed["incomplete"], serde_json::json!([]), "{passed:#}");
    }
    // A fork that allocates, then execs the crate's binary: followed, traced from its fork,
    // what it allocated before the exec gone with the memory the exec replaced.
    let forked_and_execed = run.of("forks_and_execs_the_crates_binary");
    assert_eq!(forked_and_execed["result"], "ok", "{forked_and_execed:#}");
    let verdict = child(forked_and_execed, "children");
    assert_eq!(
        verdict["lost"],
        serde_json::json!({"bytes": 0, "blocks": 0})
    );
    assert_eq!(verdict["processes"][0]["fate"], "scanned", "{verdict:#}");
    // Children let go at their exec: `sh` and `true` vfork'd by Command (never given links),
    // `true` forked by hand (traced until its exec, since a fork may allocate first).
    for (test, count, traced_until_exec) in [
        ("runs_a_third_party_program", 1, 0),
        ("forks_and_execs_a_third_party_program", 1, 1),
        ("forks_and_execs_the_crates_binary", 0, 0),
        ("runs_a_clean_child", 0, 0),
    ] {
        let result = run.of(test);
        assert_eq!(result["result"], "ok", "{result:#}");
        assert_eq!(
            result["unfollowed_children"],
            serde_json::json!({"count": count, "traced_until_exec": traced_until_exec}),
            "{test}"
        );
    }
    assert_eq!(
        run.of("forks_and_execs_a_third_party_program")["children"],
        serde_json::json!([])
    );
    let clean = child(run.of("runs_a_clean_child"), "children");
    assert_eq!(clean["lost"], serde_json::json!({"bytes": 0, "blocks": 0}));
    assert_eq!(clean["processes"][0]["fate"], "scanned");
    assert_eq!(
        run.of("runs_a_third_party_program")["children"],
        serde_json::json!([]),
        "sh is not one of the workspace's targets"
    );
    let running = child(run.of("leaves_a_child_running"), "children");
    assert_eq!(
        running["processes"][0]["fate"], "still_running",
        "{running:#}"
    );
    // nextest's LEAK: the child outlived the test, was reported and killed with its group.
    assert_eq!(run.of("leaves_a_child_running")["left_processes"], true);
    for test in ["kills_its_child", "runs_a_clean_child"] {
        assert_eq!(run.of(test)["left_processes"], false, "{test}");
    }
    let killed = child(run.of("kills_its_child"), "children");
    let fate = &killed["processes"][0];
    assert!(
        fate["fate"] == "killed" || fate["exit"]["signal"] == "SIGKILL",
        "{killed:#}"
    );
}

#[test]
fn follow_children_none_sees_the_test_alone_and_bless_budgets_each_executable() {
    if !privileged("follow_children_none_sees_the_test_alone_and_bless_budgets_each_executable") {
        return;
    }
    let unfollowed = test_finished("children", &["--follow-children", "none"], &[]);
    assert_eq!(unfollowed.code, Some(0), "{unfollowed:#?}");
    assert!(
        unfollowed
            .tests
            .iter()
            .all(|result| result["children"] == serde_json::json!([])),
        "{unfollowed:#?}"
    );

    let dir = std::env::temp_dir().join(format!("memleak-children-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let baseline = dir.join("memleak-baseline.json");
    let baseline_arg = baseline.to_str().expect("UTF-8");
    let blessing = test_finished("children", &["--baseline", baseline_arg, "--bless"], &[]);
    assert_eq!(blessing.code, Some(0), "{blessing:#?}");
    let blessed: Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).expect("the baseline written"))
            .expect("the baseline parses");
    let tests = &blessed["tests"]["children::children"];
    assert_eq!(
        tests["runs_a_leaking_child"]["children"]["children"]["lost"],
        serde_json::json!({"bytes": 30000, "blocks": 1}),
        "{blessed:#}"
    );
    assert_eq!(
        tests["forks_a_leaking_child"]["children"]["children"]["lost"],
        serde_json::json!({"bytes": 20000, "blocks": 1}),
        "{blessed:#}"
    );
    assert_eq!(
        tests.as_object().map(|tests| tests.len()),
        Some(2),
        "{blessed:#}"
    );
    let rerun = test_finished("children", &["--baseline", baseline_arg], &[]);
    assert_eq!(
        rerun.code,
        Some(0),
        "within the blessed budgets: {rerun:#?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exec_reports_each_followed_child() {
    if !privileged("exec_reports_each_followed_child") {
        return;
    }
    // The test binary, built by the runs above or here.
    test_finished(
        "children",
        &["--follow-children", "none", "runs_a_leaking_child"],
        &[],
    );
    let deps = workspace_root().join("fixtures/children/target/memleak/debug/deps");
    let binary = std::fs::read_dir(&deps)
        .expect("the fixture was built")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|path| {
            let named = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("children-") && !name.contains('.'));
            // deps/ holds the `children` bin too, under the same prefix: the test binary is
            // the one that lists the test.
            named
                && std::process::Command::new(path)
                    .args(["--list", "--format", "terse"])
                    .output()
                    .is_ok_and(|listed| {
                        String::from_utf8_lossy(&listed.stdout)
                            .lines()
                            .any(|line| line == "runs_a_leaking_child: test")
                    })
        })
        .expect("the children test binary");
    let binary = binary.to_str().expect("UTF-8").to_owned();
    let run = memleak(&[
        "exec",
        "--follow-children",
        "all",
        "--",
        &binary,
        "--exact",
        "runs_a_leaking_child",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let children = run.report["children"].as_array().expect("children");
    assert_eq!(children.len(), 1, "{}", run.report);
    assert_eq!(children[0]["fate"], "scanned");
    assert_eq!(
        children[0]["report"]["leak_summary"]["definitely_lost"],
        serde_json::json!({"bytes": 30000, "blocks": 1})
    );
    assert!(
        run.stderr.is_empty() || !run.stderr.contains("INCOMPLETE"),
        "{}",
        run.stderr
    );

    // Without --follow-children, exec traces the program alone.
    let run = memleak(&["exec", "--", &binary, "--exact", "runs_a_leaking_child"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.report["children"], Value::Null, "{}", run.report);
}
