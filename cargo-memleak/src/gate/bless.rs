//! `--bless`: what a run lost becomes its budget in the baseline.
//!
//! Invariants: a budget is exactly what was lost (per stack too), or no entry when nothing that
//! counts was lost; `cargo memleak test --bless` writes nothing unless every test it ran was
//! measured (passed or only over budget, and traced completely), and drops stale entries; the
//! file is written atomically, or not at all.

use std::collections::BTreeMap;

use super::{Budget, ChildVerdict, FailOn, Judgement, LoadedGate, StaleEntry};
use crate::{error::Result, user::RunAs};

/// What `cargo memleak test --bless` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blessing {
    /// The baseline was written; this many tests have budgets in it.
    Written { budgets: usize },
    /// Nothing was written: these tests (`[binary id] test`) failed or were not fully traced.
    Refused { unmeasured: Vec<String> },
}

/// One test's verdict, for blessing.
#[derive(Clone, Copy, Debug)]
pub struct Measured<'a> {
    pub binary_id: &'a str,
    pub test: &'a str,
    pub judgement: &'a Judgement,
    /// Its followed children's verdicts, by executable.
    pub children: &'a [ChildVerdict],
    /// False when the test failed, timed out, was not fully traced or could not be run: what
    /// it lost is not known.
    pub measured: bool,
}

/// `budgets[key]` becomes what `judgement` and its `children` lost, or goes when nothing that
/// counts was lost.
fn set_budget(
    budgets: &mut BTreeMap<String, Budget>,
    key: &str,
    judgement: &Judgement,
    children: &[ChildVerdict],
    fail_on: FailOn,
) {
    let mut budget = judgement.as_budget(fail_on);
    // Budgets this run does not gate stay as they were (a leak bless keeps the peak's).
    if let Some(old) = budgets.get(key) {
        if !fail_on.peak {
            budget.peak = old.peak;
        }
        if !fail_on.allocations {
            budget.allocations = old.allocations;
        }
    }
    let keeps_heap = budget.peak.is_some() || budget.allocations.is_some();
    budget.children = children
        .iter()
        .filter(|child| child.judgement.needs_budget(fail_on))
        .map(|child| (child.executable.clone(), child.judgement.as_budget(fail_on)))
        .collect();
    if judgement.needs_budget(fail_on) || !budget.children.is_empty() || keeps_heap {
        budgets.insert(key.to_owned(), budget);
    } else {
        budgets.remove(key);
    }
}

/// [`set_budget`] for one test of the baseline's.
fn set_test_budget(baseline: &mut super::Baseline, result: &Measured, fail_on: FailOn) {
    let tests = baseline
        .tests
        .entry(result.binary_id.to_owned())
        .or_default();
    set_budget(
        tests,
        result.test,
        result.judgement,
        result.children,
        fail_on,
    );
}

impl LoadedGate {
    /// `cargo memleak wrap --bless`: one test's budget, written into the baseline as it is on
    /// disk now, under a lock on the baseline's directory that the other tests' processes,
    /// blessing at the same time, take too.
    pub fn bless_one(&self, result: Measured, owner: Option<&RunAs>) -> Result<Blessing> {
        if !result.measured {
            return Ok(Blessing::Refused {
                unmeasured: vec![format!("[{}] {}", result.binary_id, result.test)],
            });
        }
        // The lock is the baseline's directory's: nothing is left beside the baseline.
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let io = |source| crate::error::Error::Write {
            path: self.path.clone(),
            source,
        };
        let handle = std::fs::File::open(&dir).map_err(io)?;
        let _lock = nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io(errno.into()))?;
        let mut baseline = super::Baseline::read(&self.path)?;
        set_test_budget(&mut baseline, &result, self.options.fail_on);
        baseline.tests.retain(|_, tests| !tests.is_empty());
        baseline.write(&self.path, owner)?;
        Ok(Blessing::Written {
            budgets: baseline.tests.values().map(BTreeMap::len).sum(),
        })
    }

    /// `cargo memleak run --bless`: `runs[binary_id]` becomes what this run lost.
    pub fn bless_run(
        &self,
        binary_id: &str,
        judgement: &Judgement,
        children: &[ChildVerdict],
        owner: Option<&RunAs>,
    ) -> Result<()> {
        let mut blessed = self.baseline.clone();
        set_budget(
            &mut blessed.runs,
            binary_id,
            judgement,
            children,
            self.options.fail_on,
        );
        blessed.write(&self.path, owner)
    }

    /// `cargo memleak test --bless`: every test's budget becomes what it lost, and stale
    /// entries go; refused when a test could not be measured.
    pub fn bless_tests<'a>(
        &self,
        results: impl IntoIterator<Item = Measured<'a>>,
        stale: &[StaleEntry],
        owner: Option<&RunAs>,
    ) -> Result<Blessing> {
        let results: Vec<Measured> = results.into_iter().collect();
        let unmeasured: Vec<String> = results
            .iter()
            .filter(|result| !result.measured)
            .map(|result| format!("[{}] {}", result.binary_id, result.test))
            .collect();
        if !unmeasured.is_empty() {
            return Ok(Blessing::Refused { unmeasured });
        }
        let mut baseline = self.baseline.clone();
        let fail_on = self.options.fail_on;
        for result in &results {
            set_test_budget(&mut baseline, result, fail_on);
        }
        for entry in stale {
            match &entry.test {
                Some(test) => {
                    if let Some(tests) = baseline.tests.get_mut(&entry.binary_id) {
                        tests.remove(test);
                    }
                }
                None => {
                    baseline.tests.remove(&entry.binary_id);
                }
            }
        }
        baseline.tests.retain(|_, tests| !tests.is_empty());
        baseline.write(&self.path, owner)?;
        Ok(Blessing::Written {
            budgets: baseline.tests.values().map(BTreeMap::len).sum(),
        })
    }
}
