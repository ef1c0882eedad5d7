//! Why each block is lost (fixtures/cycles): a definitely lost stack says what it holds, and
//! lost blocks that only point at each other are named as a cycle, with their sizes, sites and
//! what they look like (`Rc` or `Arc`, by their counts and the function that allocated them);
//! a tree lost through its root is no cycle. The totals are memcheck's.

use memleak_tests::{
    fixture_test_binary, marker_line, memcheck_lost, privileged, test_finished, workspace_root,
};
use serde_json::{Value, json};

/// The cycles of one test's result, as (kind, sizes, site lines).
fn cycles(result: &Value) -> Vec<(String, Vec<u64>, Vec<u64>)> {
    result["cycles"]
        .as_array()
        .expect("cycles")
        .iter()
        .map(|cycle| {
            let blocks = cycle["blocks"].as_array().expect("blocks");
            (
                cycle["kind"].as_str().expect("a kind").to_owned(),
                blocks
                    .iter()
                    .map(|b| b["size"].as_u64().expect("a size"))
                    .collect(),
                blocks
                    .iter()
                    .map(|b| b["site"]["line"].as_u64().expect("a site's line"))
                    .collect(),
            )
        })
        .collect()
}

/// The definitely lost stacks' holdings, largest first.
fn holds(result: &Value) -> Vec<Value> {
    result["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|stack| stack["category"] == "definitely_lost")
        .map(|stack| stack["holds"].clone())
        .collect()
}

#[test]
fn cycles_are_named_with_their_sizes_and_sites_and_a_tree_is_not() {
    if !privileged("cycles_are_named_with_their_sizes_and_sites_and_a_tree_is_not") {
        return;
    }
    let source = workspace_root().join("fixtures/cycles/tests/cycles.rs");
    let rc_node = marker_line(&source, "rc_node");
    let run = test_finished("cycles", &[], &[]);
    assert_eq!(run.code, Some(100), "{run:#?}");
    assert_eq!(run.tests.len(), 6, "{run:#?}");

    let two = run.of("rc_cycle_of_two");
    assert_eq!(
        cycles(two),
        [("rc".into(), vec![1032, 1032], vec![rc_node; 2])]
    );
    assert_eq!(two["cycles"][0]["bytes"], 2064, "{two:#}");
    assert_eq!(
        two["cycles"][0]["blocks"][0]["counts"],
        json!([1, 1]),
        "{two:#}"
    );
    assert_eq!(holds(two), [json!({"bytes": 1032, "blocks": 1})]);

    let three = run.of("rc_cycle_of_three");
    assert_eq!(
        cycles(three),
        [("rc".into(), vec![1032; 3], vec![rc_node; 3])]
    );
    assert_eq!(holds(three), [json!({"bytes": 2064, "blocks": 2})]);

    // Made in one thread, linked in another: an Arc cycle, each 2032 bytes (counts, the
    // Mutex's state and poison flag, the link, 2000 bytes of payload).
    let arc = run.of("arc_cycle_across_threads");
    let [(kind, sizes, _)] = cycles(arc).try_into().expect("one cycle");
    assert_eq!((kind.as_str(), sizes), ("arc", vec![2032, 2032]), "{arc:#}");
    assert_eq!(
        arc["cycles"][0]["blocks"]
            .as_array()
            .expect("blocks")
            .iter()
            .filter(|block| block["site"]["line"] == marker_line(&source, "arc_node"))
            .count(),
        1,
        "one of them allocated in the spawned thread: {arc:#}"
    );

    // The 500-byte box the cycle holds is lost through it, but is not part of it.
    let holding = run.of("rc_cycle_holding_a_block");
    let [(kind, sizes, _)] = cycles(holding).try_into().expect("one cycle");
    assert_eq!((kind.as_str(), sizes), ("rc", vec![40, 40]), "{holding:#}");
    assert_eq!(holds(holding), [json!({"bytes": 540, "blocks": 2})]);

    // A Box<Tree> (its Vec, 24 bytes) holding the Vec's buffer and three boxes: no cycle.
    let tree = run.of("tree_lost_through_its_root");
    assert_eq!(tree["cycles"], json!([]), "{tree:#}");
    assert_eq!(holds(tree), [json!({"bytes": 924, "blocks": 4})]);
    let root = &tree["stacks"][0];
    assert_eq!(root["category"], "definitely_lost", "{tree:#}");
    assert_eq!(root["bytes"], 24, "{tree:#}");
    assert!(
        root["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .any(|frame| frame["line"] == marker_line(&source, "tree_root")),
        "{tree:#}"
    );

    // A forked child's cycle is named in its own verdict; the test lost nothing itself.
    let forked = run.of("a_forked_child_makes_a_cycle");
    assert_eq!(forked["result"], "failed", "{forked:#}");
    assert_eq!(forked["lost"]["bytes"], 0, "{forked:#}");
    assert_eq!(forked["cycles"], json!([]), "{forked:#}");
    let child = &forked["children"][0];
    assert_eq!(
        child["lost"],
        json!({"bytes": 2064, "blocks": 2}),
        "{forked:#}"
    );
    assert_eq!(
        cycles(child),
        [("rc".into(), vec![1032, 1032], vec![rc_node; 2])]
    );

    // The totals stay memcheck's, test by test.
    let binary = fixture_test_binary("cycles", "cycles");
    for test in [
        "rc_cycle_of_two",
        "rc_cycle_of_three",
        "arc_cycle_across_threads",
        "rc_cycle_holding_a_block",
        "tree_lost_through_its_root",
    ] {
        let [definite, indirect] =
            memcheck_lost(&binary, &["--exact", test, "--test-threads", "1"]);
        let summary = &run.of(test)["leak_summary"];
        let ours = |what: &str| {
            (
                summary[what]["bytes"].as_u64().expect("bytes"),
                summary[what]["blocks"].as_u64().expect("blocks"),
            )
        };
        assert_eq!(
            (ours("definitely_lost"), ours("indirectly_lost")),
            (definite, indirect),
            "{test}: ours against memcheck's"
        );
    }
}

#[test]
fn the_text_report_names_the_cycle_and_what_a_stack_holds() {
    if !privileged("the_text_report_names_the_cycle_and_what_a_stack_holds") {
        return;
    }
    let output = std::process::Command::new(memleak_tests::cargo_memleak())
        .args(["memleak", "test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/cycles/Cargo.toml"))
        .args(["--", "rc_cycle_of_two"])
        .output()
        .expect("cargo memleak runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(100), "{stdout}");
    let line = marker_line(
        &workspace_root().join("fixtures/cycles/tests/cycles.rs"),
        "rc_node",
    );
    assert!(
        stdout.contains(&format!(
            "\ta cycle of 2 lost blocks (1032 + 1032 bytes) allocated at cycles::rc_node \
             (tests/cycles.rs:{line}): likely an Rc cycle (strong and weak counts 1 and 1, 1 \
             and 1)\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "\t\tholding 1032 bytes more in 1 blocks, lost only through these (indirectly lost)\n"
        ),
        "{stdout}"
    );
}

#[test]
fn run_names_a_programs_cycle_after_its_summary() {
    if !privileged("run_names_a_programs_cycle_after_its_summary") {
        return;
    }
    let manifest = workspace_root().join("fixtures/cycles/Cargo.toml");
    let run =
        memleak_tests::memleak(&["run", "--manifest-path", manifest.to_str().expect("UTF-8")]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    let [(kind, sizes, lines)] = cycles(&run.report).try_into().expect("one cycle");
    let line = marker_line(
        &workspace_root().join("fixtures/cycles/src/bin/rc_pair.rs"),
        "rc_pair",
    );
    assert_eq!(
        (kind.as_str(), sizes, lines),
        ("rc", vec![3032; 2], vec![line; 2])
    );

    let text = memleak_tests::memleak_raw(&[
        "memleak",
        "run",
        "--manifest-path",
        manifest.to_str().expect("UTF-8"),
    ]);
    // The report goes to stderr, as BCC's does.
    let stderr = String::from_utf8_lossy(&text.stderr);
    let summary = stderr.find("memleak: `").expect("the summary line");
    let named = stderr
        .find("memleak: a cycle of 2 lost blocks (3032 + 3032 bytes) allocated at ")
        .expect("the cycle's line");
    assert!(summary < named, "{stderr}");
}
