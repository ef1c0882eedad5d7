//! Folded stacks (`--format folded`) and SVG flame graphs (`--flamegraph PATH`) of real runs:
//! `cargo memleak test` on the fixture workspace and `cargo memleak exec` on the C fixture.

use std::path::PathBuf;

use memleak_tests::{c_fixture, cargo_memleak, privileged, svg_titles, workspace_root};

fn scratch(name: &str) -> PathBuf {
    memleak_tests::scratch(&format!("pictures-{name}"))
}

#[test]
fn a_test_run_folds_and_draws_its_lost_stacks() {
    if !privileged("a_test_run_folds_and_draws_its_lost_stacks") {
        return;
    }
    let dir = scratch("test");
    let baseline = dir.join("none.json");
    std::fs::write(&baseline, "{ \"version\": 1, \"tests\": {} }\n").expect("written");
    let svg = dir.join("lost.svg");
    let output = std::process::Command::new(cargo_memleak())
        .args(["memleak", "test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/workspace/Cargo.toml"))
        .args([
            "-p",
            "alpha",
            "--test",
            "gate",
            "--format",
            "folded",
            "--baseline",
        ])
        .arg(&baseline)
        .arg("--flamegraph")
        .arg(&svg)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(100), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per lost stack, merged: {stdout}");
    let (vec_stack, bytes) = lines[0].rsplit_once(' ').expect("STACK BYTES");
    assert_eq!(bytes, "4000");
    let frames: Vec<&str> = vec_stack.split(';').collect();
    assert_eq!(
        frames[0], "[alpha::gate] leaks_a_vec",
        "the test is the root"
    );
    let leaker = frames
        .iter()
        .position(|frame| *frame == "alpha::leak_bytes")
        .expect("the leaking function");
    assert_eq!(
        frames[leaker - 1],
        "gate::leaks_a_vec",
        "callers come first"
    );
    assert!(
        lines[1].starts_with("[alpha::gate] leaks_an_rc_cycle;") && lines[1].ends_with(" 2064")
    );
    let titles = svg_titles(&svg);
    assert!(
        titles
            .iter()
            .any(|title| title.starts_with("alpha::leak_bytes (4,000 bytes")),
        "{titles:#?}"
    );
}

#[test]
fn exec_folds_and_draws_what_the_program_left() {
    if !privileged("exec_folds_and_draws_what_the_program_left") {
        return;
    }
    let dir = scratch("exec");
    let svg = dir.join("exec.svg");
    let output = std::process::Command::new(cargo_memleak())
        .args([
            "exec",
            "--show-reachable",
            "--format",
            "folded",
            "--flamegraph",
        ])
        .arg(&svg)
        .arg("--")
        .arg(c_fixture())
        .arg("malloc")
        .output()
        .expect("runs");
    let folded = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{folded}");
    let line = folded
        .lines()
        .find(|line| line.contains(";leak_malloc "))
        .unwrap_or_else(|| panic!("a stack ending in leak_malloc: {folded}"));
    assert!(
        line.starts_with("_start;") || line.contains("main;leak_malloc"),
        "{line}"
    );
    let (_, bytes) = line.rsplit_once(' ').expect("STACK BYTES");
    assert!(bytes.parse::<u64>().expect("bytes") > 0, "{line}");
    let titles = svg_titles(&svg);
    assert!(
        titles
            .iter()
            .any(|title| title.starts_with("leak_malloc (")),
        "{titles:#?}"
    );
}

#[test]
fn a_picture_that_cannot_be_written_is_refused_before_anything_runs() {
    if !privileged("a_picture_that_cannot_be_written_is_refused_before_anything_runs") {
        return;
    }
    let dir = scratch("unwritable");
    let svg = dir.join("missing").join("stacks.svg");
    let marker = dir.join("ran");
    let svg_arg = svg.to_str().expect("UTF-8");
    let marker_arg = marker.to_str().expect("UTF-8");
    for args in [
        &["exec", "--flamegraph", svg_arg, "--", "touch", marker_arg][..],
        &["attach", "-p", "1", "--flamegraph", svg_arg][..],
    ] {
        let output = std::process::Command::new(cargo_memleak())
            .args(args)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!("error: --flamegraph {svg_arg}: its directory does not exist; create it first"),
            "{args:?}"
        );
    }
    assert!(!marker.exists(), "exec ran its program");
}
