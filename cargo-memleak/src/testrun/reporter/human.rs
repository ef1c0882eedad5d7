//! The human output. libtest-mimic prints libtest's lines itself, from the outcome the adapter
//! hands each trial; this renders what goes under a failed test ([`failure_message`], JUnit's
//! description too) and the lines of its own: the baseline's stale entries.
//!
//! Invariants: the text is today's libtest-compatible text, byte for byte (tests compare it);
//! below a test's own frames, libtest's harness is left out.

use std::fmt::Write as _;

use super::{Reporter, TestEvent};
use crate::{
    error::Result,
    gate::{ChildVerdict, StaleEntry},
    report::{
        Amount, LeakSummary, Stack,
        text::{Frames, write_amount, write_stack},
    },
    testrun::TestResult,
};

/// The human reporter's own lines (on stderr).
pub struct Human;

impl Reporter for Human {
    fn report(&self, event: &TestEvent) -> Result<()> {
        if let TestEvent::TestsFinished { stale } = event {
            for StaleEntry { binary_id, test } in *stale {
                eprintln!(
                    "memleak: stale baseline entry {binary_id}{}: no such {} any more; --bless \
                     removes it",
                    test.as_ref().map(|t| format!(" {t}")).unwrap_or_default(),
                    if test.is_some() {
                        "test"
                    } else {
                        "test binary"
                    },
                );
            }
        }
        Ok(())
    }
}

/// The followed processes that ran one executable: each with its command line and how it
/// ended, then their lost stacks and summary, when they lost something.
pub fn write_child(out: &mut String, child: &ChildVerdict, top: usize) {
    for process in &child.processes {
        let _ = writeln!(
            out,
            "child process {} `{}`: {}",
            process.pid, process.command, process.fate
        );
    }
    if child.lost.blocks > 0 {
        write_lost(
            out,
            &child.stacks,
            &child.leak_summary,
            child.suppressed,
            top,
        );
    }
}

/// The first `top` lost stacks (libtest's harness left out), then memcheck's summary lines.
fn write_lost(
    out: &mut String,
    stacks: &[Stack],
    summary: &LeakSummary,
    suppressed: Amount,
    top: usize,
) {
    for stack in stacks.iter().take(top) {
        // Below the test's own frames lies libtest's harness: leave it out.
        write_stack(out, stack, Frames::AboveHarness);
    }
    if stacks.len() > top {
        let _ = writeln!(out, "\t({} more stacks)", stacks.len() - top);
    }
    for (words, amount) in [
        ("definitely lost", summary.definitely_lost),
        ("indirectly lost", summary.indirectly_lost),
        ("still reachable", summary.still_reachable),
        ("suppressed", suppressed),
    ] {
        write_amount(out, words, amount);
    }
}

/// What libtest prints under a failed test: the reasons, the lost stacks, the summary and,
/// when the test itself failed, its output.
pub fn failure_message(result: &TestResult, top: usize) -> Option<String> {
    if result.failures.is_empty() {
        return None;
    }
    let mut out = String::new();
    // libtest's heading names the test only; several binaries may have one of that name.
    let _ = writeln!(out, "in test binary {}", result.binary_id);
    for failure in &result.failures.0 {
        let _ = writeln!(out, "memleak: {failure}");
    }
    // The summary is shown even when nothing was lost (a test that failed by itself).
    let shown: &[Stack] = if result.lost.blocks > 0 {
        &result.stacks
    } else {
        &[]
    };
    write_lost(
        &mut out,
        shown,
        &result.leak_summary,
        result.suppressed,
        top,
    );
    for child in &result.children {
        write_child(&mut out, child, top);
    }
    if result.failures.unmeasured()
        && let Some(output) = &result.output
        && !output.is_empty()
    {
        out.push_str("---- output ----\n");
        out.push_str(output);
        if !output.ends_with('\n') {
            out.push('\n');
        }
    }
    Some(out)
}
