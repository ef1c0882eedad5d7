//! `cargo memleak test` on the fixture workspace (fixtures/workspace): every test in its own
//! traced process, judged against a baseline. `EXPECTED` is the table of outcomes; the tests
//! check every verdict and figure against it, the exit codes, JUnit, JSON, `--bless`, stale
//! entries, suppressions, malformed files and filters.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use memleak_tests::{cargo_memleak, privileged, scratch, workspace_root};
use serde_json::Value;

/// How a test ends under `cargo memleak test` with no budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Passes: the test passes and loses nothing.
    Ok,
    /// Passes as a test, fails the leak gate.
    Leaks,
    /// The test itself fails (exit code 101).
    Fails,
    /// Killed by SIGABRT.
    Aborts,
    /// Killed by the timeout.
    TimesOut,
}

use Verdict::*;

/// (binary id, test, verdict, lost bytes, lost blocks) with `--include-ignored`.
const EXPECTED: &[(&str, &str, Verdict, u64, u64)] = &[
    ("alpha", "tests::leaks_in_a_unit_test", Leaks, 2048, 1),
    ("alpha", "tests::sums_without_leaking", Ok, 0, 0),
    ("alpha::gate", "adds_numbers", Ok, 0, 0),
    ("alpha::gate", "fills_statics", Ok, 0, 0),
    ("alpha::gate", "leaks_a_vec", Leaks, 4000, 1),
    ("alpha::gate", "leaks_an_rc_cycle", Leaks, 2064, 2),
    ("alpha::gate", "panics_as_expected", Ok, 0, 0),
    ("alpha::gate", "prints", Ok, 0, 0),
    ("alpha::gate", "spawns_threads", Ok, 0, 0),
    ("beta", "tests::aborts", Aborts, 0, 0),
    ("beta", "tests::hangs", TimesOut, 0, 0),
    ("beta", "tests::ignored_leak", Leaks, 512, 1),
    ("beta", "tests::panics", Fails, 0, 0),
    ("beta::bin/beta", "tests::runs_in_the_package_dir", Ok, 0, 0),
    ("beta::env", "sees_cargo_env", Ok, 0, 0),
];

const TIMEOUT: &str = "3";

fn manifest() -> PathBuf {
    workspace_root().join("fixtures/workspace/Cargo.toml")
}

/// An empty baseline (no budgets) in `dir`: an explicit `--baseline` must exist.
fn no_budgets(dir: &Path) -> PathBuf {
    let path = dir.join("none.json");
    std::fs::write(&path, "{ \"version\": 1, \"tests\": {} }\n").expect("baseline written");
    path
}

#[derive(Debug)]
struct TestRun {
    code: i32,
    stdout: String,
    stderr: String,
}

impl TestRun {
    /// The JSON events (with `--message-format json`).
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
            .collect()
    }

    /// `test-finished` events by (binary id, test).
    fn finished(&self) -> BTreeMap<(String, String), Value> {
        self.events()
            .into_iter()
            .filter(|event| event["event"] == "test-finished")
            .map(|event| {
                let key = (
                    event["binary_id"].as_str().unwrap_or_default().to_owned(),
                    event["test"].as_str().unwrap_or_default().to_owned(),
                );
                (key, event)
            })
            .collect()
    }
}

/// `cargo memleak test --manifest-path fixtures/workspace/Cargo.toml ARGS`.
fn memleak_test(args: &[&str], env: &[(&str, &str)]) -> TestRun {
    memleak_test_in(&manifest(), args, env)
}

/// `cargo memleak test --manifest-path MANIFEST`, for more arguments.
fn memleak_test_command(manifest: &Path) -> Command {
    let mut command = Command::new(cargo_memleak());
    command
        .args(["memleak", "test", "--manifest-path"])
        .arg(manifest);
    command
}

/// `cargo memleak test --manifest-path MANIFEST ARGS`.
fn memleak_test_in(manifest: &Path, args: &[&str], env: &[(&str, &str)]) -> TestRun {
    let output = memleak_test_command(manifest)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("cargo-memleak runs");
    TestRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The whole workspace, ignored tests included, no budgets, JSON and JUnit: shared.
fn full_run() -> &'static (TestRun, String) {
    static RUN: OnceLock<(TestRun, String)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = scratch("full");
        let junit = dir.join("junit.xml");
        let run = memleak_test(
            &[
                "--workspace",
                "--timeout",
                TIMEOUT,
                "--baseline",
                path_str(&no_budgets(&dir)),
                "--junit",
                path_str(&junit),
                "--message-format",
                "json",
                "--include-ignored",
            ],
            &[],
        );
        let xml = std::fs::read_to_string(&junit).unwrap_or_default();
        (run, xml)
    })
}

#[test]
fn every_test_gets_the_expected_verdict_and_figures() {
    if !privileged("every_test_gets_the_expected_verdict_and_figures") {
        return;
    }
    let (run, _) = full_run();
    assert_eq!(
        run.code, 100,
        "tests failed: exit 100; stderr: {}",
        run.stderr
    );
    let finished = run.finished();
    let names: Vec<_> = finished.keys().cloned().collect();
    let expected: Vec<_> = EXPECTED
        .iter()
        .map(|(binary, test, ..)| (binary.to_string(), test.to_string()))
        .collect();
    assert_eq!(names, expected, "every test ran once");
    for &(binary, test, verdict, bytes, blocks) in EXPECTED {
        let event = &finished[&(binary.to_owned(), test.to_owned())];
        let context = format!("[{binary}] {test}: {event:#}");
        let result = event["result"].as_str().unwrap_or_default();
        assert_eq!(result == "ok", verdict == Ok, "{context}");
        assert_eq!(event["lost"]["bytes"], bytes, "{context}");
        assert_eq!(event["lost"]["blocks"], blocks, "{context}");
        let failures: Vec<&str> = event["failures"]
            .as_array()
            .expect("failures")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let first = failures.first().copied().unwrap_or_default();
        match verdict {
            Ok => assert!(failures.is_empty(), "{context}"),
            Leaks => {
                assert_eq!(
                    failures,
                    [format!(
                        "lost {bytes} bytes in {blocks} blocks, over its budget of 0 bytes in 0 blocks"
                    )],
                    "{context}"
                );
                assert_eq!(
                    event["exit"],
                    serde_json::json!({"kind": "exited", "code": 0})
                );
            }
            Fails => assert_eq!(first, "the test failed: exit code 101", "{context}"),
            Aborts => assert_eq!(first, "the test failed: killed by SIGABRT", "{context}"),
            TimesOut => {
                assert_eq!(
                    first,
                    format!("timed out after {TIMEOUT} s; its process group was killed"),
                    "{context}"
                );
                assert_eq!(event["timed_out"], true);
            }
        }
        if verdict == Leaks {
            assert!(
                !event["stacks"].as_array().expect("stacks").is_empty(),
                "{context}"
            );
        }
    }
    // The captured output of a failed test comes with it.
    let aborted = &finished[&("beta".to_owned(), "tests::aborts".to_owned())];
    assert!(
        aborted["output"]
            .as_str()
            .unwrap_or_default()
            .contains("about to abort"),
        "{aborted:#}"
    );
    let starts = run
        .events()
        .iter()
        .filter(|event| event["event"] == "test-started")
        .count();
    assert_eq!(starts, 15, "a test-started event per test");
    let started = &run.events()[0];
    assert_eq!(started["event"], "run-started");
    assert_eq!(started["tests"], 15, "{started}");
    assert_eq!(
        started["ignored"], 0,
        "--include-ignored runs them: {started}"
    );
    let summary = run.events().pop().expect("events");
    assert_eq!(summary["event"], "run-finished");
    assert_eq!(summary["passed"], 8);
    assert_eq!(summary["failed"], 7);
    assert_eq!(summary["exit_code"], 100);
}

#[test]
fn leaking_tests_show_their_stack_with_file_and_line() {
    if !privileged("leaking_tests_show_their_stack_with_file_and_line") {
        return;
    }
    let (run, _) = full_run();
    let finished = run.finished();
    let event = &finished[&("alpha::gate".to_owned(), "leaks_a_vec".to_owned())];
    let stack = &event["stacks"][0];
    assert_eq!(stack["category"], "definitely_lost");
    assert_eq!(stack["bytes"], 4000);
    let frames = stack["frames"].as_array().expect("frames");
    let leaker = frames
        .iter()
        .find(|frame| frame["symbol"] == "alpha::leak_bytes")
        .unwrap_or_else(|| panic!("alpha::leak_bytes in {stack:#}"));
    let source = workspace_root().join("fixtures/workspace/alpha/src/lib.rs");
    let line = memleak_tests::marker_line(&source, "leak_bytes");
    assert_eq!(leaker["line"], line);
    assert!(
        leaker["file"]
            .as_str()
            .unwrap_or_default()
            .ends_with("alpha/src/lib.rs"),
        "{leaker:#}"
    );
    assert!(
        frames
            .iter()
            .any(|frame| frame["symbol"] == "gate::leaks_a_vec"),
        "the test's own frame: {stack:#}"
    );
}

#[test]
fn junit_has_a_suite_per_binary_and_a_case_per_test() {
    if !privileged("junit_has_a_suite_per_binary_and_a_case_per_test") {
        return;
    }
    let (_, xml) = full_run();
    let document = roxmltree::Document::parse(xml).expect("the JUnit file parses as XML");
    let suites: Vec<_> = document
        .descendants()
        .filter(|node| node.has_tag_name("testsuite"))
        .collect();
    let suite_names: Vec<&str> = suites.iter().filter_map(|s| s.attribute("name")).collect();
    assert_eq!(
        suite_names,
        [
            "alpha",
            "alpha::gate",
            "beta",
            "beta::bin/beta",
            "beta::env"
        ]
    );
    let mut cases = Vec::new();
    for suite in &suites {
        for case in suite
            .children()
            .filter(|node| node.has_tag_name("testcase"))
        {
            let failure = case
                .children()
                .find(|node| node.has_tag_name("failure"))
                .map(|node| node.text().unwrap_or_default().to_owned());
            cases.push((
                suite.attribute("name").unwrap_or_default().to_owned(),
                case.attribute("name").unwrap_or_default().to_owned(),
                failure,
            ));
        }
    }
    assert_eq!(cases.len(), EXPECTED.len());
    for (binary, test, failure) in &cases {
        let &(_, _, verdict, bytes, _) = EXPECTED
            .iter()
            .find(|(b, t, ..)| b == binary && t == test)
            .unwrap_or_else(|| panic!("unexpected case [{binary}] {test}"));
        assert_eq!(failure.is_none(), verdict == Ok, "[{binary}] {test}");
        if verdict == Leaks {
            let text = failure.as_deref().unwrap_or_default();
            assert!(
                text.contains(&format!("lost {bytes} bytes")) && text.contains("from stack"),
                "the leak report is in the failure text: {text}"
            );
        }
    }
}

#[test]
fn libtest_output_lists_each_test_and_the_leaking_stack() {
    if !privileged("libtest_output_lists_each_test_and_the_leaking_stack") {
        return;
    }
    let dir = scratch("human");
    let run = memleak_test(
        &["-p", "alpha", "--baseline", path_str(&no_budgets(&dir))],
        &[],
    );
    assert_eq!(run.code, 100, "{}", run.stderr);
    let line = |test: &str| {
        run.stdout
            .lines()
            .find(|line| line.starts_with("test ") && line.contains(&format!("] {test} ")))
            .unwrap_or_else(|| panic!("a line for {test}: {}", run.stdout))
            .to_owned()
    };
    assert!(
        line("leaks_a_vec").ends_with("FAILED"),
        "{}",
        line("leaks_a_vec")
    );
    assert!(line("adds_numbers").ends_with("ok"));
    assert!(line("leaks_a_vec").starts_with("test [alpha::gate] leaks_a_vec"));
    let failure = run
        .stdout
        .split("---- [alpha::gate] leaks_a_vec ----\n")
        .nth(1)
        .and_then(|rest| rest.split("\n---- ").next())
        .unwrap_or_else(|| panic!("a failure section: {}", run.stdout));
    let line = memleak_tests::marker_line(
        &workspace_root().join("fixtures/workspace/alpha/src/lib.rs"),
        "leak_bytes",
    );
    let test_line = memleak_tests::marker_line(
        &workspace_root().join("fixtures/workspace/alpha/tests/gate.rs"),
        "leaks_a_vec",
    );
    // The stack starts at the user's code, with paths relative to the workspace, no offsets
    // and no binary hashes, and ends above the standard library's FnOnce glue.
    assert!(
        failure.starts_with(&format!(
            "memleak: lost 4000 bytes in 1 blocks, over its budget of 0 bytes in 0 blocks\n\
             \t4000 bytes in 1 allocations from stack (definitely lost)\n\
             \t\talpha::leak_bytes (alpha/src/lib.rs:{line})\n\
             \t\tgate::leaks_a_vec (alpha/tests/gate.rs:{test_line})\n"
        )),
        "{failure}"
    );
    assert!(
        failure.contains(
            " of the standard library and the test harness below; --full-stacks shows them)\n"
        ),
        "{failure}"
    );
    assert!(
        failure
            .lines()
            .filter(|line| !line.starts_with("rerun: "))
            .all(|line| line.chars().count() <= 160),
        "no line over 160 characters but the command to copy: {failure}"
    );
    assert!(
        !failure.contains("+0x") && !failure.contains("/rustc/"),
        "{failure}"
    );
    assert!(
        failure.contains(&format!(
            "rerun: cargo memleak test --manifest-path {} --baseline {} -p alpha --test gate \
             -- --exact leaks_a_vec\n",
            manifest().display(),
            dir.join("none.json").display()
        )),
        "{failure}"
    );
    assert!(
        run.stdout.contains(
            "\nfailures:\n    [alpha] tests::leaks_in_a_unit_test\n    [alpha::gate] leaks_a_vec\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("test result: FAILED. 6 passed; 3 failed; 0 ignored"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.starts_with("\nrunning 9 tests\n"),
        "{}",
        run.stdout
    );

    // --full-stacks: every frame above the harness, with offsets and modules.
    let full = memleak_test(
        &[
            "-p",
            "alpha",
            "--test",
            "gate",
            "--baseline",
            path_str(&dir.join("none.json")),
            "--full-stacks",
            "leaks_a_vec",
        ],
        &[],
    );
    assert_eq!(full.code, 100, "{}", full.stderr);
    assert!(
        full.stdout.contains("alpha::leak_bytes+0x"),
        "{}",
        full.stdout
    );
    assert!(
        full.stdout.contains("alloc::vec::from_elem"),
        "{}",
        full.stdout
    );
    assert!(full.stdout.contains("[gate-"), "{}", full.stdout);
}

#[test]
fn bless_then_pass_until_a_new_leak() {
    if !privileged("bless_then_pass_until_a_new_leak") {
        return;
    }
    let dir = scratch("bless");
    let baseline = dir.join("memleak-baseline.json");
    let base = ["-p", "alpha", "--baseline", path_str(&baseline)];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter()
            .chain(extra)
            .map(|arg| arg.to_string())
            .collect()
    };

    let blessed = memleak_test(&strs(&with(&["--bless"])), &[]);
    assert_eq!(blessed.code, 0, "{}", blessed.stderr);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).expect("written")).expect("JSON");
    assert_eq!(file["version"], 1);
    let budget = |binary: &str, test: &str| file["tests"][binary][test]["lost"].clone();
    assert_eq!(
        budget("alpha::gate", "leaks_a_vec"),
        serde_json::json!({"bytes": 4000, "blocks": 1})
    );
    assert_eq!(
        budget("alpha::gate", "leaks_an_rc_cycle"),
        serde_json::json!({"bytes": 2064, "blocks": 2})
    );
    assert_eq!(
        budget("alpha", "tests::leaks_in_a_unit_test"),
        serde_json::json!({"bytes": 2048, "blocks": 1})
    );
    let budgets: usize = file["tests"]
        .as_object()
        .expect("tests")
        .values()
        .map(|tests| tests.as_object().map_or(0, |t| t.len()))
        .sum();
    assert_eq!(budgets, 3, "only leaking tests get budgets: {file:#}");
    assert_eq!(
        file["tests"]["alpha::gate"]["leaks_a_vec"]["stacks"][0]["frames"][0], "alpha::leak_bytes",
        "stacks are keyed by symbol names"
    );

    let rerun = memleak_test(&strs(&with(&["--message-format", "json"])), &[]);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert!(
        rerun
            .finished()
            .values()
            .all(|event| event["result"] == "ok")
    );

    // A new leak in a test that had none fails that test, and only that one.
    let leaky = memleak_test(
        &strs(&with(&["--message-format", "json"])),
        &[("MEMLEAK_FIXTURE_EXTRA_LEAK", "777")],
    );
    assert_eq!(leaky.code, 100, "{}", leaky.stderr);
    let failed: Vec<_> = leaky
        .finished()
        .into_iter()
        .filter(|(_, event)| event["result"] != "ok")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let ((binary, test), event) = &failed[0];
    assert_eq!(
        (binary.as_str(), test.as_str()),
        ("alpha::gate", "adds_numbers")
    );
    assert_eq!(
        event["lost"],
        serde_json::json!({"bytes": 777, "blocks": 1})
    );
    let after = std::fs::read_to_string(&baseline).expect("still there");
    assert_eq!(
        serde_json::from_str::<Value>(&after).expect("JSON"),
        file,
        "a failed run never writes"
    );
}

#[test]
fn stale_entries_are_reported_and_blessing_drops_them() {
    if !privileged("stale_entries_are_reported_and_blessing_drops_them") {
        return;
    }
    let dir = scratch("stale");
    let baseline = dir.join("memleak-baseline.json");
    std::fs::write(
        &baseline,
        r#"{
  "version": 1,
  "tests": {
    "alpha::gate": {
      "leaks_a_vec": { "lost": { "bytes": 4000, "blocks": 1 } },
      "was_renamed": { "lost": { "bytes": 10, "blocks": 1 } }
    },
    "gone::it": { "old": { "lost": { "bytes": 1, "blocks": 1 } } }
  }
}
"#,
    )
    .expect("baseline written");
    let args = [
        "-p",
        "alpha",
        "--test",
        "gate",
        "--baseline",
        path_str(&baseline),
        "leaks_a_vec",
    ];
    let run = memleak_test(&args, &[]);
    assert_eq!(run.code, 0, "within its budget: {}", run.stderr);
    assert!(
        run.stderr.contains(
            "memleak: stale baseline entry alpha::gate was_renamed: no such test any more; \
             --bless removes it"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("memleak: stale baseline entry gone::it: no such test binary any more"),
        "{}",
        run.stderr
    );
    let blessed = memleak_test(&[&args[..], &["--bless"]].concat(), &[]);
    assert_eq!(blessed.code, 0, "{}", blessed.stderr);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).expect("kept")).expect("JSON");
    assert_eq!(
        file["tests"]
            .as_object()
            .expect("tests")
            .keys()
            .collect::<Vec<_>>(),
        ["alpha::gate"]
    );
    assert_eq!(
        file["tests"]["alpha::gate"]
            .as_object()
            .expect("gate")
            .keys()
            .collect::<Vec<_>>(),
        ["leaks_a_vec"]
    );
}

#[test]
fn a_malformed_baseline_is_an_error_with_its_position_and_is_left_alone() {
    if !privileged("a_malformed_baseline_is_an_error_with_its_position_and_is_left_alone") {
        return;
    }
    let dir = scratch("malformed");
    let baseline = dir.join("memleak-baseline.json");
    let text = "{\n  \"version\": 1,\n  \"tests\": { \"alpha\": 3 }\n}\n";
    std::fs::write(&baseline, text).expect("written");
    for extra in [&[][..], &["--bless"][..]] {
        let args = [
            &["-p", "alpha", "--baseline", path_str(&baseline)][..],
            extra,
        ]
        .concat();
        let run = memleak_test(&args, &[]);
        assert_eq!(run.code, 96, "{}", run.stderr);
        let last = run.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("error: {}:3:", baseline.display())),
            "{}",
            run.stderr
        );
        assert_eq!(std::fs::read_to_string(&baseline).expect("kept"), text);
    }
    let suppressions = dir.join("suppressions.txt");
    std::fs::write(&suppressions, "# ours\nleak:fine\nrace:nope\n").expect("written");
    let run = memleak_test(
        &["-p", "alpha", "--suppressions", path_str(&suppressions)],
        &[],
    );
    assert_eq!(run.code, 96, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{}:3:1: `race:` suppressions are not supported",
            suppressions.display()
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn suppressions_match_functions_like_leak_sanitizer() {
    if !privileged("suppressions_match_functions_like_leak_sanitizer") {
        return;
    }
    let dir = scratch("suppress");
    let suppressions = dir.join("suppressions.txt");
    std::fs::write(
        &suppressions,
        "# alpha's helper leaks on purpose\nleak:^alpha::leak_bytes$\n",
    )
    .expect("written");
    let run = memleak_test(
        &[
            "-p",
            "alpha",
            "--baseline",
            path_str(&no_budgets(&dir)),
            "--suppressions",
            path_str(&suppressions),
            "--message-format",
            "json",
        ],
        &[],
    );
    assert_eq!(run.code, 100, "the Rc cycle still fails: {}", run.stderr);
    let failed: Vec<String> = run
        .finished()
        .into_iter()
        .filter(|(_, event)| event["result"] != "ok")
        .map(|((_, test), _)| test)
        .collect();
    assert_eq!(failed, ["leaks_an_rc_cycle"]);
    let finished = run.finished();
    let suppressed = &finished[&("alpha::gate".to_owned(), "leaks_a_vec".to_owned())];
    assert_eq!(
        suppressed["suppressed"],
        serde_json::json!({"bytes": 4000, "blocks": 1})
    );
    assert_eq!(
        suppressed["lost"],
        serde_json::json!({"bytes": 0, "blocks": 0})
    );
}

#[test]
fn filters_select_tests_like_cargo_test() {
    if !privileged("filters_select_tests_like_cargo_test") {
        return;
    }
    let dir = scratch("filters");
    let none = no_budgets(&dir);
    let ran = |args: &[&str]| -> (i32, Vec<String>) {
        let args = [
            &["--baseline", path_str(&none), "--message-format", "json"][..],
            args,
        ]
        .concat();
        let run = memleak_test(&args, &[]);
        let tests = run.finished().into_keys().map(|(_, test)| test).collect();
        (run.code, tests)
    };
    assert_eq!(
        ran(&["-p", "alpha", "leaks_a_v"]),
        (100, vec!["leaks_a_vec".to_owned()])
    );
    assert_eq!(
        ran(&["-p", "alpha", "--", "--exact", "adds_numbers"]),
        (0, vec!["adds_numbers".to_owned()])
    );
    let (code, tests) = ran(&[
        "-p", "alpha", "--test", "gate", "--skip", "leaks", "--skip", "print",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        tests,
        [
            "adds_numbers",
            "fills_statics",
            "panics_as_expected",
            "spawns_threads"
        ]
    );
    assert_eq!(
        ran(&["-p", "beta", "--lib", "--ignored"]),
        (100, vec!["tests::ignored_leak".to_owned()])
    );
    assert_eq!(ran(&["-p", "alpha", "no_such_test"]), (4, vec![]));
    // Each selected ignored test is an event of its own; each test that runs starts first.
    let run = memleak_test(
        &[
            "--baseline",
            path_str(&none),
            "--message-format",
            "json",
            "-p",
            "beta",
            "--lib",
            "--skip",
            "hangs",
            "--skip",
            "aborts",
        ],
        &[],
    );
    assert_eq!(run.code, 100, "{}", run.stderr);
    let kinds: Vec<String> = run
        .events()
        .iter()
        .map(|event| {
            format!(
                "{} {}",
                event["event"].as_str().unwrap_or_default(),
                event["test"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "run-started ",
            "test-ignored tests::ignored_leak",
            "test-started tests::panics",
            "test-finished tests::panics",
            "run-finished "
        ]
    );
}

#[test]
fn run_checks_its_binary_against_the_baseline() {
    if !privileged("run_checks_its_binary_against_the_baseline") {
        return;
    }
    let dir = scratch("run-gate");
    let baseline = dir.join("memleak-baseline.json");
    let manifest = workspace_root().join("fixtures/leaky/Cargo.toml");
    let run = |extra: &[&str]| {
        let output = Command::new(cargo_memleak())
            .args(["memleak", "run", "--manifest-path"])
            .arg(&manifest)
            .args(["--baseline", path_str(&baseline)])
            .args(extra)
            .args(["--", "malloc"])
            .output()
            .expect("runs");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // An explicit --baseline must exist (unless --bless): start with no budgets.
    std::fs::write(&baseline, "{ \"version\": 1, \"tests\": {} }\n").expect("written");
    let (code, stderr) = run(&[]);
    assert_eq!(code, 100, "30000 bytes lost, no budget: {stderr}");
    assert!(
        stderr.contains("memleak: leaky::bin/leaky: lost 30000 bytes in 1 blocks, over its budget of 0 bytes in 0 blocks"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--bless"]);
    assert_eq!(code, 0, "{stderr}");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).expect("written")).expect("JSON");
    assert_eq!(
        file["runs"]["leaky::bin/leaky"]["lost"],
        serde_json::json!({"bytes": 30000, "blocks": 1})
    );
    let (code, stderr) = run(&[]);
    assert_eq!(code, 0, "within budget now: {stderr}");
}

/// A process's stacks go with it: a run whose tests together capture far more distinct stacks
/// than `--max-stacks` holds is complete, as long as the tests traced at once fit. In
/// fixtures/stacks each `distinct_N` test captures about 680 stacks (500 of its own), and
/// `a_held_open` stays open for the whole run, so there is never a moment with nothing traced.
#[test]
fn stacks_of_finished_tests_make_room_for_the_next() {
    if !privileged("stacks_of_finished_tests_make_room_for_the_next") {
        return;
    }
    let baseline = no_budgets(&scratch("room"));
    let run = memleak_test_in(
        &workspace_root().join("fixtures/stacks/Cargo.toml"),
        &[
            "-j",
            "2",
            "--max-stacks",
            "1500",
            "--message-format",
            "json",
            "--baseline",
            path_str(&baseline),
        ],
        &[("MEMLEAK_FIXTURE_HOLD_MS", "3000")],
    );
    assert_eq!(run.code, 0, "every test passes, complete: {}", run.stdout);
    let finished: Vec<Value> = run
        .events()
        .into_iter()
        .filter(|event| event["event"] == "test-finished")
        .collect();
    let names: Vec<&str> = finished
        .iter()
        .filter_map(|event| event["test"].as_str())
        .collect();
    assert_eq!(names.len(), 9, "{names:?}");
    assert_eq!(
        names.last(),
        Some(&"tests::a_held_open"),
        "the held test ends last: every other test ran while it was traced"
    );
}

/// The pid of a descendant of `ancestor` (a child, or a child's child) whose command line
/// contains `needle`, waiting up to `timeout` (other tests run the same fixture at once).
fn find_descendant(ancestor: u32, needle: &str, timeout: std::time::Duration) -> Option<i32> {
    // pid (comm) state ppid ...: the parent is the fourth field, after the comm.
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
    };
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let std::result::Result::Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>()
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // Tests are forked by the run's spawner, a child of the run.
            let descends = std::iter::successors(parent_of(pid), |&pid| parent_of(pid))
                .take(3)
                .any(|parent| parent == ancestor);
            if cmdline.contains(needle) && descends {
                return Some(pid as i32);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

/// Kills a process when dropped (a test that fails must not leave its run behind).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Whether process `pid` is gone within a second (reaped, not a zombie).
fn gone(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// SIGINT or SIGTERM while beta's hanging test runs (`-j 1`: aborts ran, panics has not):
/// the run stops, kills the hanging test's group, reports what ran and writes JUnit.
#[test]
fn an_interrupted_run_reports_what_ran_and_exits_130_or_143() {
    if !privileged("an_interrupted_run_reports_what_ran_and_exits_130_or_143") {
        return;
    }
    use nix::sys::signal::{Signal, kill};
    let dir = scratch("interrupt");
    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let junit = dir.join(format!("{signal}.xml"));
        let child = memleak_test_command(&manifest())
            .args(["-p", "beta", "--lib", "-j", "1", "--baseline"])
            .arg(no_budgets(&dir))
            .arg("--junit")
            .arg(&junit)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cargo memleak test starts");
        // Its test hangs until signalled: if this test fails before, the run must not be left
        // behind.
        let guard = KillOnDrop(child.id() as i32);
        let hanging = find_descendant(
            child.id(),
            "--exact tests::hangs --nocapture",
            std::time::Duration::from_secs(120),
        )
        .expect("the hanging test runs");
        std::thread::sleep(std::time::Duration::from_millis(300));
        kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("signalled");
        let output = child.wait_with_output().expect("it exits");
        std::mem::forget(guard);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{stdout}\n{stderr}");
        let summary = stdout
            .lines()
            .find(|line| line.starts_with("test result:"))
            .unwrap_or_else(|| panic!("a test result line: {stdout}"));
        assert!(
            summary.starts_with(&format!(
                "test result: FAILED (interrupted by {signal}). 0 passed; 2 failed; 1 ignored; \
                 0 measured; 0 filtered out; 1 not run; finished in "
            )),
            "{summary}"
        );
        assert!(
            stdout.contains(&format!(
                "---- [beta] tests::hangs ----\nmemleak: interrupted by {signal}: killed with \
                 its process group\n"
            )),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!(
                "memleak: interrupted by {signal}: no more tests start"
            )),
            "{stderr}"
        );
        assert!(gone(hanging), "the hanging test {hanging} survived");
        let xml = std::fs::read_to_string(&junit).expect("the JUnit file is written");
        let document = roxmltree::Document::parse(&xml).expect("JUnit parses");
        let cases: Vec<(&str, bool)> = document
            .descendants()
            .filter(|node| node.has_tag_name("testcase"))
            .map(|case| {
                let failed = case.children().any(|node| node.has_tag_name("failure"));
                (case.attribute("name").unwrap_or_default(), failed)
            })
            .collect();
        assert_eq!(
            cases,
            [
                ("tests::aborts", true),
                ("tests::hangs", true),
                ("tests::ignored_leak", false)
            ]
        );
    }
}

#[test]
fn fail_fast_stops_starting_tests_after_the_first_failure() {
    if !privileged("fail_fast_stops_starting_tests_after_the_first_failure") {
        return;
    }
    let dir = scratch("fail-fast");
    let none = no_budgets(&dir);
    let args = [
        "-p",
        "beta",
        "--lib",
        "-j",
        "1",
        "--baseline",
        path_str(&none),
    ];
    // With a timeout: were --fail-fast to start the hanging test, it fails, not hangs.
    let run = memleak_test(
        &[&args[..], &["--fail-fast", "--timeout", "20"]].concat(),
        &[],
    );
    assert_eq!(run.code, 100, "{}", run.stderr);
    assert!(
        run.stdout.contains(
            "test result: FAILED (--fail-fast). 0 passed; 1 failed; 1 ignored; 0 measured; 0 \
             filtered out; 2 not run; finished in "
        ),
        "{}",
        run.stdout
    );
    // --no-fail-fast is the default, accepted for cargo's sake: every test runs.
    let run = memleak_test(
        &[&args[..], &["--no-fail-fast", "--timeout", "2"]].concat(),
        &[],
    );
    assert_eq!(run.code, 100, "{}", run.stderr);
    assert!(
        run.stdout.contains(
            "test result: FAILED. 0 passed; 3 failed; 1 ignored; 0 measured; 0 filtered out; \
             finished in "
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn no_run_and_list_build_but_run_nothing() {
    let dir = scratch("list");
    let none = no_budgets(&dir);
    let base = ["-p", "beta", "--baseline", path_str(&none)];
    let built = memleak_test(&[&base[..], &["--no-run"]].concat(), &[]);
    assert_eq!(built.code, 0, "{}", built.stderr);
    assert_eq!(built.stdout, "", "nothing runs");
    let listed = memleak_test(&[&base[..], &["--list", "--lib"]].concat(), &[]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(
        listed.stdout,
        "[beta] tests::aborts: test\n[beta] tests::hangs: test\n[beta] tests::panics: test\n\
         [beta] tests::ignored_leak: test (ignored)\n"
    );
    let json = memleak_test(
        &[&base[..], &["--list", "--message-format", "json", "hangs"]].concat(),
        &[],
    );
    assert_eq!(json.code, 0, "{}", json.stderr);
    assert_eq!(
        json.events(),
        [serde_json::json!({
            "event": "test-listed", "binary_id": "beta", "test": "tests::hangs",
            "ignored": false, "runs": true
        })]
    );
}

#[test]
fn libtest_arguments_after_the_dashes_are_mapped_or_named() {
    if !privileged("libtest_arguments_after_the_dashes_are_mapped_or_named") {
        return;
    }
    let dir = scratch("trailing");
    let none = no_budgets(&dir);
    let base = [
        "-p",
        "alpha",
        "--test",
        "gate",
        "--baseline",
        path_str(&none),
    ];
    let run = memleak_test(
        &[
            &base[..],
            &["--message-format", "json", "--", "--exact", "adds_numbers"],
            &["--test-threads", "1", "--nocapture", "--show-output"],
        ]
        .concat(),
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.events()[0]["jobs"], 1, "--test-threads 1 is -j 1");
    assert!(
        run.stderr
            .contains("memleak: note: --nocapture and --show-output change nothing here"),
        "{}",
        run.stderr
    );
    let run = memleak_test(&[&base[..], &["--", "--bogus"]].concat(), &[]);
    assert_eq!(run.code, 2);
    let first = run.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(
            "error: after `--`: unexpected argument '--bogus' found; the libtest \
                           arguments accepted there are TESTNAME, --exact"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("error: error:") && !run.stderr.contains("tip:"));
    // -q leaves out the passing tests' lines; --color always colors the verdicts.
    let run = memleak_test(&[&base[..], &["-q", "--color", "always"]].concat(), &[]);
    assert_eq!(run.code, 100, "{}", run.stderr);
    assert!(!run.stdout.contains("adds_numbers"), "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .any(|line| line.starts_with("test [alpha::gate] leaks_a_vec ")
                && line.ends_with(" ... \x1b[31mFAILED\x1b[0m")),
        "{}",
        run.stdout
    );
    let run = memleak_test(
        &[&base[..], &["adds_numbers"]].concat(),
        &[("CARGO_TERM_COLOR", "always")],
    );
    assert!(run.stdout.contains("\x1b[32mok\x1b[0m"), "{}", run.stdout);
    let run = memleak_test(
        &[&base[..], &["adds_numbers"]].concat(),
        &[("NO_COLOR", "1")],
    );
    assert!(!run.stdout.contains('\x1b'), "{}", run.stdout);
}

#[test]
fn mistakes_are_found_before_the_build_with_their_exit_codes() {
    let dir = scratch("early");
    let started = std::time::Instant::now();
    let run = memleak_test(&["--junit", "/nonexistent/dir/junit.xml"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "error: --junit /nonexistent/dir/junit.xml: its directory does not exist; create it \
         first\n"
    );
    let missing = dir.join("missing.json");
    let run = memleak_test(&["--baseline", path_str(&missing)], &[]);
    assert_eq!(run.code, 96, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!(
            "error: baseline {}: no such file; check the path, or create it with --bless\n",
            missing.display()
        )
    );
    let run = memleak_test(&["--baseline", path_str(&dir)], &[]);
    assert_eq!(run.code, 96, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "error: baseline {}: Is a directory",
            dir.display()
        )),
        "{}",
        run.stderr
    );
    let run = memleak_test(&["--suppressions", path_str(&missing)], &[]);
    assert_eq!(run.code, 96, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "error: suppressions file {}: No such file",
            missing.display()
        )),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("Compiling") && started.elapsed().as_secs() < 30,
        "found before any build"
    );
    // cargo's own words, whole, for a manifest path that is a directory.
    let output = memleak_test_command(&workspace_root().join("fixtures/workspace"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(102), "{stderr}");
    assert!(
        stderr.contains("is a directory but expected a file")
            && stderr.contains("fixtures/workspace/Cargo.toml exists"),
        "{stderr}"
    );
}

/// `--bless` through a symlinked baseline keeps the symlink and the file's mode; suppressions
/// take trailing comments, and the unused ones are listed.
#[test]
fn bless_writes_through_symlinks_and_unused_suppressions_are_listed() {
    if !privileged("bless_writes_through_symlinks_and_unused_suppressions_are_listed") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch("symlink");
    let target = no_budgets(&dir);
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let link = dir.join("memleak-baseline.json");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let suppressions = dir.join("suppressions.txt");
    std::fs::write(
        &suppressions,
        "leak:^alpha::leak_bytes$  # alpha's helper leaks on purpose\nleak:no_such_function # stale\n",
    )
    .expect("written");
    let args = [
        "-p",
        "alpha",
        "--test",
        "gate",
        "--baseline",
        path_str(&link),
        "--suppressions",
        path_str(&suppressions),
    ];
    let run = memleak_test(&[&args[..], &["--bless"]].concat(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("memleak: unused suppression `leak:no_such_function`: it matched no stack"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("unused suppression `leak:^alpha"),
        "{}",
        run.stderr
    );
    let meta = std::fs::symlink_metadata(&link).expect("link");
    assert!(meta.file_type().is_symlink(), "still a symlink");
    assert_eq!(
        std::fs::metadata(&target)
            .expect("target")
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(&target).expect("read")).expect("JSON");
    assert_eq!(
        file["tests"]["alpha::gate"]["leaks_an_rc_cycle"]["lost"],
        serde_json::json!({"bytes": 2064, "blocks": 2}),
        "blessed through the link"
    );
    assert!(
        file["tests"]["alpha::gate"].get("leaks_a_vec").is_none(),
        "suppressed despite the trailing comment: {file:#}"
    );
}

/// On a terminal, the status line names the running test and how long it has run; a slow test
/// is reported like nextest's SLOW.
#[test]
fn the_status_line_names_the_running_test_and_slow_tests_are_reported() {
    if !privileged("the_status_line_names_the_running_test_and_slow_tests_are_reported") {
        return;
    }
    use std::io::Read as _;
    let dir = scratch("tty");
    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let child = memleak_test_command(&manifest())
        .args([
            "-p",
            "beta",
            "--lib",
            "--exact",
            "tests::hangs",
            "--timeout",
            "3",
        ])
        .args(["--slow-timeout", "1", "--baseline"])
        .arg(no_budgets(&dir))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(pty.slave))
        .spawn()
        .expect("cargo memleak test starts");
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        // EIO once the last writer of the terminal is gone.
        while let std::result::Result::Ok(n) = master.read(&mut buffer) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let output = child.wait_with_output().expect("it exits");
    let terminal = reader.join().expect("read");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(100), "{stdout}\n{terminal}");
    assert!(
        terminal.contains("\r\x1b[Kmemleak: 0/1 done; running [beta] tests::hangs 1."),
        "{terminal:?}"
    );
    assert!(
        stdout.contains("    SLOW [>1s] [beta] tests::hangs\n    SLOW [>2s] [beta] tests::hangs\n"),
        "{stdout}"
    );
    assert!(stdout.starts_with("\nrunning 1 test\n"), "{stdout}");
}

/// `--partition`: count deals the tests that would run round-robin in list order, hash by a
/// stable hash; every test is in exactly one shard.
#[test]
fn partitions_deal_every_test_to_one_shard() {
    let list = |partition: &str| -> Vec<String> {
        let run = memleak_test(
            &[
                "-p",
                "alpha",
                "--test",
                "gate",
                "--list",
                "--partition",
                partition,
            ],
            &[],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.stdout.lines().map(str::to_owned).collect()
    };
    assert_eq!(
        list("count:1/2"),
        [
            "[alpha::gate] adds_numbers: test",
            "[alpha::gate] leaks_a_vec: test",
            "[alpha::gate] panics_as_expected: test",
            "[alpha::gate] spawns_threads: test"
        ]
    );
    assert_eq!(
        list("count:2/2"),
        [
            "[alpha::gate] fills_statics: test",
            "[alpha::gate] leaks_an_rc_cycle: test",
            "[alpha::gate] prints: test"
        ]
    );
    let mut hashed: Vec<String> = (1..=3).flat_map(|k| list(&format!("hash:{k}/3"))).collect();
    hashed.sort();
    let mut all = list("count:1/1");
    all.sort();
    assert_eq!(
        hashed, all,
        "the hash shards together are the whole run, once each"
    );
    let run = memleak_test(&["--list", "--partition", "count:3/2"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("write count:K/N or hash:K/N"),
        "{}",
        run.stderr
    );
}

/// A shard's run and bless leave the other shards' entries alone, and does not call them stale.
#[test]
fn a_shard_neither_reports_nor_drops_the_other_shards_entries() {
    if !privileged("a_shard_neither_reports_nor_drops_the_other_shards_entries") {
        return;
    }
    let dir = scratch("shard");
    let baseline = dir.join("memleak-baseline.json");
    std::fs::write(
        &baseline,
        r#"{ "version": 1, "tests": { "alpha::gate": {
             "leaks_a_vec": { "lost": { "bytes": 4000, "blocks": 1 } } } } }"#,
    )
    .expect("written");
    let run = memleak_test(
        &[
            "-p",
            "alpha",
            "--test",
            "gate",
            "--baseline",
            path_str(&baseline),
            "--partition",
            "count:2/2",
            "--bless",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("stale"), "{}", run.stderr);
    assert!(
        run.stdout
            .contains("test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out"),
        "{}",
        run.stdout
    );
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).expect("read")).expect("JSON");
    let gate = file["tests"]["alpha::gate"].as_object().expect("gate");
    assert_eq!(
        gate.keys().collect::<Vec<_>>(),
        ["leaks_a_vec", "leaks_an_rc_cycle"],
        "shard 1's entry kept, shard 2's written: {file:#}"
    );
}

/// `--timings`: each test's phases in its JSON `test-finished`, adding up to no more than its
/// duration, and the human output's totals line.
#[test]
fn timings_say_where_each_tests_time_went() {
    if !privileged("timings_say_where_each_tests_time_went") {
        return;
    }
    let dir = scratch("timings");
    let baseline = no_budgets(&dir);
    let base = [
        "-p",
        "alpha",
        "--baseline",
        path_str(&baseline),
        "--timings",
    ];
    let json = memleak_test(
        &[
            &base[..],
            &["--message-format", "json", "--", "--exact", "adds_numbers"],
        ]
        .concat(),
        &[],
    );
    assert_eq!(json.code, 0, "{}", json.stderr);
    let finished = json.finished();
    let event = &finished[&("alpha::gate".to_owned(), "adds_numbers".to_owned())];
    let timings = &event["timings"];
    let phases = [
        "spawn_ms",
        "attach_ms",
        "program_ms",
        "read_ms",
        "symbolize_ms",
        "scan_ms",
        "finish_ms",
        "judge_ms",
    ];
    let sum: f64 = phases
        .iter()
        .map(|phase| {
            timings[phase]
                .as_f64()
                .unwrap_or_else(|| panic!("{phase} in {timings}"))
        })
        .sum();
    let duration = event["duration_ms"].as_f64().expect("duration_ms");
    assert!(
        timings["program_ms"].as_f64().unwrap_or_default() > 0.0 && sum <= duration + 0.01,
        "phases {sum} ms within the duration {duration} ms: {timings}"
    );
    let human = memleak_test(
        &[&base[..], &["--", "--exact", "adds_numbers"]].concat(),
        &[],
    );
    assert_eq!(human.code, 0, "{}", human.stderr);
    let line = human
        .stdout
        .lines()
        .find(|line| line.starts_with("memleak: timings: 1 tests, ms per test: spawn "))
        .unwrap_or_else(|| panic!("no timings line:\n{}", human.stdout));
    assert!(
        line.contains(", judge ")
            && line.contains(", other ")
            && line.contains(" of worker time in "),
        "{line}"
    );
    // Without the flag, no timings.
    let plain = memleak_test(
        &[
            "-p",
            "alpha",
            "--baseline",
            path_str(&baseline),
            "--message-format",
            "json",
            "--",
            "--exact",
            "adds_numbers",
        ],
        &[],
    );
    let finished = plain.finished();
    let event = &finished[&("alpha::gate".to_owned(), "adds_numbers".to_owned())];
    assert!(event.get("timings").is_none(), "{event}");
}
