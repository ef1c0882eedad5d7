//! The GitHub Actions workflow in `examples/` that the README tells teams to copy: it parses
//! as YAML, has the steps a leak gate needs, and every cargo-memleak command it runs is one
//! this build accepts (its arguments parse), run under sudo with the variables annotations need.

use std::process::Command;

use memleak_tests::{cargo_memleak, workspace_root};
use yaml_rust2::{Yaml, YamlLoader};

fn workflow() -> Yaml {
    let path = workspace_root().join("examples/github-actions-memleak.yml");
    let text = std::fs::read_to_string(&path).expect("the example workflow exists");
    let mut documents = YamlLoader::load_from_str(&text).expect("the workflow is valid YAML");
    assert_eq!(documents.len(), 1, "one YAML document");
    documents.remove(0)
}

/// The `run:` scripts of the job's steps, in order.
fn run_steps(workflow: &Yaml) -> Vec<String> {
    let steps = workflow["jobs"]["memleak"]["steps"]
        .as_vec()
        .expect("jobs.memleak.steps is a list");
    steps
        .iter()
        .filter_map(|step| step["run"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_example_workflow_runs_commands_that_exist() {
    let workflow = workflow();
    let on = workflow["on"].as_hash().expect("`on` is a map");
    assert!(
        on.contains_key(&Yaml::String("pull_request".into())),
        "runs on pull requests"
    );
    let uses: Vec<&str> = workflow["jobs"]["memleak"]["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|step| step["uses"].as_str())
        .collect();
    assert!(
        uses.iter()
            .any(|action| action.starts_with("actions/checkout@v")),
        "{uses:?}"
    );

    let runs = run_steps(&workflow);
    assert_eq!(runs.len(), 2, "install, then test: {runs:?}");
    assert_eq!(runs[0], "cargo install --locked cargo-memleak");

    // `sudo --preserve-env=VARS "$(command -v cargo-memleak)" memleak test ARGS`
    const PROGRAM: &str = "\"$(command -v cargo-memleak)\"";
    let script = runs[1].replace(PROGRAM, "PROGRAM");
    let words: Vec<&str> = script.split_whitespace().collect();
    assert_eq!(words[0], "sudo", "{runs:?}");
    let preserved = words[1]
        .strip_prefix("--preserve-env=")
        .expect("sudo keeps variables");
    let preserved: Vec<&str> = preserved.split(',').collect();
    for needed in [
        "PATH",
        "GITHUB_ACTIONS",
        "GITHUB_STEP_SUMMARY",
        "GITHUB_WORKSPACE",
    ] {
        assert!(
            preserved.contains(&needed),
            "sudo must keep {needed}: {preserved:?}"
        );
    }
    assert_eq!(
        words[2], "PROGRAM",
        "sudo runs the installed binary by its path: {script}"
    );
    let args = &words[3..];
    assert_eq!(&args[..2], ["memleak", "test"]);
    // Its arguments parse: clap reads them all before it acts on --help.
    let checked = Command::new(cargo_memleak())
        .args(args)
        .arg("--help")
        .output()
        .expect("cargo-memleak runs");
    assert!(
        checked.status.success(),
        "`cargo-memleak {}` is refused: {}",
        args.join(" "),
        String::from_utf8_lossy(&checked.stderr)
    );
    // And a wrong one would be refused, so the check above means something.
    let wrong = Command::new(cargo_memleak())
        .args(args)
        .args(["--no-such-flag", "--help"])
        .output()
        .expect("cargo-memleak runs");
    assert_eq!(wrong.status.code(), Some(2));
}
