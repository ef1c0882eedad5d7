//! `cargo memleak exec` on the C fixture: every allocator entry point, traced for real.
//!
//! The C fixture allocates nothing but what it is asked to (no stdio), so each report must hold
//! exactly the leak: one stack, its bytes, one allocation, the leaking function first, at the
//! marked line.

use memleak_tests::{
    assert_complete, assert_single_leak, c_fixture, c_fixture_source, frames, marker_line, memleak,
    memleak_raw, privileged, symbol_of,
};

/// Traces `leaky-c <mode>` and checks the report is exactly one leak of `bytes` from
/// `function`, at the line marked `LEAK:<mode>`.
fn check_single_leak(mode: &str, function: &str, bytes: u64) {
    let fixture = c_fixture().to_str().expect("utf-8 path");
    let run = memleak(&["exec", "--", fixture, mode]);
    assert_eq!(run.code, 0, "{mode}: exit code; stderr: {}", run.stderr);
    assert_complete(&run);
    assert_eq!(
        run.stacks().len(),
        1,
        "{mode}: exactly one stack: {:#}",
        run.report
    );
    assert_eq!(
        run.report["outstanding_bytes"], bytes,
        "{mode}: {:#}",
        run.report
    );
    assert_eq!(
        run.report["outstanding_allocations"], 1,
        "{mode}: {:#}",
        run.report
    );
    let line = marker_line(&c_fixture_source(), mode);
    assert_single_leak(&run, function, bytes, "leaky.c", line);
    let first = &frames(&run.stacks()[0])[0];
    assert_eq!(
        symbol_of(first),
        function,
        "{mode}: the leaking function is the top frame"
    );
}

macro_rules! single_leak_tests {
    ($($test:ident: $mode:literal via $function:literal = $bytes:expr;)*) => {$(
        #[test]
        fn $test() {
            if privileged(stringify!($test)) {
                check_single_leak($mode, $function, $bytes);
            }
        }
    )*};
}

single_leak_tests! {
    malloc_leak: "malloc" via "leak_malloc" = 30000;
    calloc_leak: "calloc" via "leak_calloc" = 30000;
    realloc_that_moves_leaks_the_new_block: "realloc" via "leak_realloc" = 30000;
    realloc_of_null_is_an_allocation: "realloc-null" via "leak_realloc_null" = 30000;
    reallocarray_leak: "reallocarray" via "leak_reallocarray" = 30000;
    posix_memalign_reads_the_out_pointer: "posix-memalign" via "leak_posix_memalign" = 30000;
    aligned_alloc_leak: "aligned-alloc" via "leak_aligned_alloc" = 30000;
    memalign_leak: "memalign" via "leak_memalign" = 30000;
    valloc_leak: "valloc" via "leak_valloc" = 30000;
    pvalloc_leak: "pvalloc" via "leak_pvalloc" = 30000;
    mmap_leak: "mmap" via "leak_mmap" = 30000;
    mremap_moves_the_mapping: "mremap" via "leak_mremap" = 30000;
    large_malloc_is_one_allocation_not_two: "big" via "leak_big" = 1 << 20;
    failed_realloc_frees_nothing: "failed-realloc" via "leak_failed_realloc" = 30000;
}

/// Traces modes that free everything they allocate.
fn check_nothing_leaks(mode: &str) -> memleak_tests::Run {
    let fixture = c_fixture().to_str().expect("utf-8 path");
    let run = memleak(&["exec", "--", fixture, mode]);
    assert_eq!(run.code, 0, "{mode}: stderr: {}", run.stderr);
    assert_complete(&run);
    assert_eq!(
        run.stacks().len(),
        0,
        "{mode}: nothing outstanding: {:#}",
        run.report
    );
    assert_eq!(run.report["outstanding_bytes"], 0);
    run
}

/// A realloc that moves frees its old block inside the call; another thread is often handed
/// that address (and records it) before the realloc returns. The old block's record leaves at
/// the realloc's entry, so the other thread's record stays: no free of an unknown block.
#[test]
fn a_realloc_racing_another_threads_malloc_keeps_every_record() {
    if !privileged("a_realloc_racing_another_threads_malloc_keeps_every_record") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    let run = memleak(&["exec", "--", fixture, "realloc-race"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_complete(&run);
    assert_eq!(run.counter("free_unknown"), 0, "{:#}", run.report);
    assert_eq!(run.report["leak_summary"]["definitely_lost"]["blocks"], 0);
    // 100000 rounds of malloc, guard and realloc on one thread, malloc and free on the other.
    assert!(run.counter("frees") >= 300_000, "{:#}", run.report);
}

/// A thread killed by the process's exit before its exit stop could be had (often before it
/// ran at all) still owns what lies above where it started: its start argument, a block only
/// glibc's thread descriptor points to, is never lost (memcheck: still reachable). Twenty
/// runs: the thread was killed that way in about one run in four before this rule.
#[test]
fn a_thread_killed_as_it_starts_keeps_its_start_argument() {
    if !privileged("a_thread_killed_as_it_starts_keeps_its_start_argument") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    for _ in 0..20 {
        let run = memleak(&["exec", "--", fixture, "start-thread-and-exit"]);
        assert_eq!(run.code, 0, "stderr: {}", run.stderr);
        assert_eq!(
            run.report["leak_summary"]["definitely_lost"]["blocks"], 0,
            "{:#}",
            run.report
        );
    }
}

#[test]
fn realloc_to_zero_frees_the_block() {
    if privileged("realloc_to_zero_frees_the_block") {
        let run = check_nothing_leaks("realloc-zero");
        assert_eq!(run.counter("allocs"), 1);
        assert_eq!(run.counter("frees"), 1);
    }
}

#[test]
fn munmap_releases_the_mapping() {
    if privileged("munmap_releases_the_mapping") {
        let run = check_nothing_leaks("munmap");
        assert_eq!(run.counter("allocs"), 1);
        assert_eq!(run.counter("frees"), 1);
    }
}

#[test]
fn churn_is_counted_exactly_and_never_reported() {
    if privileged("churn_is_counted_exactly_and_never_reported") {
        let run = check_nothing_leaks("churn");
        // 20000 iterations of malloc, calloc, realloc, posix_memalign (4 allocations) and
        // realloc's release of the old block plus three frees (4 frees).
        assert_eq!(run.counter("allocs"), 80_000);
        assert_eq!(run.counter("frees"), 80_000);
    }
}

#[test]
fn several_modes_in_one_process_add_up() {
    if privileged("several_modes_in_one_process_add_up") {
        let fixture = c_fixture().to_str().expect("utf-8 path");
        let run = memleak(&["exec", "--", fixture, "malloc", "churn", "mmap", "calloc"]);
        assert_eq!(run.code, 0, "stderr: {}", run.stderr);
        assert_complete(&run);
        assert_eq!(run.stacks().len(), 3, "{:#}", run.report);
        assert_eq!(run.report["outstanding_bytes"], 90_000);
        assert_eq!(run.report["outstanding_allocations"], 3);
    }
}

#[test]
fn bcc_format_is_bccs_wording() {
    if !privileged("bcc_format_is_bccs_wording") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    let output = memleak_raw(&["exec", "--format", "bcc", "--", fixture, "malloc"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let line = marker_line(&c_fixture_source(), "malloc");
    assert!(
        stderr.contains("] Top 1 stacks with lost allocations:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\t30000 bytes in 1 allocations from stack (definitely lost)\n"),
        "{stderr}"
    );
    let frame = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("leak_malloc+0x"))
        .unwrap_or_else(|| panic!("a leak_malloc frame: {stderr}"));
    assert!(
        frame.ends_with(&format!(
            "leaky.c:{line}) [{}]",
            c_fixture().file_name().unwrap().to_string_lossy()
        )),
        "{frame}"
    );
    let summary = stderr.lines().last().expect("a summary line");
    assert!(summary.starts_with("memleak: `"), "{summary}");
    assert!(
        summary.contains(
            "exit code 0: 30000 bytes lost in 1 blocks, 30000 bytes outstanding in 1 allocations"
        ),
        "{summary}"
    );
    assert!(summary.ends_with("dropped: none"), "{summary}");
}

/// The default text report: BCC's layout, each stack in the short view (the program's own
/// frames, libc's start below `main` cut with a count, no offsets), the summary on two lines.
#[test]
fn text_report_shows_the_programs_own_frames() {
    if !privileged("text_report_shows_the_programs_own_frames") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    let output = memleak_raw(&["exec", "--", fixture, "malloc"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let source = c_fixture_source();
    let heading = "\t30000 bytes in 1 allocations from stack (definitely lost)";
    let stack: Vec<&str> = stderr
        .lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| line.starts_with("\t\t"))
        .collect();
    // Relative to the current directory, as the compiler was given it.
    let line = format!("fixtures/c/leaky.c:{})", marker_line(&source, "malloc"));
    assert!(
        stack[0].starts_with("\t\tleak_malloc (") && stack[0].ends_with(&line),
        "{stderr}"
    );
    assert!(stack[1].starts_with("\t\tmain ("), "{stderr}");
    assert!(
        stack[2].starts_with("\t\t(0 frames of the allocator above, ")
            && stack[2].ends_with(
                " of the standard library and the runtime below; --full-stacks shows them)"
            ),
        "{stderr}"
    );
    assert_eq!(stack.len(), 3, "{stderr}");
    let summary: Vec<&str> = stderr.lines().rev().take(3).collect();
    assert!(
        summary[0].starts_with("memleak: peak heap 30000 bytes, reached at leak_malloc ("),
        "{stderr}"
    );
    assert!(summary[1].starts_with("memleak: traced "), "{stderr}");
    assert!(
        summary[2].ends_with(
            "exit code 0: 30000 bytes lost in 1 blocks, 30000 bytes outstanding in 1 allocations"
        ),
        "{stderr}"
    );
}

/// The heap's peak and what was allocated are exact: by construction on one thread, and under
/// four threads allocating at once (two runs whose peaks differ by exactly their blocks).
#[test]
fn the_heaps_peak_and_allocations_are_exact() {
    if !privileged("the_heaps_peak_and_allocations_are_exact") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    let run = memleak(&["exec", "--", fixture, "peak"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_complete(&run);
    let heap = &run.report["heap"];
    assert_eq!(heap["peak_bytes"], 1 << 20, "{heap:#}");
    assert_eq!(heap["allocations"], 101, "{heap:#}");
    assert_eq!(heap["allocated_bytes"], (1 << 20) + 100 * 1024, "{heap:#}");
    let set_by = &heap["peak_stack"][0];
    assert_eq!(symbol_of(set_by), "peak_big", "{heap:#}");
    assert_eq!(
        set_by["line"],
        marker_line(&c_fixture_source(), "peak"),
        "{heap:#}"
    );

    let output = memleak_raw(&["exec", "--", fixture, "peak"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|line| line.starts_with("memleak: peak heap "))
        .unwrap_or_else(|| panic!("a heap line: {stderr}"));
    assert!(
        line.starts_with("memleak: peak heap 1048576 bytes, reached at peak_big (")
            && line.ends_with("; 101 allocations of 1150976 bytes in all"),
        "{line}"
    );

    let peak = |mode: &str| {
        let run = memleak(&["exec", "--", fixture, mode]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_complete(&run);
        run.report["heap"]["peak_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{mode}: a peak: {:#}", run.report))
    };
    for _ in 0..3 {
        assert_eq!(peak("peak-threads-2") - peak("peak-threads-1"), 400_000);
    }
}

#[test]
fn report_options_filter_sort_and_cut() {
    if !privileged("report_options_filter_sort_and_cut") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    // 1 MiB from leak_big, 30000 from leak_malloc, 30000 from leak_calloc.
    let modes = [fixture, "big", "malloc", "calloc"];
    let args = |extra: &[&'static str]| -> Vec<&str> {
        let mut args = vec!["exec"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(&modes);
        args
    };
    let run = memleak(&args(&["--top", "1"]));
    assert_eq!(run.stacks().len(), 1);
    assert_eq!(run.report["matching_stacks"], 3);
    assert_eq!(run.stacks()[0]["bytes"], 1 << 20, "largest first");
    assert_eq!(
        run.report["outstanding_bytes"],
        (1 << 20) + 60_000,
        "totals ignore --top"
    );

    let run = memleak(&args(&["--max-size", "30000"]));
    assert_eq!(run.stacks().len(), 2, "{:#}", run.report);
    assert!(run.stacks_with("leak_big").is_empty());

    let run = memleak(&args(&["--min-size", "30001"]));
    assert_eq!(run.stacks().len(), 1);
    assert_eq!(run.stacks_with("leak_big").len(), 1);

    let run = memleak(&args(&["--show-allocs"]));
    for stack in run.stacks() {
        let allocs = stack["allocs"]
            .as_array()
            .expect("--show-allocs lists allocations");
        assert_eq!(allocs.len(), 1);
        assert_eq!(allocs[0]["size"], stack["bytes"]);
        assert_ne!(allocs[0]["addr"], 0);
    }
    let run = memleak(&args(&[]));
    assert!(
        run.stacks()[0].get("allocs").is_none(),
        "no addresses unless asked"
    );
}

#[test]
fn the_program_exit_status_is_passed_on() {
    if !privileged("the_program_exit_status_is_passed_on") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    // An unknown mode makes the fixture exit 2 after leaking.
    let run = memleak(&["exec", "--", fixture, "malloc", "no-such-mode"]);
    assert_eq!(run.code, 1, "a failed program fails the run");
    assert_eq!(
        run.report["exit"],
        serde_json::json!({"kind": "exited", "code": 2})
    );
    assert_eq!(
        run.report["outstanding_bytes"], 30000,
        "the leak is still reported"
    );
    assert!(
        run.stderr.contains("leaky: unknown mode"),
        "the program's stderr passes through"
    );
}

#[test]
fn program_not_found_is_one_line_and_exit_127() {
    if !privileged("program_not_found_is_one_line_and_exit_127") {
        return;
    }
    let output = memleak_raw(&["exec", "--", "no-such-program-memleak"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(127), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: program not found: `no-such-program-memleak`; check the name, or give a path"
    );
}

#[test]
fn programs_are_found_in_path_with_their_arguments() {
    if !privileged("programs_are_found_in_path_with_their_arguments") {
        return;
    }
    let output = memleak_raw(&["exec", "--", "sh", "-c", "echo \"$0 $1\"", "hello", "world"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello world\n");
}

#[test]
fn a_missing_allocator_object_is_exit_69() {
    if !privileged("a_missing_allocator_object_is_exit_69") {
        return;
    }
    let output = memleak_raw(&[
        "exec",
        "--allocator-object",
        "/nonexistent.so",
        "--",
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.starts_with("error: allocator object /nonexistent.so: "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_statically_linked_program_is_reported_incomplete() {
    if !privileged("a_statically_linked_program_is_reported_incomplete") {
        return;
    }
    let out_dir = memleak_tests::workspace_root().join("target/fixtures");
    std::fs::create_dir_all(&out_dir).expect("target/fixtures");
    let binary = out_dir.join(format!("leaky-c-static-{}", std::process::id()));
    let status = std::process::Command::new("cc")
        .args(["-static", "-O0", "-o"])
        .arg(&binary)
        .arg(c_fixture_source())
        .status()
        .expect("cc runs");
    assert!(status.success());
    let run = memleak(&["exec", "--", binary.to_str().unwrap(), "malloc"]);
    let _ = std::fs::remove_file(&binary);
    assert_eq!(run.code, 3, "incomplete is exit 3; stderr: {}", run.stderr);
    let reasons = run.report["incomplete"].to_string();
    assert!(reasons.contains("never loaded"), "{reasons}");
}

#[test]
fn bad_flags_are_usage_errors() {
    let output = memleak_raw(&["exec", "--sort", "sideways", "--", "true"]);
    assert_eq!(output.status.code(), Some(2));
    let output = memleak_raw(&["exec", "--min-size", "10", "--max-size", "5", "--", "true"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error: --min-size 10 is larger than --max-size 5; swap them"
    );
    let output = memleak_raw(&["exec"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn missing_privileges_are_exit_77() {
    if !privileged("missing_privileges_are_exit_77") {
        return;
    }
    // Drop root for one run: setpriv from util-linux.
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(memleak_tests::cargo_memleak())
        .args(["exec", "--", "true"])
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.starts_with("error: missing capabilities: CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE"),
        "{stderr}"
    );
}

#[test]
fn the_program_runs_with_a_fixed_layout_so_reports_repeat() {
    if !privileged("the_program_runs_with_a_fixed_layout_so_reports_repeat") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    let addr = || {
        let run = memleak(&["exec", "--show-allocs", "--", fixture, "malloc"]);
        run.stacks()[0]["allocs"][0]["addr"]
            .as_u64()
            .expect("an address")
    };
    assert_eq!(
        addr(),
        addr(),
        "address-space randomization is off for the program"
    );
}

/// A frame whose saved frame pointer is the first word of a page is walked past: the walker
/// copies that whole page (it once asked for no bytes there and ended the stack at it, which
/// an environment of the right size made happen for `deep-200`).
#[test]
fn a_frame_at_the_start_of_a_page_is_walked_past() {
    if !privileged("a_frame_at_the_start_of_a_page_is_walked_past") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    let run = memleak(&["exec", "--", fixture, "page-edge"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_complete(&run);
    let stack = &run.stacks()[0];
    let symbols: Vec<&str> = frames(stack).iter().map(symbol_of).collect();
    let expected = [
        "leak_deep",
        "descend",
        "descend",
        "descend",
        "descend",
        "on_page_edge",
        "below_pad",
        "leak_on_page_edge",
        "main",
    ];
    assert!(symbols.starts_with(&expected), "{symbols:?}");
}

/// Stacks deeper than a page are walked whole: 40 frames of `descend` (some 200 bytes each)
/// under the leak, then the mode's function and main; at 200 the stack is cut at the 127
/// frames the programs keep, all of them the fixture's.
#[test]
fn deep_stacks_are_walked_across_pages_to_their_end_or_the_cap() {
    if !privileged("deep_stacks_are_walked_across_pages_to_their_end_or_the_cap") {
        return;
    }
    let fixture = c_fixture().to_str().expect("utf-8 path");
    for (mode, descents, total) in [("deep-40", 40, None), ("deep-200", 126, Some(127))] {
        let run = memleak(&["exec", "--", fixture, mode]);
        assert_eq!(run.code, 0, "{mode}: {}", run.stderr);
        assert_complete(&run);
        let stack = &run.stacks()[0];
        let symbols: Vec<&str> = frames(stack).iter().map(symbol_of).collect();
        assert_eq!(symbols[0], "leak_deep", "{mode}: {symbols:?}");
        let descending = symbols[1..]
            .iter()
            .take_while(|symbol| **symbol == "descend")
            .count();
        assert_eq!(descending, descents, "{mode}: {symbols:?}");
        match total {
            Some(total) => assert_eq!(symbols.len(), total, "{mode}: {symbols:?}"),
            None => {
                let rest = &symbols[1 + descents..];
                assert!(
                    rest.starts_with(&["leak_deep_40"]) && rest.contains(&"main"),
                    "{mode}: the chain goes on to main: {symbols:?}"
                );
            }
        }
    }
}
