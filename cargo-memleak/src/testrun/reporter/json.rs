//! `--message-format json`: one JSON object per line and event on stdout.
//!
//! Invariants: the field names are part of the interface (tests and users parse them); each
//! line is written whole, so lines from worker threads never interleave.

use std::io::Write as _;

use serde::Serialize;

use super::{Reporter, TestEvent};
use crate::{
    error::Result,
    outcome::Signal,
    testrun::{Stats, TestResult},
};

/// The JSON reporter.
pub struct Json;

/// The lines, one per event (and one per ignored test, stale entry and unused suppression).
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
    TestIgnored {
        binary_id: &'a str,
        test: &'a str,
    },
    TestStarted {
        binary_id: &'a str,
        test: &'a str,
    },
    TestSlow {
        binary_id: &'a str,
        test: &'a str,
        elapsed_secs: f64,
    },
    TestFinished {
        result: &'static str,
        /// It passed on a retry (`--retries`).
        flaky: bool,
        #[serde(flatten)]
        test: &'a TestResult,
    },
    Interrupted {
        signal: Signal,
        running: usize,
    },
    StaleEntry {
        binary_id: &'a str,
        test: Option<&'a str>,
    },
    UnusedSuppression {
        pattern: &'a str,
    },
    RunFinished {
        #[serde(flatten)]
        stats: &'a Stats,
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
            } => {
                emit(&JsonEvent::RunStarted {
                    tests: tests.len(),
                    ignored: ignored.len(),
                    jobs,
                });
                for (binary_id, test) in ignored {
                    emit(&JsonEvent::TestIgnored { binary_id, test });
                }
            }
            TestEvent::TestStarted { binary_id, test } => {
                emit(&JsonEvent::TestStarted { binary_id, test });
            }
            TestEvent::TestSlow {
                binary_id,
                test,
                elapsed,
            } => emit(&JsonEvent::TestSlow {
                binary_id,
                test,
                elapsed_secs: elapsed.as_secs_f64(),
            }),
            TestEvent::TestFinished { result } => emit(&JsonEvent::TestFinished {
                result: if result.failures.is_empty() {
                    "ok"
                } else {
                    "failed"
                },
                flaky: result.flaky(),
                test: result,
            }),
            TestEvent::Interrupted { signal, running } => {
                emit(&JsonEvent::Interrupted { signal, running });
            }
            TestEvent::TestsFinished { stale, unused, .. } => {
                for entry in stale {
                    emit(&JsonEvent::StaleEntry {
                        binary_id: &entry.binary_id,
                        test: entry.test.as_deref(),
                    });
                }
                for pattern in unused {
                    emit(&JsonEvent::UnusedSuppression { pattern });
                }
            }
            TestEvent::RunFinished { stats, outcome } => emit(&JsonEvent::RunFinished {
                stats,
                exit_code: outcome.exit_code().code,
            }),
        }
        Ok(())
    }
}
