//! `--message-format json`: one JSON object per line and event on stdout.
//!
//! Invariants: the field names are part of the interface (tests and users parse them); each
//! line is written whole, so lines from worker threads never interleave.

use std::io::Write as _;

use serde::Serialize;

use super::{Reporter, TestEvent};
use crate::{error::Result, testrun::TestResult};

/// The JSON reporter.
pub struct Json;

/// The lines, one per event (and one per stale entry).
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum JsonEvent<'a> {
    RunStarted {
        /// Tests that will run.
        tests: usize,
        /// Selected but ignored: they will not run.
        ignored: usize,
        jobs: usize,
    },
    TestFinished {
        result: &'static str,
        #[serde(flatten)]
        test: &'a TestResult,
    },
    StaleEntry {
        binary_id: &'a str,
        test: Option<&'a str>,
    },
    RunFinished {
        passed: u64,
        failed: u64,
        ignored: u64,
        filtered_out: u64,
        exit_code: u8,
    },
}

fn emit(event: &JsonEvent) {
    let mut line = serde_json::to_string(event).unwrap_or_default();
    line.push('\n');
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

impl Reporter for Json {
    fn report(&self, event: &TestEvent) -> Result<()> {
        match *event {
            TestEvent::RunStarted {
                tests,
                ignored,
                jobs,
            } => emit(&JsonEvent::RunStarted {
                tests,
                ignored: ignored.len(),
                jobs,
            }),
            TestEvent::TestFinished { result } => emit(&JsonEvent::TestFinished {
                result: if result.failures.is_empty() {
                    "ok"
                } else {
                    "failed"
                },
                test: result,
            }),
            TestEvent::TestsFinished { stale } => {
                for entry in stale {
                    emit(&JsonEvent::StaleEntry {
                        binary_id: &entry.binary_id,
                        test: entry.test.as_deref(),
                    });
                }
            }
            TestEvent::RunFinished {
                passed,
                failed,
                ignored,
                filtered_out,
                outcome,
            } => emit(&JsonEvent::RunFinished {
                passed,
                failed,
                ignored,
                filtered_out,
                exit_code: outcome.exit_code().code,
            }),
        }
        Ok(())
    }
}
