//! GitHub Actions output: an `::error` workflow command for each failed test, placed at the
//! first frame of its biggest lost stack that lies in the workspace (so the pull request's
//! review shows the leak on the line that made it), and a markdown table of the failures
//! appended to `$GITHUB_STEP_SUMMARY`.
//!
//! Invariants: annotation paths are relative to the repository (`GITHUB_WORKSPACE`, else the
//! cargo workspace) and only name files under it; a failure without such a frame (a panic, a
//! timeout, a leak entirely in dependencies) is annotated without a file. Values are escaped
//! as the workflow-command syntax requires, so no test output can forge a command.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::{Reporter, TestEvent};
use crate::{error::Result, gate::OverBudget, symbolize::Frame, testrun::TestResult};

/// Where a leak was made, relative to the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: u32,
}

/// One row of the step summary's table.
#[derive(Clone, Debug)]
struct Row {
    test: String,
    binary: String,
    why: String,
    location: Option<Location>,
}

pub struct Github {
    /// What annotation paths are relative to.
    repository: PathBuf,
    /// `$GITHUB_STEP_SUMMARY`, when set.
    step_summary: Option<PathBuf>,
    /// The failures so far, for the summary table.
    failed: Mutex<Vec<Row>>,
}

impl Github {
    pub fn new(workspace_root: &Path) -> Self {
        let repository = std::env::var_os("GITHUB_WORKSPACE")
            .and_then(|dir| std::fs::canonicalize(dir).ok())
            .filter(|dir| workspace_root.starts_with(dir))
            .unwrap_or_else(|| workspace_root.to_owned());
        Self {
            repository,
            step_summary: std::env::var_os("GITHUB_STEP_SUMMARY").map(PathBuf::from),
            failed: Mutex::new(Vec::new()),
        }
    }

    /// The first frame of `result`'s biggest lost stack inside the repository (and not in a
    /// build directory), relative to it; without one, and over its peak budget, the first
    /// frame of the peak's stack there.
    pub fn location(&self, result: &TestResult) -> Option<Location> {
        let frames = match result.stacks.iter().max_by_key(|stack| stack.bytes) {
            Some(stack) => &stack.frames,
            None if result
                .judgement
                .over_budget
                .iter()
                .any(|over| matches!(over, OverBudget::Peak { .. })) =>
            {
                &result.heap.as_ref()?.peak_stack
            }
            None => return None,
        };
        frames.iter().find_map(|frame| self.relative(frame))
    }

    fn relative(&self, frame: &Frame) -> Option<Location> {
        let file = Path::new(frame.file.as_deref()?);
        let relative = file.strip_prefix(&self.repository).ok()?;
        if relative.starts_with("target") {
            return None;
        }
        Some(Location {
            file: relative.to_str()?.to_owned(),
            line: frame.line?,
        })
    }

    /// The `::error` line for a failed test.
    pub fn annotation(&self, result: &TestResult) -> String {
        let title = format!("memleak: {} [{}]", result.test, result.binary_id);
        let mut properties = Vec::new();
        if let Some(location) = self.location(result) {
            properties.push(format!("file={}", escape_property(&location.file)));
            properties.push(format!("line={}", location.line));
        }
        properties.push(format!("title={}", escape_property(&title)));
        format!(
            "::error {}::{}",
            properties.join(","),
            escape_data(&result.failures.joined())
        )
    }

    fn summary(&self, passed: u64, failed: u64) -> String {
        let rows = self
            .failed
            .lock()
            .map(|rows| rows.clone())
            .unwrap_or_default();
        let total = passed + failed;
        if rows.is_empty() {
            return format!("### cargo memleak: all {total} tests passed\n\n");
        }
        let mut text = format!(
            "### cargo memleak: {failed} of {total} tests failed\n\n\
             | Test | Binary | Why | Where |\n|---|---|---|---|\n"
        );
        for row in rows {
            let place = row
                .location
                .map_or_else(String::new, |at| format!("`{}:{}`", at.file, at.line));
            text.push_str(&format!(
                "| `{}` | `{}` | {} | {place} |\n",
                cell(&row.test),
                cell(&row.binary),
                cell(&row.why)
            ));
        }
        text.push('\n');
        text
    }
}

impl Reporter for Github {
    fn report(&self, event: &TestEvent) -> Result<()> {
        match event {
            TestEvent::TestFinished { result } if !result.failures.is_empty() => {
                let line = self.annotation(result);
                let _ = writeln!(std::io::stdout().lock(), "{line}");
                if let Ok(mut failed) = self.failed.lock() {
                    failed.push(Row {
                        test: result.test.clone(),
                        binary: result.binary_id.clone(),
                        why: result.failures.joined(),
                        location: self.location(result),
                    });
                    failed.sort_by(|a, b| (&a.binary, &a.test).cmp(&(&b.binary, &b.test)));
                }
            }
            TestEvent::RunFinished { stats, .. } => {
                if let Some(path) = &self.step_summary {
                    let appended = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .and_then(|mut file| {
                            file.write_all(self.summary(stats.passed, stats.failed).as_bytes())
                        });
                    if let Err(err) = appended {
                        eprintln!(
                            "memleak: warning: could not append to GITHUB_STEP_SUMMARY {}: {err}",
                            path.display()
                        );
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A workflow command's message: `%`, CR and LF escaped.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A workflow command's property value: the message's escapes, and `:` and `,` too.
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// A markdown table cell: one line, `|` escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_the_workflow_command_syntax_reserves() {
        assert_eq!(escape_data("50% of a\nb"), "50%25 of a%0Ab");
        assert_eq!(escape_property("memleak: a, b"), "memleak%3A a%2C b");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
