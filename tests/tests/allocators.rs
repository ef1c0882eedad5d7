//! Every allocator seen: the same tests under tikv-jemallocator, mimalloc, a hand-written bump
//! `GlobalAlloc` and the system allocator (fixtures/allocators). Each leaking test fails with
//! exactly its 30000 bytes at the leaking frame; every clean one passes. A program whose
//! allocator cannot be traced is never reported clean.

use std::{path::Path, process::Command};

use memleak_tests::{cargo_memleak, marker_line, privileged, workspace_root};
use serde_json::Value;

/// `cargo memleak test` on the fixture: every test-finished event.
fn results() -> Vec<Value> {
    let output = Command::new(cargo_memleak())
        .args(["test", "--message-format", "json", "--manifest-path"])
        .arg(workspace_root().join("fixtures/allocators/Cargo.toml"))
        .output()
        .expect("cargo memleak test runs");
    assert_eq!(
        output.status.code(),
        Some(100),
        "the leaking tests fail; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["event"] == "test-finished")
        .collect()
}

#[test]
fn a_leak_fails_under_every_global_allocator_and_clean_tests_pass() {
    if !privileged("a_leak_fails_under_every_global_allocator_and_clean_tests_pass") {
        return;
    }
    let results = results();
    let source = workspace_root().join("fixtures/allocators/tests/common/scenarios.rs");
    let line = marker_line(&source, "leak_a_vec");
    for allocator in ["jemalloc", "mimalloc", "bump", "system"] {
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
                            .is_some_and(|s| s.ends_with("::leak_a_vec"))
                    })
                    .unwrap_or_else(|| panic!("{binary}: the leaking frame: {result:#}"));
                assert_eq!(frame["line"], line, "{binary}: {frame:#}");
            } else {
                assert_eq!(result["result"], "ok", "{binary} {test}: {result:#}");
            }
        }
    }
}

#[test]
fn a_program_with_its_own_malloc_is_never_reported_clean() {
    if !privileged("a_program_with_its_own_malloc_is_never_reported_clean") {
        return;
    }
    let out_dir = workspace_root().join("target/fixtures");
    std::fs::create_dir_all(&out_dir).expect("target/fixtures");
    let source = out_dir.join("own-malloc.c");
    std::fs::write(
        &source,
        "#include <stddef.h>\n\
         static char arena[1 << 20]; static size_t used;\n\
         void *malloc(size_t n) { void *p = arena + used; used += (n + 15) & ~15UL; return p; }\n\
         void free(void *p) { (void)p; }\n\
         void *calloc(size_t a, size_t b) { return malloc(a * b); }\n\
         void *realloc(void *p, size_t n) { (void)p; return malloc(n); }\n\
         int main(void) { void *volatile p = malloc(30000); p = 0; return 0; }\n",
    )
    .expect("write the source");
    let binary = out_dir.join(format!("own-malloc-{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(status.success());
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
    let output = run(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "incomplete: {stderr}");
    assert!(
        stderr.contains("defines malloc itself") && stderr.contains("--allocator-object"),
        "{stderr}"
    );
    // With its allocator named, its leak is found.
    let output = run(&[&binary]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("definitely lost: 30000 bytes in 1 blocks"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(binary);
}
