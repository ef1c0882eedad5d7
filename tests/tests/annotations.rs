//! GitHub Actions: with `GITHUB_ACTIONS=true` (or `--annotations github`) each failed test of
//! the fixture workspace prints one `::error` workflow command at the line that made its
//! biggest leak, and the failures are appended to `$GITHUB_STEP_SUMMARY` as a table. Checked
//! line for line on a real run of `fixtures/workspace`'s `alpha`.

use std::path::{Path, PathBuf};
use std::process::Command;

use memleak_tests::{cargo_memleak, marker_line, privileged, workspace_root};

fn fixture() -> PathBuf {
    workspace_root().join("fixtures/workspace")
}

struct Ran {
    code: Option<i32>,
    annotations: Vec<String>,
    summary: String,
}

/// `cargo memleak test -p alpha` on the fixture workspace with `env`, its `::` lines and what
/// it appended to a fresh step summary file.
fn run(args: &[&str], env: &[(&str, &Path)]) -> Ran {
    let summary = std::env::temp_dir().join(format!("memleak-summary-{}.md", std::process::id()));
    std::fs::write(&summary, "existing line\n").unwrap();
    let output = Command::new(cargo_memleak())
        .args(["memleak", "test", "--manifest-path"])
        .arg(fixture().join("Cargo.toml"))
        .args(["-p", "alpha"])
        .args(args)
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env_remove("GITHUB_WORKSPACE")
        .envs(env.iter().copied())
        .output()
        .expect("cargo-memleak runs");
    let text = std::fs::read_to_string(&summary).unwrap();
    let _ = std::fs::remove_file(&summary);
    Ran {
        code: output.status.code(),
        annotations: String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.starts_with("::"))
            .map(str::to_owned)
            .collect(),
        summary: text,
    }
}

#[test]
fn each_failed_test_is_annotated_on_its_leaking_line() {
    if !privileged("each_failed_test_is_annotated_on_its_leaking_line") {
        return;
    }
    let lib = fixture().join("alpha/src/lib.rs");
    let gate = fixture().join("alpha/tests/gate.rs");
    let leak_bytes = marker_line(&lib, "leak_bytes");
    let rc_node = marker_line(&gate, "rc_node");
    let over = |bytes: u64, blocks: u64| {
        format!("lost {bytes} bytes in {blocks} blocks, over its budget of 0 bytes in 0 blocks")
    };

    let ran = run(&[], &[]);
    assert_eq!(ran.code, Some(100), "three leaks fail the run");
    let mut annotations = ran.annotations.clone();
    annotations.sort();
    let mut expected = [
        format!(
            "::error file=alpha/src/lib.rs,line={leak_bytes},title=memleak%3A \
                 tests%3A%3Aleaks_in_a_unit_test [alpha]::{}",
            over(2048, 1)
        ),
        format!(
            "::error file=alpha/src/lib.rs,line={leak_bytes},title=memleak%3A leaks_a_vec \
                 [alpha%3A%3Agate]::{}",
            over(4000, 1)
        ),
        format!(
            "::error file=alpha/tests/gate.rs,line={rc_node},title=memleak%3A \
                 leaks_an_rc_cycle [alpha%3A%3Agate]::{}",
            over(2064, 2)
        ),
    ];
    expected.sort();
    // In the order the tests finished, which varies: compared sorted.
    assert_eq!(annotations, expected);
    assert_eq!(
        ran.summary,
        format!(
            "existing line\n### cargo memleak: 3 of 9 tests failed\n\n\
             | Test | Binary | Why | Where |\n|---|---|---|---|\n\
             | `tests::leaks_in_a_unit_test` | `alpha` | {} | `alpha/src/lib.rs:{leak_bytes}` |\n\
             | `leaks_a_vec` | `alpha::gate` | {} | `alpha/src/lib.rs:{leak_bytes}` |\n\
             | `leaks_an_rc_cycle` | `alpha::gate` | {} | `alpha/tests/gate.rs:{rc_node}` |\n\n",
            over(2048, 1),
            over(4000, 1),
            over(2064, 2)
        )
    );

    // In a repository whose root is above the cargo workspace, paths are the repository's.
    let ran = run(&[], &[("GITHUB_WORKSPACE", workspace_root())]);
    assert!(
        ran.annotations.iter().any(|line| line.starts_with(&format!(
            "::error file=fixtures/workspace/alpha/tests/gate.rs,line={rc_node},"
        ))),
        "{:?}",
        ran.annotations
    );

    // Turned off: no workflow command, nothing appended.
    let ran = run(&["--annotations", "none"], &[]);
    assert_eq!(ran.code, Some(100));
    assert_eq!(ran.annotations, Vec::<String>::new());
    assert_eq!(ran.summary, "existing line\n");
}
