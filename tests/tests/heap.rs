//! Budgets beyond leaks on real runs (fixtures/heap): each test's peak heap and allocation
//! count, their stack, and the gate on them (`--fail-on peak,allocations`, `--tolerance`).
//!
//! A test process's heap is the test's and libtest's; libtest's varies a little from run to
//! run (whether its main thread blocked before the test ended: a few allocations, under
//! 1 KiB), so these compare runs that differ in what the test does, within that.

use memleak_tests::{
    cargo_memleak, marker_line, privileged, scratch, test_finished, workspace_root,
};
use serde_json::Value;

/// libtest's own heap varies between runs of one test by less than this many bytes...
const HARNESS_BYTES: u64 = 4096;
/// ...and this many allocations.
const HARNESS_ALLOCATIONS: u64 = 16;

fn heap_of<'a>(event: &'a Value, test: &str) -> &'a Value {
    let heap = &event["heap"];
    assert!(heap.is_object(), "{test}: a heap: {event:#}");
    heap
}

fn figure(event: &Value, name: &str) -> u64 {
    event["heap"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name}: {event:#}"))
}

/// `cargo memleak test` on the fixture in `env`, as text: its exit code and stdout.
fn human(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = std::process::Command::new(cargo_memleak())
        .args(["test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/heap/Cargo.toml"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("cargo memleak test runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// `gated` and then `extra`.
fn with<'a>(gated: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    gated.iter().chain(extra).copied().collect()
}

/// A test's result word in libtest's output (`ok`, `FAILED`).
fn verdict<'a>(text: &'a str, test: &str) -> &'a str {
    let heading = format!("test [heap::heap] {test} ");
    text.lines()
        .find(|line| line.starts_with(&heading))
        .and_then(|line| line.rsplit(' ').next())
        .unwrap_or_else(|| panic!("{test}'s result in {text}"))
}

#[test]
fn each_tests_peak_and_allocations_are_measured() {
    if !privileged("each_tests_peak_and_allocations_are_measured") {
        return;
    }
    let small = test_finished("heap", &[], &[("PEAK_KIB", "1024"), ("LOOPS", "1000")]);
    let large = test_finished("heap", &[], &[("PEAK_KIB", "2048"), ("LOOPS", "2000")]);
    assert_eq!(small.code, Some(0), "{}", small.stderr);
    assert_eq!(large.code, Some(0), "{}", large.stderr);

    // The big block sets the peak, at its line.
    let peaks = small.of("peaks_at_a_big_block");
    let heap = heap_of(peaks, "peaks_at_a_big_block");
    let peak = figure(peaks, "peak_bytes");
    assert!(
        (1 << 20..(1 << 20) + (128 << 10)).contains(&peak),
        "{heap:#}"
    );
    let source = workspace_root().join("fixtures/heap/tests/heap.rs");
    let set_by = heap["peak_stack"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|frame| frame["symbol"] == "heap::big_block")
        .unwrap_or_else(|| panic!("the big block's frame: {heap:#}"));
    assert_eq!(
        set_by["line"],
        marker_line(&source, "big_block"),
        "{heap:#}"
    );
    // 1 MiB more in the same test is 1 MiB more at its peak, and only there.
    let grown = figure(large.of("peaks_at_a_big_block"), "peak_bytes") - peak;
    assert!(grown.abs_diff(1 << 20) < HARNESS_BYTES, "grew by {grown}");

    // A loop of 1000 boxes is 1000 allocations, of 8 bytes each.
    let looped = small.of("allocates_in_a_loop");
    let more =
        figure(large.of("allocates_in_a_loop"), "allocations") - figure(looped, "allocations");
    assert!(
        more.abs_diff(1000) < HARNESS_ALLOCATIONS,
        "{more} more allocations"
    );
    let bytes = figure(large.of("allocates_in_a_loop"), "allocated_bytes")
        - figure(looped, "allocated_bytes");
    assert!(bytes.abs_diff(8000) < HARNESS_BYTES, "{bytes} more bytes");
    let base = figure(small.of("allocates_nothing"), "allocations");
    let loop_allocations = figure(looped, "allocations") - base;
    assert!(
        loop_allocations.abs_diff(1000) < HARNESS_ALLOCATIONS,
        "{loop_allocations}"
    );
}

#[test]
fn peak_and_allocation_budgets_are_blessed_and_gated_with_a_tolerance() {
    if !privileged("peak_and_allocation_budgets_are_blessed_and_gated_with_a_tolerance") {
        return;
    }
    let baseline = scratch("heap-budgets").join("memleak-baseline.json");
    let baseline_arg = baseline.to_str().expect("a UTF-8 path");
    let gated = ["--baseline", baseline_arg, "--fail-on", "peak,allocations"];

    let (code, text) = human(&with(&gated, &["--bless"]), &[]);
    assert_eq!(code, Some(0), "{text}");
    let read = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(&baseline).expect("the baseline"))
            .expect("JSON")
    };
    let blessed = read();
    for test in [
        "peaks_at_a_big_block",
        "allocates_in_a_loop",
        "allocates_nothing",
    ] {
        let budget = &blessed["tests"]["heap::heap"][test];
        assert!(
            budget["peak"].as_u64().is_some_and(|peak| peak > 0),
            "{blessed:#}"
        );
        assert!(
            budget["allocations"].as_u64().is_some_and(|n| n > 0),
            "{blessed:#}"
        );
    }
    let peak_budget = blessed["tests"]["heap::heap"]["peaks_at_a_big_block"]["peak"]
        .as_u64()
        .unwrap_or_default();

    // The same run passes (its figures in JUnit too); one whose peak doubled fails, with both
    // figures and the stack.
    let junit = baseline.with_file_name("junit.xml");
    let junit_arg = junit.to_str().expect("a UTF-8 path");
    let (code, text) = human(&with(&gated, &["--junit", junit_arg]), &[]);
    assert_eq!(code, Some(0), "{text}");
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    assert!(
        xml.contains(r#"<property name="memleak.peak_bytes" value=""#)
            && xml.contains(r#"<property name="memleak.allocations" value=""#),
        "{xml}"
    );
    let (code, text) = human(&gated, &[("PEAK_KIB", "2048")]);
    assert_eq!(code, Some(100), "{text}");
    assert_eq!(verdict(&text, "peaks_at_a_big_block"), "FAILED", "{text}");
    assert_eq!(verdict(&text, "allocates_in_a_loop"), "ok", "{text}");
    assert_eq!(verdict(&text, "allocates_nothing"), "ok", "{text}");
    let failure = format!("over its budget of {peak_budget} bytes (");
    assert!(
        text.contains("memleak: peak heap ") && text.contains(&failure),
        "{text}"
    );
    assert!(
        text.contains(
            "\tthe peak was reached by the allocation from\n\t\theap::big_block (tests/heap.rs:"
        ),
        "{text}"
    );

    // 5% more passes within the default 10%, and fails without a tolerance.
    let (code, text) = human(&gated, &[("PEAK_KIB", "1075")]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = human(
        &with(&gated, &["--tolerance", "0%"]),
        &[("PEAK_KIB", "1075")],
    );
    assert_eq!(code, Some(100), "{text}");
    assert!(text.contains("rerun: cargo memleak test "), "{text}");
    assert!(
        text.contains("--fail-on peak,allocations --tolerance 0%"),
        "{text}"
    );

    // Three times the allocations fail the allocation budget.
    let (code, text) = human(&gated, &[("LOOPS", "3000")]);
    assert_eq!(code, Some(100), "{text}");
    assert!(text.contains(" allocations, over its budget of "), "{text}");

    // A bless of the leaks alone keeps the peak and allocation budgets as they are.
    let (code, text) = human(
        &["--baseline", baseline_arg, "--bless"],
        &[("PEAK_KIB", "2048")],
    );
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(read(), blessed);

    let (code, text) = human(&with(&gated, &["--tolerance", "ten"]), &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("is not a percentage"), "{text}");
}
