//! cargo memleak inside cargo-nextest (its wrapper scripts, `cargo memleak wrap`): the real
//! cargo-nextest ([`NEXTEST_VERSION`]) runs a copy of fixtures/doctests with the profiles of
//! its `.config/nextest.toml` (the README's example): the verdicts are `cargo memleak test`'s,
//! a leaking test fails with its stack, `--profile memleak-bless` writes the budgets from every
//! test process at once, and the run after it passes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use memleak_tests::{
    NEXTEST_VERSION, cargo_memleak, cargo_nextest, copy_fixture, marker_line, privileged, scratch,
    test_finished, workspace_root,
};

/// `cargo nextest run --profile PROFILE --workspace --no-fail-fast` in `workspace`, with
/// cargo-memleak on PATH and frame pointers in the build.
fn nextest_run(workspace: &Path, profile: &str) -> (i32, String) {
    let bin_dir = cargo_memleak().parent().expect("cargo-memleak's directory");
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let output = Command::new(cargo_nextest())
        .args([
            "nextest",
            "run",
            "--profile",
            profile,
            "--workspace",
            "--no-fail-fast",
        ])
        .current_dir(workspace)
        .env("PATH", path)
        .env("RUSTFLAGS", "-C force-frame-pointers=yes")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo nextest runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// nextest's JUnit report of the `memleak` profile: (binary id, test) → its failure's
/// system-err, `None` when it passed.
fn junit(workspace: &Path) -> BTreeMap<(String, String), Option<String>> {
    let path = workspace.join("target/nextest/memleak/junit.xml");
    let text = std::fs::read_to_string(&path).expect("nextest wrote its JUnit report");
    let document = roxmltree::Document::parse(&text).expect("JUnit is XML");
    document
        .descendants()
        .filter(|node| node.has_tag_name("testcase"))
        .map(|case| {
            let key = (
                case.attribute("classname").unwrap_or_default().to_owned(),
                case.attribute("name").unwrap_or_default().to_owned(),
            );
            let failed = case.children().any(|child| child.has_tag_name("failure"));
            let stderr = case
                .children()
                .find(|child| child.has_tag_name("system-err"))
                .and_then(|node| node.text())
                .unwrap_or_default()
                .to_owned();
            (key, failed.then_some(stderr))
        })
        .collect()
}

/// A copy of fixtures/doctests (its sources and `.config`, not its target directory).
fn workspace_copy(name: &str) -> PathBuf {
    let dir = scratch(name).join("doctests");
    copy_fixture("doctests", &dir);
    dir
}

#[test]
fn the_example_nextest_config_is_the_fixtures() {
    // The README points at examples/nextest.toml; the tests run the fixture's copy.
    assert_eq!(
        std::fs::read_to_string(workspace_root().join("examples/nextest.toml")).expect("example"),
        std::fs::read_to_string(workspace_root().join("fixtures/doctests/.config/nextest.toml"))
            .expect("fixture's"),
    );
}

#[test]
fn nextest_with_the_wrapper_gives_cargo_memleak_tests_verdicts_then_blesses() {
    if !privileged("nextest_with_the_wrapper_gives_cargo_memleak_tests_verdicts_then_blesses") {
        return;
    }
    let workspace = workspace_copy("nextest");
    let (code, text) = nextest_run(&workspace, "memleak");
    assert_eq!(code, 100, "nextest {NEXTEST_VERSION} fails the run: {text}");
    let verdicts = junit(&workspace);
    // The same verdicts as cargo memleak test, test by test (its doc tests aside: nextest
    // cannot run them).
    let reference = test_finished("doctests", &["--workspace", "--tests", "--lib"], &[]);
    assert_eq!(
        verdicts.len(),
        reference.tests.len(),
        "{verdicts:#?}\n{text}"
    );
    for event in &reference.tests {
        let key = (
            event["binary_id"].as_str().unwrap_or_default().to_owned(),
            event["test"].as_str().unwrap_or_default().to_owned(),
        );
        let failed = verdicts
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} ran under nextest: {verdicts:#?}"))
            .is_some();
        assert_eq!(failed, event["result"] == "failed", "{key:?}: {text}");
    }
    // A leaking test fails with its stack, on the line that allocated.
    let line = marker_line(&workspace.join("new/tests/gate.rs"), "new_test");
    let leak = verdicts[&("new::gate".to_owned(), "leaks_a_vec".to_owned())]
        .as_deref()
        .expect("leaks_a_vec failed");
    assert!(
        leak.contains("memleak: lost 64 bytes in 1 blocks, over its budget of 0 bytes in 0 blocks")
            && leak.contains(&format!("gate::leaks_a_vec (new/tests/gate.rs:{line})\n")),
        "{leak}"
    );
    assert!(
        verdicts[&("new::gate".to_owned(), "triples".to_owned())].is_none(),
        "{verdicts:#?}"
    );

    // Every test process blesses its own budget at once; then the run passes.
    let (code, text) = nextest_run(&workspace, "memleak-bless");
    assert_eq!(code, 0, "{text}");
    let baseline: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace.join("memleak-baseline.json")).expect("blessed"),
    )
    .expect("the baseline is JSON");
    assert_eq!(
        baseline["tests"]["new::gate"]["leaks_a_vec"]["lost"]["bytes"], 64,
        "{baseline:#}"
    );
    assert_eq!(
        baseline["tests"]["old"]["tests::leaks_a_block"]["lost"]["bytes"], 24,
        "{baseline:#}"
    );
    assert_eq!(
        baseline["tests"].as_object().map(|tests| tests.len()),
        Some(2)
    );
    let leftovers: Vec<String> = std::fs::read_dir(&workspace)
        .expect("workspace")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("memleak-baseline") && name != "memleak-baseline.json")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (code, text) = nextest_run(&workspace, "memleak");
    assert_eq!(code, 0, "{text}");
    assert!(junit(&workspace).values().all(Option::is_none), "{text}");

    // The same test outside nextest: --binary-id and `--exact NAME` name it; --timings says
    // where its time went.
    let binary = std::fs::read_dir(workspace.join("target/debug/deps"))
        .expect("nextest's build")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("gate-") && path.extension().is_none()
        })
        .expect("the gate test binary");
    let output = Command::new(cargo_memleak())
        .args([
            "memleak",
            "wrap",
            "--binary-id",
            "new::gate",
            "--timings",
            "--",
        ])
        .arg(&binary)
        .args(["--exact", "leaks_a_vec", "--nocapture"])
        .current_dir(workspace.join("new"))
        .env_remove("NEXTEST_BINARY_ID")
        .env_remove("NEXTEST_TEST_NAME")
        .env_remove("NEXTEST_WORKSPACE_ROOT")
        .output()
        .expect("cargo memleak wrap runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "memleak: [new::gate] leaks_a_vec: lost 64 bytes in 1 blocks (budget: 64 bytes in 1 blocks)"
        ),
        "{stderr}"
    );
    let timings = stderr
        .lines()
        .find_map(|line| line.strip_prefix("memleak: timings (ms): "))
        .unwrap_or_else(|| panic!("timings: {stderr}"));
    for phase in [
        "load",
        "spawn",
        "attach",
        "program",
        "symbolize",
        "scan",
        "probes removed",
        "in all",
    ] {
        assert!(timings.contains(&format!("{phase} ")), "{phase}: {timings}");
    }
}

#[test]
fn wrap_without_nextest_names_what_it_needs() {
    // No binary id: a usage error, with the fix.
    let output = Command::new(cargo_memleak())
        .args(["memleak", "wrap", "--", "/bin/true", "--exact", "x"])
        .env_remove("NEXTEST_BINARY_ID")
        .env_remove("NEXTEST_TEST_NAME")
        .output()
        .expect("cargo-memleak runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "no binary id: run under cargo-nextest (NEXTEST_BINARY_ID), or give --binary-id"
        ),
        "{stderr}"
    );
    let output = Command::new(cargo_memleak())
        .args(["memleak", "wrap", "--binary-id", "pkg", "--", "/bin/true"])
        .env_remove("NEXTEST_TEST_NAME")
        .output()
        .expect("cargo-memleak runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no test name"), "{stderr}");
}
