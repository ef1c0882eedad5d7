//! `--format folded` and `--flamegraph PATH` for a test run: every test's lost stacks, each
//! under a root frame naming the test (`[binary id] test`), folded on stdout or drawn as an SVG
//! flame graph of bytes, once every started test has finished.
//!
//! Invariants: the pictures are drawn from the results (the lost, unsuppressed stacks the
//! judge kept), never from anything the human output cut; the SVG is written atomically.

use std::{path::PathBuf, sync::Mutex};

use super::{Reporter, TestEvent};
use crate::{error::Result, report::folded, user::RunAs};

/// Collects the folded lines of each finished test; prints and draws them at the end.
pub struct Pictures {
    /// Print the folded lines on stdout.
    print: bool,
    flamegraph: Option<PathBuf>,
    /// Who the SVG belongs to (under sudo, the invoking user).
    owner: Option<RunAs>,
    lines: Mutex<Vec<String>>,
}

impl Pictures {
    pub fn new(print: bool, flamegraph: Option<PathBuf>, owner: Option<RunAs>) -> Self {
        Self {
            print,
            flamegraph,
            owner,
            lines: Mutex::new(Vec::new()),
        }
    }
}

impl Reporter for Pictures {
    fn report(&self, event: &TestEvent) -> Result<()> {
        let mut lines = self
            .lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match event {
            TestEvent::TestFinished { result } => {
                let root = [format!("[{}] {}", result.binary_id, result.test)];
                lines.extend(folded::fold(folded::test_stacks(&root, &result.stacks)));
            }
            TestEvent::TestsFinished { .. } => {
                lines.sort();
                if self.print {
                    use std::io::Write as _;
                    let mut text = lines.join("\n");
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    let _ = std::io::stdout().lock().write_all(text.as_bytes());
                }
                if let Some(path) = &self.flamegraph {
                    folded::write_flamegraph(
                        path,
                        &lines,
                        "cargo memleak test: lost bytes",
                        self.owner.as_ref(),
                    )?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
