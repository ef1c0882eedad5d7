//! Every allocator seen: the same tests under tikv-jemallocator, mimalloc, a hand-written bump
//! `GlobalAlloc` and the system allocator (fixtures/allocators). Each leaking test fails with
//! exactly its 30000 bytes at the leaking frame; every clean one passes. A program whose
//! allocator cannot be traced is never reported clean.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use memleak_tests::{
    Periodic, cargo_memleak, fixture_test_binary, frames, leak_summary, marker_line, memleak,
    privileged, report_stacks_with, scratch, symbol_of, test_finished, workspace_root,
};
use serde_json::Value;

/// `cargo memleak test` on the fixture with `args`, in `env`: every test-finished event of a
/// test that ran.
fn results(args: &[&str], env: &[(&str, &str)]) -> Vec<Value> {
    let run = test_finished("allocators", args, env);
    assert_eq!(
        run.code,
        Some(100),
        "the leaking tests fail: {}",
        run.stderr
    );
    run.tests
        .into_iter()
        .filter(|event| event["result"] != "ignored")
        .collect()
}

/// Checks that `allocator`'s leaking test failed with exactly its 30000 bytes at the leaking
/// frame, and its clean tests passed, all completely traced.
fn check_allocator(results: &[Value], allocator: &str) {
    let source = workspace_root().join("fixtures/allocators/tests/common/scenarios.rs");
    let line = marker_line(&source, "leak_a_vec");
    let binary = format!("allocators::{allocator}");
    let of_binary: Vec<&Value> = results
        .iter()
        .filter(|r| r["binary_id"] == binary)
        .collect();
    assert_eq!(of_binary.len(), 5, "{binary}: five tests ran");
    for result in of_binary {
        let test = result["test"].as_str().unwrap_or_default();
        assert_eq!(
            result["incomplete"],
            serde_json::json!([]),
            "{binary} {test}: {result:#}"
        );
        if test == "leaks_a_vec" {
            assert_eq!(result["result"], "failed", "{binary}: {result:#}");
            assert_eq!(
                result["lost"],
                serde_json::json!({"bytes": 30000, "blocks": 1}),
                "{binary}: {result:#}"
            );
            let frame = result["stacks"][0]["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|frame| {
                    frame["symbol"]
                        .as_str()
                        // Line tables alone (a release build) name it without its path.
                        .is_some_and(|s| s.rsplit("::").next() == Some("leak_a_vec"))
                })
                .unwrap_or_else(|| panic!("{binary}: the leaking frame: {result:#}"));
            assert_eq!(frame["line"], line, "{binary}: {frame:#}");
        } else {
            assert_eq!(result["result"], "ok", "{binary} {test}: {result:#}");
        }
    }
}

#[test]
fn a_leak_fails_under_every_global_allocator_and_clean_tests_pass() {
    if !privileged("a_leak_fails_under_every_global_allocator_and_clean_tests_pass") {
        return;
    }
    let results = results(&[], &[]);
    for allocator in ["jemalloc", "mimalloc", "bump", "system"] {
        check_allocator(&results, allocator);
    }
}

/// The frames after the first `heading` line of `text` that belong to its stack.
fn stack_after<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|line| !line.ends_with(heading))
        .skip(1)
        .take_while(|line| line.starts_with("\t\t"))
        .collect()
}

/// Under every allocator the text reports of `exec` and of `test` start at the leaking line:
/// the allocator's own frames, and the standard library's allocation code, are cut with a
/// count.
#[test]
fn the_leaking_line_comes_first_under_every_allocator() {
    if !privileged("the_leaking_line_comes_first_under_every_allocator") {
        return;
    }
    let line = marker_line(
        &workspace_root().join("fixtures/allocators/tests/common/scenarios.rs"),
        "leak_a_vec",
    );
    let heading = "30000 bytes in 1 allocations from stack (definitely lost)";
    let allocators = ["jemalloc", "mimalloc", "bump", "system"];
    for allocator in allocators {
        let binary = fixture_test_binary("allocators", allocator);
        let output = Command::new(cargo_memleak())
            .arg("exec")
            .arg("--")
            .arg(&binary)
            .args(["--exact", "leaks_a_vec"])
            .output()
            .expect("cargo-memleak runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        let stack = stack_after(&stderr, heading);
        let first = format!("\t\t{allocator}::leak_a_vec (");
        let at = format!("fixtures/allocators/tests/common/scenarios.rs:{line})");
        assert!(
            stack
                .first()
                .is_some_and(|frame| frame.starts_with(&first) && frame.ends_with(&at)),
            "{allocator}: {stderr}"
        );
    }
    let output = Command::new(cargo_memleak())
        .args(["test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/allocators/Cargo.toml"))
        .args(["--", "--exact", "leaks_a_vec"])
        .output()
        .expect("cargo-memleak runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(100), "{stdout}");
    for allocator in allocators {
        let failure = format!("---- [allocators::{allocator}] leaks_a_vec ----");
        let (_, text) = stdout
            .split_once(&failure)
            .unwrap_or_else(|| panic!("{failure}: {stdout}"));
        let stack = stack_after(text, heading);
        let first = format!("\t\t{allocator}::leak_a_vec (tests/common/scenarios.rs:{line})");
        assert_eq!(
            stack.first(),
            Some(&first.as_str()),
            "{allocator}: {stdout}"
        );
    }
    // The budgets' stack keys start there too.
    let baseline = scratch("leaking-line-first").join("memleak-baseline.json");
    let blessed = Command::new(cargo_memleak())
        .args(["test", "--bless", "--baseline"])
        .arg(&baseline)
        .arg("--manifest-path")
        .arg(workspace_root().join("fixtures/allocators/Cargo.toml"))
        .args(["--", "--exact", "leaks_a_vec"])
        .output()
        .expect("cargo-memleak runs");
    assert_eq!(blessed.status.code(), Some(0), "{blessed:?}");
    let baseline: Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).expect("the baseline"))
            .expect("JSON");
    for allocator in allocators {
        let entry = &baseline["tests"][format!("allocators::{allocator}")]["leaks_a_vec"];
        assert_eq!(
            entry["stacks"][0]["frames"][0],
            format!("{allocator}::leak_a_vec"),
            "{baseline:#}"
        );
    }
}

/// Fat LTO inlines the shim away, wholly (mimalloc) or in part (jemalloc's `__rust_alloc_zeroed`,
/// the bump allocator's no-op `__rust_dealloc`): jemalloc and mimalloc are then traced by their
/// own symbols, and the bump allocator, which has none, is reported untraced, never clean.
#[test]
fn under_lto_known_allocators_are_traced_by_their_own_symbols() {
    if !privileged("under_lto_known_allocators_are_traced_by_their_own_symbols") {
        return;
    }
    let results = results(
        &[
            "--release",
            "--test",
            "jemalloc",
            "--test",
            "mimalloc",
            "--test",
            "bump",
        ],
        &[
            ("CARGO_PROFILE_RELEASE_LTO", "fat"),
            ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1"),
        ],
    );
    check_allocator(&results, "jemalloc");
    check_allocator(&results, "mimalloc");
    let bump: Vec<&Value> = results
        .iter()
        .filter(|r| r["binary_id"] == "allocators::bump")
        .collect();
    assert_eq!(bump.len(), 5, "{results:#?}");
    for result in bump {
        assert_eq!(result["result"], "failed", "{result:#}");
        let incomplete = result["incomplete"].to_string();
        assert!(
            incomplete.contains("were not traced") && incomplete.contains("--symbols-prefix"),
            "{result:#}"
        );
    }
}

/// The jemalloc scenarios' test binary, in `serves` mode: READY once started, KEPT after
/// each `a`.
struct Served {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Served {
    fn start(binary: &Path) -> Self {
        let mut child = Command::new(binary)
            .args([
                "--exact",
                "serves",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the test binary starts");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut served = Self { child, lines };
        served.wait_for("READY");
        served
    }

    fn wait_for(&mut self, word: &str) {
        let found = self
            .lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.trim() == word);
        assert!(found, "the test binary said {word}");
    }

    fn keep(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        stdin.write_all(b"a").expect("sent");
        stdin.flush().expect("flushed");
        self.wait_for("KEPT");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn exec_and_attach_see_a_jemalloc_program() {
    if !privileged("exec_and_attach_see_a_jemalloc_program") {
        return;
    }
    let binary = fixture_test_binary("allocators", "jemalloc");
    let source = workspace_root().join("fixtures/allocators/tests/common/scenarios.rs");

    let binary_path = binary.to_str().expect("a UTF-8 path");
    let run = memleak(&["exec", "--", binary_path, "--exact", "leaks_a_vec"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(leak_summary(&run)[0], (30000, 1), "{}", run.report);
    let lost = report_stacks_with(&run.report, "leak_a_vec");
    assert_eq!(lost.len(), 1, "{}", run.report);
    assert_eq!(lost[0]["bytes"], 30000, "{}", run.report);
    assert_eq!(
        run.report["incomplete"],
        serde_json::json!([]),
        "{}",
        run.report
    );

    let mut served = Served::start(&binary);
    let pid = served.child.id().to_string();
    let mut memleak = Periodic::start(&[
        "attach", "-p", &pid, "--older", "0", "--format", "json", "0.2",
    ]);
    memleak.wait_for_stderr("Attaching to pid", Duration::from_secs(20));
    served.keep();
    served.keep();
    let report =
        memleak.wait_for_report("the two kept blocks", Duration::from_secs(20), |report| {
            !report_stacks_with(report, "serve_keep").is_empty()
        });
    let kept = report_stacks_with(&report, "serve_keep");
    assert_eq!(kept.len(), 1, "{report:#}");
    assert_eq!(kept[0]["bytes"], 60000, "{report:#}");
    assert_eq!(kept[0]["allocations"], 2, "{report:#}");
    let frame = frames(kept[0])
        .iter()
        .find(|frame| symbol_of(frame).ends_with("serve_keep"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        frame["line"],
        marker_line(&source, "serve_keep"),
        "{report:#}"
    );
    assert_eq!(report["incomplete"], serde_json::json!([]), "{report:#}");
    drop(served);
    let (code, stderr) = memleak.wait_exit(Duration::from_secs(20));
    assert_eq!(code, 0, "{stderr}");
}

/// Compiles the C program `text` as `target/fixtures/<name>.c`: the source's path and the
/// binary's (unique to this test process).
fn compile_c(name: &str, text: &str) -> (PathBuf, PathBuf) {
    let out_dir = workspace_root().join("target/fixtures");
    std::fs::create_dir_all(&out_dir).expect("target/fixtures");
    let source = out_dir.join(format!("{name}.c"));
    std::fs::write(&source, text).expect("write the source");
    let binary = out_dir.join(format!("{name}-{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(status.success(), "cc {}", source.display());
    (source, binary)
}

#[test]
fn a_program_with_its_own_malloc_has_it_probed() {
    if !privileged("a_program_with_its_own_malloc_has_it_probed") {
        return;
    }
    let (_, binary) = compile_c(
        "own-malloc",
        "#include <stddef.h>\n\
         static char arena[1 << 20]; static size_t used;\n\
         void *malloc(size_t n) { void *p = arena + used; used += (n + 15) & ~15UL; return p; }\n\
         void free(void *p) { (void)p; }\n\
         void *calloc(size_t a, size_t b) { return malloc(a * b); }\n\
         void *realloc(void *p, size_t n) { (void)p; return malloc(n); }\n\
         int main(void) { void *volatile p = malloc(30000); p = 0; return 0; }\n",
    );
    let run = |extra: &[&Path]| {
        Command::new(cargo_memleak())
            .arg("exec")
            .args(
                extra
                    .iter()
                    .flat_map(|path| [Path::new("--allocator-object"), path]),
            )
            .arg("--")
            .arg(&binary)
            .output()
            .expect("cargo-memleak runs")
    };
    // Its own malloc family is found in it and probed: the leak is seen, and the run is
    // complete. Naming it with --allocator-object gives the same.
    for extra in [&[][..], &[binary.as_path()][..]] {
        let output = run(extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("definitely lost: 30000 bytes in 1 blocks")
                && !stderr.contains("INCOMPLETE"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_file(binary);
}

/// BCC's `--symbols-prefix`: an allocator of the program's own under a prefix of its own.
#[test]
fn symbols_prefix_probes_a_prefixed_allocator_in_the_executable() {
    if !privileged("symbols_prefix_probes_a_prefixed_allocator_in_the_executable") {
        return;
    }
    let (source, binary) = compile_c(
        "prefixed-malloc",
        "#include <stddef.h>\n\
         static char arena[1 << 20]; static size_t used;\n\
         void *my_malloc(size_t n) { void *p = arena + used; used += (n + 15) & ~15UL; return p; }\n\
         void my_free(void *p) { (void)p; }\n\
         static void *kept;\n\
         int main(void) {\n\
           void *volatile lost = my_malloc(30000); /* LEAK:my_malloc */\n\
           lost = 0; kept = my_malloc(100); my_free(my_malloc(50)); return 0;\n\
         }\n",
    );
    let binary_path = binary.to_str().expect("a UTF-8 path");
    let run = memleak(&["exec", "--symbols-prefix", "my_", "--", binary_path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(leak_summary(&run)[0], (30000, 1), "{}", run.report);
    assert_eq!(leak_summary(&run)[2], (100, 1), "{}", run.report);
    let lost = report_stacks_with(&run.report, "main");
    let frame = frames(lost[0])
        .iter()
        .find(|frame| symbol_of(frame) == "main")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        frame["line"],
        marker_line(&source, "my_malloc"),
        "{}",
        run.report
    );
    let _ = std::fs::remove_file(binary);
}
