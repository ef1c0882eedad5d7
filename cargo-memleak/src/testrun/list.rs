//! Listing: every test of every built test binary, through the custom-harness contract
//! (`BIN --list --format terse`, and `--ignored` for the ignored ones).
//!
//! Invariants: a binary that cannot list its tests is an error of the run, not an empty list;
//! tests keep the order their binary lists them in, binaries the order cargo built them in.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::TestFilters;
use crate::{
    build::{Executable, Harness, doctests::DocRun},
    error::{Error, Result},
    user::{self, RunAs},
};

/// One test to run.
#[derive(Clone, Debug)]
pub struct TestCase {
    pub binary: Arc<Executable>,
    pub name: String,
    /// Its budget's key in the baseline: its name, but for a doc test (see
    /// [`crate::build::doctests::budget_keys`]).
    pub key: String,
    pub ignored: bool,
}

/// Every test listed.
pub struct Listed {
    pub cases: Vec<TestCase>,
    /// Each binary's tests' budget keys, by binary id (what the baseline's stale entries are
    /// checked against).
    pub names: BTreeMap<String, BTreeSet<String>>,
}

/// Lists the tests of every one of `executables`.
pub fn list_all(executables: Vec<Executable>, run_as: Option<&RunAs>) -> Result<Listed> {
    let mut cases = Vec::new();
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for executable in executables {
        let binary = Arc::new(executable);
        let tests = list(&binary, run_as)?;
        let names = listed.entry(binary.id.clone()).or_default();
        for (name, key, ignored) in tests {
            names.insert(key.clone());
            cases.push(TestCase {
                binary: Arc::clone(&binary),
                name,
                key,
                ignored,
            });
        }
    }
    Ok(Listed {
        cases,
        names: listed,
    })
}

/// `BIN --list --format terse` (and `--ignored`): every test, and whether it is ignored; doc
/// tests as rustdoc reported them.
fn list(binary: &Executable, run_as: Option<&RunAs>) -> Result<Vec<(String, String, bool)>> {
    if let Harness::DocTests(tests) = &binary.harness {
        return Ok(tests
            .iter()
            .map(|test| {
                let ignored = test.run == DocRun::Ignored;
                (test.name.clone(), test.key.clone(), ignored)
            })
            .collect());
    }
    let run = |extra: &[&str]| -> Result<Vec<String>> {
        let mut command = std::process::Command::new(&binary.path);
        command
            .args(["--list", "--format", "terse"])
            .args(extra)
            .current_dir(&binary.package_dir)
            .envs(binary.env.iter().map(|(name, value)| (name, value)))
            .stdin(std::process::Stdio::null());
        user::apply(&mut command, run_as);
        let output = command.output().map_err(|err| Error::Listing {
            binary: binary.path.clone(),
            detail: err.to_string(),
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(Error::Listing {
                binary: binary.path.clone(),
                detail: format!(
                    "{}: {}",
                    output.status,
                    stderr.trim().lines().last().unwrap_or_default()
                ),
            });
        }
        // The custom-harness contract: every line is `NAME: test` or `NAME: benchmark`.
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_suffix(": test"))
            .map(str::to_owned)
            .collect())
    };
    let all = run(&[])?;
    let ignored: BTreeSet<String> = run(&["--ignored"])?.into_iter().collect();
    Ok(all
        .into_iter()
        .map(|name| {
            let is_ignored = ignored.contains(&name);
            (name.clone(), name, is_ignored)
        })
        .collect())
}

/// `--list`: the selected tests, `[binary id] name: test` per line (libtest's terse format
/// with the binary id), ignored ones marked; or one JSON object per test.
pub fn print(selection: &Selection, format: super::MessageFormat) {
    use std::io::Write as _;
    let mut out = String::new();
    let all = selection
        .run
        .iter()
        .map(|case| (case, false))
        .chain(selection.ignored.iter().map(|case| (case, true)));
    for (case, ignored) in all {
        match format {
            super::MessageFormat::Human | super::MessageFormat::Folded => {
                out.push_str(&format!(
                    "[{}] {}: test{}\n",
                    case.binary.id,
                    case.name,
                    if ignored { " (ignored)" } else { "" }
                ));
            }
            super::MessageFormat::Json => {
                let line = serde_json::json!({
                    "event": "test-listed",
                    "binary_id": case.binary.id,
                    "test": case.name,
                    "ignored": case.ignored,
                    "runs": !ignored,
                });
                out.push_str(&line.to_string());
                out.push('\n');
            }
        }
    }
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}
/// The tests a run selects, in list order.
pub struct Selection<'a> {
    /// Those that will run.
    pub run: Vec<&'a TestCase>,
    /// Those selected but ignored.
    pub ignored: Vec<&'a TestCase>,
    /// How many the filters left out.
    pub filtered_out: usize,
}

/// libtest's filters: `filter` matches `[binary id] name` as a substring, or with `--exact`
/// the name or `[binary id] name` whole; each `--skip` likewise; `--ignored` keeps only the
/// ignored tests, which then run; `--include-ignored` runs the ignored ones too. Then
/// `--partition` keeps its shard of the tests that would run (the others count as filtered
/// out).
pub fn select<'a>(cases: &'a [TestCase], filters: &TestFilters) -> Selection<'a> {
    let matches = |pattern: &str, case: &TestCase| {
        let with_id = format!("[{}] {}", case.binary.id, case.name);
        if filters.exact {
            case.name == pattern || with_id == pattern
        } else {
            with_id.contains(pattern)
        }
    };
    let mut selection = Selection {
        run: Vec::new(),
        ignored: Vec::new(),
        filtered_out: 0,
    };
    for case in cases {
        let kept = filters
            .filter
            .as_deref()
            .is_none_or(|filter| matches(filter, case))
            && !filters.skip.iter().any(|skip| matches(skip, case))
            && (!filters.ignored || case.ignored);
        if !kept {
            selection.filtered_out += 1;
        } else if case.ignored && !filters.ignored && !filters.include_ignored {
            selection.ignored.push(case);
        } else {
            selection.run.push(case);
        }
    }
    if let Some(partition) = filters.partition {
        let before = selection.run.len();
        let mut index = 0;
        selection.run.retain(|case| {
            index += 1;
            partition.contains(index - 1, &case.binary.id, &case.name)
        });
        selection.filtered_out += before - selection.run.len();
    }
    selection
}
