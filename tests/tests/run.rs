//! `cargo memleak run` on the Rust fixture (fixtures/leaky): built with frame pointers in its
//! own target dir, then traced. Rust's runtime leaves a few blocks of its own outstanding at
//! exit, so these tests look at the stacks through the fixture's functions, exactly.

use std::sync::OnceLock;

use memleak_tests::{
    Run, assert_complete, assert_single_leak, frames, marker_line, memleak, memleak_raw,
    privileged, rust_fixture_source, symbol_of, workspace_root,
};

fn manifest() -> String {
    workspace_root()
        .join("fixtures/leaky/Cargo.toml")
        .to_string_lossy()
        .into_owned()
}

/// `cargo memleak run` on the fixture with these modes.
fn run_fixture(modes: &[&str]) -> Run {
    let manifest = manifest();
    let mut args = vec!["run", "--manifest-path", &manifest, "--"];
    args.extend_from_slice(modes);
    memleak(&args)
}

/// One traced run of every leaking mode (building the fixture takes a while; share it).
fn all_modes() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        run_fixture(&[
            "malloc", "calloc", "realloc", "mmap", "vec", "inlined", "thread", "ctor", "churn",
        ])
    })
}

fn check(symbol: &str, mode: &str) {
    let run = all_modes();
    // Lost memory and no budget for it (fixtures/leaky has no baseline): the gate fails.
    assert_eq!(run.code, 100, "stderr: {}", run.stderr);
    assert_complete(run);
    let line = marker_line(&rust_fixture_source(), mode);
    assert_single_leak(run, symbol, 30000, "main.rs", line);
}

macro_rules! leak_tests {
    ($($test:ident: $symbol:literal at $mode:literal;)*) => {$(
        #[test]
        fn $test() {
            if privileged(stringify!($test)) {
                check($symbol, $mode);
            }
        }
    )*};
}

leak_tests! {
    libc_malloc_from_rust: "leaky::leak_malloc" at "malloc";
    libc_calloc_from_rust: "leaky::leak_calloc" at "calloc";
    libc_realloc_from_rust: "leaky::leak_realloc" at "realloc";
    libc_mmap_from_rust: "leaky::leak_mmap" at "mmap";
    rust_global_allocator: "leaky::leak_vec" at "vec";
    leak_on_a_spawned_thread: "leaky::leak_on_thread::{closure#0}" at "thread";
    leak_in_a_constructor_before_main: "leaky::leak_in_constructor" at "ctor";
}

#[test]
fn inlined_functions_are_frames_of_their_own() {
    if !privileged("inlined_functions_are_frames_of_their_own") {
        return;
    }
    check("leaky::inlined_leaker", "inlined");
    let run = all_modes();
    let stack = run.stacks_with("leaky::inlined_leaker")[0];
    let frames = frames(stack);
    let inlined = frames
        .iter()
        .position(|frame| symbol_of(frame) == "leaky::inlined_leaker")
        .expect("the inlined frame");
    assert_eq!(frames[inlined]["inlined"], true);
    // Its caller, at the line of the call.
    let caller = &frames[inlined + 1];
    assert_eq!(symbol_of(caller), "leaky::leak_through_inlined");
    assert_eq!(caller["inlined"], false);
    let source = std::fs::read_to_string(rust_fixture_source()).unwrap();
    let call_line = source
        .lines()
        .position(|line| line.contains("black_box(inlined_leaker())"))
        .expect("the call") as u64
        + 1;
    assert_eq!(caller["line"], call_line);
}

/// `cargo memleak run` on the fixture with these report options and modes, as text: its exit
/// code and the report's lines (from the heading to the summary).
fn text_report(options: &[&str], modes: &[&str]) -> (Option<i32>, Vec<String>) {
    let manifest = manifest();
    let mut args = vec!["run", "--manifest-path", &manifest];
    args.extend_from_slice(options);
    args.push("--");
    args.extend_from_slice(modes);
    let output = memleak_raw(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<String> = stderr
        .lines()
        .skip_while(|line| !line.contains("] Top "))
        .take_while(|line| !line.starts_with("memleak: leaky::bin/leaky"))
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "a report: {stderr}");
    (output.status.code(), lines)
}

/// Its width on a terminal with tab stops every 8 columns.
fn columns(line: &str) -> usize {
    line.chars().fold(0, |width, c| {
        if c == '\t' {
            width / 8 * 8 + 8
        } else {
            width + 1
        }
    })
}

/// The text report shows each stack from the program's own frame, paths relative to the
/// workspace, no offsets or hashes, the standard library's runtime below `main` and below a
/// thread's closure cut with a count, and no line past 160 columns; `--full-stacks` shows every
/// frame, and `--format bcc` is BCC's text with its one summary line.
#[test]
fn the_text_report_starts_at_the_programs_own_line() {
    if !privileged("the_text_report_starts_at_the_programs_own_line") {
        return;
    }
    let modes = ["vec", "thread", "inlined"];
    let (code, short) = text_report(&[], &modes);
    assert_eq!(code, Some(100), "{short:#?}");
    let source = rust_fixture_source();
    let firsts: Vec<&str> = short
        .windows(2)
        .filter(|pair| pair[0].ends_with("allocations from stack (definitely lost)"))
        .map(|pair| pair[1].as_str())
        .collect();
    for (symbol, mode, suffix) in [
        ("leaky::leak_vec", "vec", ""),
        ("leaky::leak_on_thread::{closure#0}", "thread", ""),
        ("leaky::inlined_leaker", "inlined", " [inlined]"),
    ] {
        let line = format!(
            "\t\t{symbol} (src/main.rs:{}){suffix}",
            marker_line(&source, mode)
        );
        assert!(firsts.contains(&line.as_str()), "{line:?} in {short:#?}");
    }
    assert_eq!(firsts.len(), 3, "{short:#?}");
    let counts: Vec<&String> = short
        .iter()
        .filter(|line| line.contains("frames of the allocator above"))
        .collect();
    assert_eq!(counts.len(), 3, "{short:#?}");
    for count in counts {
        assert!(
            count.ends_with(
                " of the standard library and the runtime below; --full-stacks shows them)"
            ),
            "{count}"
        );
    }
    for line in &short {
        assert!(columns(line) <= 160, "{} columns: {line}", columns(line));
        assert!(
            !line.contains("+0x") && !line.contains("/rustc/") && !line.contains("lang_start"),
            "{line}"
        );
    }
    let summary = &short[short.len() - 3..];
    assert!(
        summary[0].starts_with("memleak: `target/memleak/debug/leaky vec thread inlined` exit code 0: 90000 bytes lost in 3 blocks"),
        "{summary:#?}"
    );
    assert!(
        summary[1].starts_with("memleak: traced ") && summary[1].ends_with("; dropped: none"),
        "{summary:#?}"
    );
    assert!(
        summary[2].starts_with("memleak: peak heap "),
        "{summary:#?}"
    );

    let (_, full) = text_report(&["--full-stacks"], &modes);
    for frame in [
        "\t\tleaky::leak_vec+0x",
        "\t\tstd::rt::lang_start_internal+0x",
    ] {
        assert!(
            full.iter().any(|line| line.starts_with(frame)),
            "{frame:?} in {full:#?}"
        );
    }
    let (_, bcc) = text_report(&["--format", "bcc"], &modes);
    assert!(
        bcc.iter()
            .any(|line| line.starts_with("\t\tleaky::leak_vec+0x")),
        "{bcc:#?}"
    );
    let summary = bcc.last().expect("a summary line");
    assert!(
        summary.starts_with("memleak: `/")
            && summary.contains("/target/memleak/debug/leaky vec thread inlined` exit code 0")
            && summary.contains("; traced ")
            && summary.ends_with("; dropped: none"),
        "{summary}"
    );
}

#[test]
fn churn_and_freed_memory_never_appear() {
    if !privileged("churn_and_freed_memory_never_appear") {
        return;
    }
    let run = all_modes();
    assert!(
        run.stacks_with("leaky::churn").is_empty(),
        "{:#}",
        run.report
    );
    // realloc's first block (100 bytes) was freed by the realloc.
    for stack in run.stacks_with("leaky::leak_realloc") {
        assert_eq!(stack["bytes"], 30000);
    }
    assert!(run.counter("allocs") > 80_000, "churn was traced");
    assert_eq!(run.counter("free_unknown"), 0);
}

#[test]
fn a_panicking_abort_still_reports() {
    if !privileged("a_panicking_abort_still_reports") {
        return;
    }
    let run = run_fixture(&["malloc", "abort"]);
    assert_eq!(run.code, 1, "the program failed; stderr: {}", run.stderr);
    assert_eq!(
        run.report["exit"],
        serde_json::json!({"kind": "signaled", "signal": "SIGABRT", "core_dumped": false}),
        "{:#}",
        run.report
    );
    let line = marker_line(&rust_fixture_source(), "malloc");
    assert_single_leak(&run, "leaky::leak_malloc", 30000, "main.rs", line);
}

#[test]
fn the_binary_gets_its_arguments_and_exit_code() {
    if !privileged("the_binary_gets_its_arguments_and_exit_code") {
        return;
    }
    let run = run_fixture(&["malloc", "fail"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.report["exit"],
        serde_json::json!({"kind": "exited", "code": 3})
    );
}

#[test]
fn a_build_failure_is_exit_101() {
    if !privileged("a_build_failure_is_exit_101") {
        return;
    }
    let run = memleak(&[
        "run",
        "--manifest-path",
        &manifest(),
        "--bin",
        "no-such-bin",
    ]);
    assert_eq!(run.code, 101, "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("error: cargo build failed")
    );
}

#[test]
fn a_missing_manifest_is_exit_102() {
    let run = memleak(&["run", "--manifest-path", "/nonexistent/Cargo.toml"]);
    assert_eq!(run.code, 102, "stderr: {}", run.stderr);
    assert!(
        run.stderr.starts_with("error: `cargo metadata` failed: "),
        "{}",
        run.stderr
    );
}
