//! Doc tests under `cargo memleak test` (fixtures/doctests: an edition 2021 library, whose doc
//! tests rustdoc compiles each on its own, and an edition 2024 one, whose doc tests it merges
//! into one binary): every doc test `cargo test` runs is run, each its own traced process,
//! named as `cargo test` names it; a leaking one fails with its stack on the documentation's
//! line; `should_panic`, `no_run`, `compile_fail` and `ignore` keep their meaning; budgets are
//! blessed under keys that survive an edit above them; a doc test rustdoc fails fails; doc tests
//! that rustdoc's function names do not name are named one at a time.

use std::path::{Path, PathBuf};

use memleak_tests::{
    Finished, cargo_memleak, copy_fixture, marker_line, privileged, scratch, test_finished,
    test_finished_in, workspace_root,
};
use serde_json::Value;

fn source(package: &str) -> PathBuf {
    workspace_root().join(format!("fixtures/doctests/{package}/src/lib.rs"))
}

/// (binary id, test, lost bytes, lost blocks): every test of the workspace that runs, and
/// whether it passes (`None`) or what it loses.
type Lost = Option<(u64, u64)>;

const EXPECTED: &[(&str, &str, Lost)] = &[
    ("old::doc-tests", "old/src/lib.rs - (line 3)", None),
    ("old::doc-tests", "old/src/lib.rs - double (line 9)", None),
    (
        "old::doc-tests",
        "old/src/lib.rs - double (line 15)",
        Some((48, 1)),
    ),
    // should_panic: it panics, and passes.
    ("old::doc-tests", "old/src/lib.rs - keep (line 26)", None),
    // no_run and compile_fail: rustdoc's verdict.
    ("old::doc-tests", "old/src/lib.rs - keep (line 30)", None),
    ("old::doc-tests", "old/src/lib.rs - keep (line 34)", None),
    (
        "old::doc-tests",
        "old/src/lib.rs - own_main (line 47)",
        None,
    ),
    ("new::doc-tests", "new/src/lib.rs - triple (line 5)", None),
    (
        "new::doc-tests",
        "new/src/lib.rs - triple (line 11)",
        Some((40, 1)),
    ),
    ("new::doc-tests", "new/src/lib.rs - triple (line 16)", None),
    ("new::doc-tests", "new/src/lib.rs - triple (line 20)", None),
    // Not merged (a crate attribute): a binary of its own in edition 2024.
    ("new::doc-tests", "new/src/lib.rs - alone (line 29)", None),
    ("old", "tests::doubles", None),
    ("old", "tests::leaks_a_block", Some((24, 1))),
    ("new::gate", "triples", None),
    ("new::gate", "leaks_a_vec", Some((64, 1))),
];

fn by_id<'a>(run: &'a Finished, binary_id: &str, test: &str) -> &'a Value {
    run.tests
        .iter()
        .find(|event| event["binary_id"] == binary_id && event["test"] == test)
        .unwrap_or_else(|| panic!("[{binary_id}] {test} finished: {}", run.stderr))
}

/// The first frame of the stack that is the doc test's own code: (symbol, file, line).
fn doc_frame(event: &Value) -> (String, String, u64) {
    let frame = event["stacks"][0]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .find(|frame| {
            frame["symbol"]
                .as_str()
                .is_some_and(|symbol| symbol.starts_with("doctest::"))
        })
        .unwrap_or_else(|| panic!("a doctest:: frame in {event:#}"));
    (
        frame["symbol"].as_str().unwrap_or_default().to_owned(),
        frame["file"].as_str().unwrap_or_default().to_owned(),
        frame["line"].as_u64().unwrap_or_default(),
    )
}

#[test]
fn every_doc_test_runs_traced_and_a_leaking_one_fails_at_its_line() {
    if !privileged("every_doc_test_runs_traced_and_a_leaking_one_fails_at_its_line") {
        return;
    }
    let run = test_finished("doctests", &["--workspace"], &[]);
    assert_eq!(run.code, Some(100), "{}", run.stderr);
    assert_eq!(run.tests.len(), EXPECTED.len(), "{:#?}", run.tests);
    for &(binary_id, test, lost) in EXPECTED {
        let event = by_id(&run, binary_id, test);
        match lost {
            None => assert_eq!(event["result"], "ok", "{event:#}"),
            Some((bytes, blocks)) => {
                assert_eq!(event["result"], "failed", "{event:#}");
                assert_eq!(event["lost"]["bytes"], bytes, "{event:#}");
                assert_eq!(event["lost"]["blocks"], blocks, "{event:#}");
                assert_eq!(event["exit"]["code"], 0, "{event:#}");
            }
        }
    }
    // Each edition's leaking doc test, on the documentation's line of its allocation.
    for (binary_id, test, package, marker) in [
        (
            "old::doc-tests",
            "old/src/lib.rs - double (line 15)",
            "old",
            "old_doc",
        ),
        (
            "new::doc-tests",
            "new/src/lib.rs - triple (line 11)",
            "new",
            "new_doc",
        ),
    ] {
        let event = by_id(&run, binary_id, test);
        let (symbol, file, line) = doc_frame(event);
        assert_eq!(symbol, "doctest::main", "{event:#}");
        assert!(
            Path::new(&file).ends_with(format!("{package}/src/lib.rs")),
            "{file}"
        );
        assert_eq!(line, marker_line(&source(package), marker), "{event:#}");
    }
    // The human output of the 2021 one starts at its line too, with the fence's below.
    let text = std::process::Command::new(cargo_memleak())
        .args(["memleak", "test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/doctests/Cargo.toml"))
        .args([
            "-p",
            "old",
            "--doc",
            "--",
            "--exact",
            "old/src/lib.rs - double (line 15)",
        ])
        .output()
        .expect("cargo memleak test runs");
    let stdout = String::from_utf8_lossy(&text.stdout);
    let line = marker_line(&source("old"), "old_doc");
    assert!(
        stdout.contains("\t\told::keep (old/src/lib.rs:")
            && stdout.contains(&format!("\t\tdoctest::main (old/src/lib.rs:{line})\n"))
            && stdout.contains("\t\trust_out::main (old/src/lib.rs:15)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "rerun: cargo memleak test --manifest-path fixtures/doctests/Cargo.toml -p old \
             --doc -- --exact 'old/src/lib.rs - double (line 15)'"
        ) || stdout.contains("-p old --doc -- --exact 'old/src/lib.rs - double (line 15)'"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 7 filtered out"
        ),
        "{stdout}"
    );
}

#[test]
fn doc_only_runs_the_doc_tests_and_ignore_is_ignored() {
    if !privileged("doc_only_runs_the_doc_tests_and_ignore_is_ignored") {
        return;
    }
    let run = test_finished("doctests", &["--workspace", "--doc"], &[]);
    let doc_tests = EXPECTED
        .iter()
        .filter(|(binary_id, _, _)| binary_id.ends_with("::doc-tests"))
        .count();
    assert_eq!(run.tests.len(), doc_tests, "{:#?}", run.tests);
    assert_eq!(run.code, Some(100), "{}", run.stderr);
    // `--lib` names a target: no doc tests, as in cargo.
    let lib = test_finished("doctests", &["--workspace", "--lib"], &[]);
    assert_eq!(lib.tests.len(), 2, "{:#?}", lib.tests);
    // The `ignore` doc test is listed as ignored.
    let listed = std::process::Command::new(cargo_memleak())
        .args(["memleak", "test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/doctests/Cargo.toml"))
        .args(["--workspace", "--doc", "--list"])
        .output()
        .expect("cargo memleak test --list runs");
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        stdout.contains("[old::doc-tests] old/src/lib.rs - keep (line 38): test (ignored)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[new::doc-tests] new/src/lib.rs - triple (line 11): test\n"),
        "{stdout}"
    );
}

#[test]
fn blessed_doc_tests_pass_and_keep_their_budget_when_lines_move() {
    if !privileged("blessed_doc_tests_pass_and_keep_their_budget_when_lines_move") {
        return;
    }
    // A copy of the workspace, edited above the doc tests after the bless.
    let dir = scratch("doctests-bless");
    let workspace = dir.join("doctests");
    copy_fixture("doctests", &workspace);
    let manifest = workspace.join("Cargo.toml");
    let manifest = manifest.to_str().expect("UTF-8 path");
    let baseline = workspace.join("memleak-baseline.json");
    let blessed = test_finished_in(
        Path::new(manifest),
        &["--workspace", "--doc", "--bless"],
        &[],
    );
    assert_eq!(blessed.code, Some(0), "{}", blessed.stderr);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).expect("baseline written"))
            .expect("baseline is JSON");
    let old = &written["tests"]["old::doc-tests"]["old/src/lib.rs - double (doc test 2)"];
    assert_eq!(old["lost"]["bytes"], 48, "{written:#}");
    let new = &written["tests"]["new::doc-tests"]["new/src/lib.rs - triple (doc test 2)"];
    assert_eq!(new["lost"]["bytes"], 40, "{written:#}");
    assert_eq!(
        new["stacks"][0]["frames"][0], "doctest::main",
        "{written:#}"
    );
    // Three lines more above every doc test: names change, budgets hold.
    for package in ["old", "new"] {
        let path = workspace.join(package).join("src/lib.rs");
        let text = std::fs::read_to_string(&path).expect("source");
        let (first, rest) = text.split_once('\n').expect("a first line");
        std::fs::write(&path, format!("{first}\n//\n//\n//\n{rest}")).expect("source edited");
    }
    let rerun = test_finished_in(Path::new(manifest), &["--workspace", "--doc"], &[]);
    assert_eq!(rerun.code, Some(0), "{}\n{:#?}", rerun.stderr, rerun.tests);
    let moved = rerun
        .tests
        .iter()
        .find(|event| event["test"] == "old/src/lib.rs - double (line 18)")
        .unwrap_or_else(|| panic!("the moved doc test: {:#?}", rerun.tests));
    assert_eq!(moved["lost"]["bytes"], 48, "{moved:#}");
    assert_eq!(moved["budget"]["lost"]["bytes"], 48, "{moved:#}");
    assert_eq!(moved["result"], "ok", "{moved:#}");
}

#[test]
fn a_doc_test_that_fails_fails_whatever_failed() {
    if !privileged("a_doc_test_that_fails_fails_whatever_failed") {
        return;
    }
    let dir = scratch("doctests-failing");
    let package = dir.join("failing");
    std::fs::create_dir_all(package.join("src")).expect("package dir");
    std::fs::write(
        package.join("Cargo.toml"),
        "[package]\nname = \"failing\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .expect("manifest");
    std::fs::write(
        package.join("src/lib.rs"),
        "/// Does not compile.\n///\n/// ```\n/// let x: u8 = \"text\";\n/// ```\n///\n\
         /// Panics, unexpectedly.\n///\n/// ```\n/// assert_eq!(1, 2);\n/// ```\n///\n\
         /// Should panic and does not.\n///\n/// ```should_panic\n/// let _ = 1;\n/// ```\n///\n\
         /// Compiles, though it should not.\n///\n/// ```compile_fail\n/// let _ = 1;\n/// ```\n\
         ///\n/// Own main, passes.\n///\n/// ```\n/// fn main() { let _ = 1; }\n/// ```\n\
         ///\n/// Own main, fails.\n///\n/// ```\n/// fn main() { std::process::exit(3); }\n\
         /// ```\npub fn f() {}\n",
    )
    .expect("source");
    let manifest = package.join("Cargo.toml");
    let run = test_finished_in(&manifest, &["--doc"], &[]);
    assert_eq!(run.code, Some(100), "{}", run.stderr);
    let failures = |test: &str| -> Vec<String> {
        let event = run
            .tests
            .iter()
            .find(|event| event["test"] == test)
            .unwrap_or_else(|| panic!("{test}: {:#?}\n{}", run.tests, run.stderr));
        assert_eq!(event["result"], "failed", "{event:#}");
        event["failures"]
            .as_array()
            .expect("failures")
            .iter()
            .map(|failure| failure.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        failures("src/lib.rs - f (line 3)"),
        ["rustdoc failed it (see its output)"]
    );
    assert_eq!(
        failures("src/lib.rs - f (line 9)"),
        ["the test failed: exit code 101"]
    );
    assert_eq!(
        failures("src/lib.rs - f (line 15)"),
        ["the doc test is should_panic but exited successfully"]
    );
    assert_eq!(
        failures("src/lib.rs - f (line 21)"),
        ["rustdoc failed it (see its output)"]
    );
    // Two doc tests with a `main` of their own: no function of rustdoc's names them, so they
    // are collected again one at a time, named by what rustdoc printed (swapped names would
    // swap these verdicts).
    assert_eq!(
        failures("src/lib.rs - f (line 33)"),
        ["the test failed: exit code 3"]
    );
    let own = run
        .tests
        .iter()
        .find(|event| event["test"] == "src/lib.rs - f (line 27)")
        .unwrap_or_else(|| panic!("{:#?}", run.tests));
    assert_eq!(own["result"], "ok", "{own:#}");
    let output = run
        .tests
        .iter()
        .find(|event| event["test"] == "src/lib.rs - f (line 3)")
        .and_then(|event| event["output"].as_str())
        .unwrap_or_default();
    assert!(output.contains("mismatched types"), "{output}");
}
