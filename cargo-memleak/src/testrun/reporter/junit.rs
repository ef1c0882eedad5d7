//! `--junit PATH`: JUnit XML, one testsuite per test binary, one testcase per test (the ignored
//! ones skipped), written when every started test has finished (an interrupted run's too).
//!
//! Invariants: the file is written atomically, whole or not at all; a failed test's message is
//! its failure sentences and its description the human failure text.

use std::{collections::BTreeMap, path::PathBuf, sync::Mutex, time::Duration};

use super::{Reporter, TestEvent, failure::failure_message};
use crate::{
    error::{Error, Result},
    fsutil,
    report::text::Short,
    testrun::{TestOptions, TestResult},
    user::RunAs,
};

/// The JUnit reporter: collects the results, writes the file at `TestsFinished`.
pub struct Junit {
    path: PathBuf,
    /// Who the file belongs to (under sudo, the invoking user).
    owner: Option<RunAs>,
    style: Short,
    rerun_args: Vec<String>,
    results: Mutex<Vec<TestResult>>,
    /// `(binary id, test)` of the selected tests that are ignored.
    skipped: Mutex<Vec<(String, String)>>,
}

impl Junit {
    pub fn new(path: PathBuf, options: &TestOptions, style: Short) -> Self {
        Self {
            path,
            owner: options.run_as.clone(),
            style,
            rerun_args: options.rerun_args.clone(),
            results: Mutex::new(Vec::new()),
            skipped: Mutex::new(Vec::new()),
        }
    }
}

impl Reporter for Junit {
    fn report(&self, event: &TestEvent) -> Result<()> {
        match event {
            TestEvent::RunStarted { ignored, .. } => *lock(&self.skipped) = ignored.to_vec(),
            TestEvent::TestFinished { result } => lock(&self.results).push((*result).clone()),
            TestEvent::TestsFinished { .. } => {
                let xml = junit(
                    &lock(&self.results),
                    &lock(&self.skipped),
                    &self.style,
                    &self.rerun_args,
                )?;
                fsutil::write_atomically(&self.path, xml.as_bytes(), self.owner.as_ref())?;
            }
            TestEvent::TestStarted { .. }
            | TestEvent::TestSlow { .. }
            | TestEvent::Interrupted { .. }
            | TestEvent::RunFinished { .. } => {}
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// JUnit XML: one testsuite per test binary, one testcase per test.
fn junit(
    results: &[TestResult],
    skipped: &[(String, String)],
    style: &Short,
    rerun_args: &[String],
) -> Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestRerun, TestSuite};
    let mut suites: BTreeMap<&str, TestSuite> = BTreeMap::new();
    let mut total = Duration::ZERO;
    for result in results {
        let mut status = match failure_message(result, usize::MAX, style, rerun_args) {
            None => TestCaseStatus::success(),
            Some(message) => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status
                    .set_message(result.failures.joined())
                    .set_type(if result.failures.unmeasured() {
                        "test failure"
                    } else {
                        "leak over budget"
                    })
                    .set_description(message);
                status
            }
        };
        // nextest's way: `flakyFailure` in a passed case, `rerunFailure` in a failed one.
        status.add_reruns(result.earlier_attempts.iter().map(|attempt| {
            let mut rerun = TestRerun::new(NonSuccessKind::Failure);
            rerun
                .set_message(attempt.failures.joined())
                .set_type("test failure")
                .set_time(Duration::from_secs_f64(attempt.duration_ms / 1e3));
            if let Some(output) = &attempt.output {
                rerun.set_system_out_lossy(output.as_bytes());
            }
            rerun
        }));
        let mut case = TestCase::new(result.test.clone(), status);
        let time = Duration::from_secs_f64(result.duration_ms / 1e3);
        total += time;
        case.set_classname(result.binary_id.clone()).set_time(time);
        if let Some(heap) = &result.heap {
            for (name, value) in [
                ("memleak.peak_bytes", heap.peak_bytes),
                ("memleak.allocations", heap.allocations),
                ("memleak.allocated_bytes", heap.allocated_bytes),
            ] {
                case.add_property(quick_junit::Property::new(name, value.to_string()));
            }
        }
        if let Some(output) = &result.output {
            case.set_system_out_lossy(output.as_bytes());
        }
        suites
            .entry(&result.binary_id)
            .or_insert_with(|| TestSuite::new(result.binary_id.clone()))
            .add_test_case(case);
    }
    for (binary_id, name) in skipped {
        let mut case = TestCase::new(name.clone(), TestCaseStatus::skipped());
        case.set_classname(binary_id.clone());
        suites
            .entry(binary_id)
            .or_insert_with(|| TestSuite::new(binary_id.clone()))
            .add_test_case(case);
    }
    let mut report = Report::new("cargo-memleak");
    report.set_time(total);
    report.add_test_suites(suites.into_values());
    report.to_string().map_err(|err| Error::Io {
        context: "writing JUnit XML".into(),
        source: std::io::Error::other(err.to_string()),
    })
}
