//! Reports as text: BCC memleak's layout (`[HH:MM:SS] Top N stacks with ... allocations:`,
//! `B bytes in M allocations from stack`, `symbol+0xoff [module]`) and memcheck's LEAK SUMMARY
//! wording, then one summary line.
//!
//! Invariants: the words are part of the output users and tests compare; a stack, a frame and
//! a leak-summary line are written by one function each, wherever they appear.

use std::fmt::Write as _;

use memleak_common::Counter;

use super::{
    Report, Snapshot,
    model::{Amount, Stack, above_harness},
};
use crate::{classify::Category, incomplete::Reasons, scan::Gap, symbolize::Frame};

/// One frame as `symbol+0xoff (file:line) [module]`.
pub fn render_frame(frame: &Frame) -> String {
    let mut out = String::new();
    match &frame.symbol {
        Some(symbol) if frame.inlined => out.push_str(symbol),
        Some(symbol) => {
            let _ = write!(out, "{symbol}+{:#x}", frame.offset);
        }
        None => {
            let _ = write!(out, "{:#x}", frame.addr);
        }
    }
    if let Some(file) = &frame.file {
        match frame.line {
            Some(line) => {
                let _ = write!(out, " ({file}:{line})");
            }
            None => {
                let _ = write!(out, " ({file})");
            }
        }
    }
    if frame.inlined {
        out.push_str(" [inlined]");
    } else if let Some(module) = &frame.module {
        let name = module.rsplit('/').next().unwrap_or(module);
        let _ = write!(out, " [{name}]");
    } else if let Some(reason) = &frame.unknown_reason {
        let _ = write!(out, " [unknown: {reason}]");
    }
    out
}

/// Which of a stack's frames to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frames {
    All,
    /// Those above libtest's harness, and how many were left out.
    AboveHarness,
}

/// A stack: `\tB bytes in M allocations from stack (category)`, its frames, its allocations.
pub fn write_stack(out: &mut String, stack: &Stack, frames: Frames) {
    let _ = write!(
        out,
        "\t{} bytes in {} allocations from stack",
        stack.bytes, stack.allocations
    );
    if let Some(category) = stack.category {
        let _ = write!(out, " ({})", category_words(category));
    }
    out.push('\n');
    let shown = match frames {
        Frames::All => &stack.frames[..],
        Frames::AboveHarness => above_harness(&stack.frames),
    };
    for frame in shown {
        let _ = writeln!(out, "\t\t{}", render_frame(frame));
    }
    if shown.len() < stack.frames.len() {
        let _ = writeln!(
            out,
            "\t\t... {} frames of the test harness",
            stack.frames.len() - shown.len()
        );
    }
    for alloc in stack.allocs.iter().flatten() {
        match (alloc.addr, alloc.pfn) {
            (_, Some(pfn)) => {
                let _ = write!(out, "\t\tpfn = {pfn:x}");
            }
            (addr, None) => {
                let _ = write!(out, "\t\taddr = {:x}", addr.unwrap_or(0));
            }
        }
        let _ = write!(out, " size = {}", alloc.size);
        if let Some(age) = alloc.age_ms {
            let _ = write!(out, " age = {age} ms");
        }
        out.push('\n');
    }
}

/// One line of memcheck's LEAK SUMMARY: `    definitely lost: N bytes in M blocks`.
pub fn write_amount(out: &mut String, words: &str, amount: Amount) {
    let _ = writeln!(
        out,
        "{words:>19}: {} bytes in {} blocks",
        amount.bytes, amount.blocks
    );
}

/// BCC memleak's layout, memcheck's leak summary, then one summary line.
pub fn render_exit(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[{}] Top {} stacks with {} allocations:",
        clock_time(),
        report.stacks.len(),
        if report
            .stacks
            .iter()
            .any(|stack| stack.category == Some(Category::StillReachable))
        {
            "outstanding"
        } else {
            "lost"
        }
    );
    for stack in &report.stacks {
        write_stack(&mut out, stack, Frames::All);
    }
    for (category, amount) in report.leak_summary.rows() {
        write_amount(&mut out, category_words(category), amount);
    }
    out.push_str(&summary_line(report));
    out.push('\n');
    if let Some(note) = unseen_note(&report.unseen) {
        out.push_str(&note);
        out.push('\n');
    }
    for child in &report.children {
        let _ = writeln!(
            out,
            "memleak: child process {} `{}`: {}",
            child.pid,
            child.command,
            child.fate.replace('_', " ")
        );
        if let Some(report) = &child.report {
            out.push_str(&render_exit(report));
        }
    }
    out
}

/// BCC's periodic layout: a timestamped heading, each stack with its frames, a summary line.
pub fn render_periodic(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    if let Some(why) = &snapshot.at_exit {
        let _ = writeln!(
            out,
            "memleak: {} at its exit: outstanding, not classified ({why})",
            snapshot.target
        );
    }
    let _ = writeln!(
        out,
        "[{}] Top {} stacks with outstanding allocations:",
        snapshot.time,
        snapshot.stacks.len()
    );
    for stack in &snapshot.stacks {
        write_stack(&mut out, stack, Frames::All);
    }
    let shown = stacks_shown(snapshot.stacks.len(), snapshot.matching_stacks);
    let dropped = dropped_words(&snapshot.incomplete);
    let counter = |counter: Counter| snapshot.counters.get(counter.name()).copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "memleak: {}: {} bytes in {} allocations outstanding for at least {} ms{shown}; traced \
         {} allocations, {} frees, {} frees of memory allocated before tracing began; {dropped}",
        snapshot.target,
        snapshot.outstanding_bytes,
        snapshot.outstanding_allocations,
        snapshot.older_than_ms,
        counter(Counter::Allocs),
        counter(Counter::Frees),
        counter(Counter::FreeUnknown),
    );
    if let Some(rate) = snapshot.sampled_one_in {
        let _ = writeln!(out, "{}", sampled_note(rate));
    }
    if snapshot.combined {
        let _ = writeln!(
            out,
            "memleak: per-stack totals kept in the kernel (--combined-only): every outstanding \
             allocation counts, whatever its age"
        );
    }
    out
}

/// What `--sample-rate N` means for a report's figures.
pub fn sampled_note(rate: u32) -> String {
    format!(
        "memleak: sampled: 1 in {rate} allocations of each thread recorded; the figures are \
         those of the recorded ones, not scaled"
    )
}

/// One line naming the roots the scan could not see, when there are any.
pub fn unseen_note(unseen: &[Gap]) -> Option<String> {
    if unseen.is_empty() {
        return None;
    }
    let gaps: Vec<String> = unseen.iter().map(Gap::to_string).collect();
    Some(format!(
        "memleak: not scanned, but nothing was lost, so it cannot change the result: {}",
        gaps.join("; ")
    ))
}

/// The time of day (UTC) as HH:MM:SS, for BCC's report headings.
pub fn clock_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 86_400)
        .unwrap_or(0);
    format!("{:02}:{:02}:{:02}", now / 3600, now / 60 % 60, now % 60)
}

/// memcheck's words for a category.
pub fn category_words(category: Category) -> &'static str {
    match category {
        Category::DefinitelyLost => "definitely lost",
        Category::IndirectlyLost => "indirectly lost",
        Category::StillReachable => "still reachable",
    }
}

/// ` (N of M stacks shown)` when the top-N cut left some out, else nothing.
fn stacks_shown(shown: usize, matching: usize) -> String {
    if matching > shown {
        format!(" ({shown} of {matching} stacks shown)")
    } else {
        String::new()
    }
}

/// `dropped: none`, or `INCOMPLETE: ` and the reasons.
fn dropped_words(incomplete: &Reasons) -> String {
    if incomplete.is_empty() {
        "dropped: none".to_owned()
    } else {
        format!("INCOMPLETE: {}", incomplete.joined())
    }
}

/// The exit report's last line: what the program did, lost and left outstanding.
pub fn summary_line(report: &Report) -> String {
    let shown = stacks_shown(report.stacks.len(), report.matching_stacks);
    let dropped = dropped_words(&report.incomplete);
    let counter = |counter: Counter| report.counters.get(counter.name()).copied().unwrap_or(0);
    format!(
        "memleak: `{}` {}: {} bytes lost in {} blocks, {} bytes outstanding in {} allocations{}; traced {} allocations, {} frees; {}",
        report.program,
        report.exit,
        report.leak_summary.lost().bytes,
        report.leak_summary.lost().blocks,
        report.outstanding_bytes,
        report.outstanding_allocations,
        shown,
        counter(Counter::Allocs),
        counter(Counter::Frees),
        dropped,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(symbol: Option<&str>, inlined: bool) -> Frame {
        Frame {
            addr: 0x7f00_1234,
            symbol: symbol.map(str::to_owned),
            offset: 0x1f,
            file: Some("src/main.rs".into()),
            line: Some(12),
            module: Some("/usr/bin/leaky".into()),
            inlined,
            unknown_reason: None,
        }
    }

    #[test]
    fn frames_render_like_bcc_with_locations() {
        assert_eq!(
            render_frame(&frame(Some("leaky::leak"), false)),
            "leaky::leak+0x1f (src/main.rs:12) [leaky]"
        );
        assert_eq!(
            render_frame(&frame(Some("leaky::inner"), true)),
            "leaky::inner (src/main.rs:12) [inlined]"
        );
        let mut unknown = frame(None, false);
        unknown.file = None;
        unknown.module = None;
        unknown.unknown_reason = Some("unmapped".into());
        assert_eq!(render_frame(&unknown), "0x7f001234 [unknown: unmapped]");
    }
}
