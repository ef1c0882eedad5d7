//! Reports: first the data (outstanding allocations grouped by category and stack, filtered,
//! sorted, cut to the top N, with memcheck's leak summary and the tracer's counters), then its
//! renderings: text in BCC memleak's and memcheck's wording, and JSON.
//!
//! Invariants: totals count every outstanding allocation, whatever the filters; stacks are
//! ordered by category (definitely lost, indirectly lost, still reachable), then by bytes or
//! count (descending), then by their frames, so output is deterministic; JSON carries no
//! addresses unless `--show-allocs` asked for them.

use std::{collections::BTreeMap, fmt::Write as _};

use memleak_common::Counter;
use serde::Serialize;

use crate::{
    classify::Category,
    incomplete::{Incomplete, Reasons},
    scan::Gap,
    session::TracedRun,
    spawn::ExitStatus,
    symbolize::Frame,
    tracer::Outstanding,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Outstanding bytes.
    #[default]
    Size,
    /// Number of outstanding allocations.
    Count,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// What goes into a report.
#[derive(Clone, Debug)]
pub struct Options {
    pub top: usize,
    pub sort: SortKey,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    pub show_allocs: bool,
    /// List still-reachable stacks too, not only lost ones.
    pub show_reachable: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            top: 10,
            sort: SortKey::Size,
            min_size: None,
            max_size: None,
            show_allocs: false,
            show_reachable: false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub program: String,
    /// How the program ended.
    pub exit: ExitStatus,
    /// Stacks with lost allocations, and reachable ones if asked (filtered, sorted, top N).
    pub stacks: Vec<StackReport>,
    /// Stacks that passed the filters, before the top-N cut.
    pub matching_stacks: usize,
    /// All outstanding memory at exit, unfiltered.
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Outstanding memory by category, unfiltered.
    pub leak_summary: LeakSummary,
    /// Every counter of the tracer, by name.
    pub counters: BTreeMap<&'static str, u64>,
    /// Counters that lost data, non-zero only. Non-empty means the trace is incomplete.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Why the trace is incomplete (drops included): `incomplete` in words and
    /// `incomplete_reasons` as data. Empty when complete.
    #[serde(flatten)]
    pub incomplete: Reasons,
    /// Roots the leak scan could not see while nothing was lost: they can only make memory
    /// look lost, so the result stands.
    pub unseen: Vec<Gap>,
}

impl Report {
    pub fn is_complete(&self) -> bool {
        self.incomplete.is_empty()
    }
}

/// memcheck's LEAK SUMMARY.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LeakSummary {
    pub definitely_lost: Amount,
    pub indirectly_lost: Amount,
    pub still_reachable: Amount,
}

impl LeakSummary {
    fn add(&mut self, category: Category, bytes: u64) {
        let amount = match category {
            Category::DefinitelyLost => &mut self.definitely_lost,
            Category::IndirectlyLost => &mut self.indirectly_lost,
            Category::StillReachable => &mut self.still_reachable,
        };
        amount.bytes += bytes;
        amount.blocks += 1;
    }

    /// Definitely plus indirectly lost.
    pub fn lost(&self) -> Amount {
        Amount {
            bytes: self.definitely_lost.bytes + self.indirectly_lost.bytes,
            blocks: self.definitely_lost.blocks + self.indirectly_lost.blocks,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amount {
    pub bytes: u64,
    pub blocks: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StackReport {
    pub category: Category,
    pub bytes: u64,
    pub allocations: u64,
    /// Innermost first: the function that called the allocator comes first.
    pub frames: Vec<Frame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocs: Option<Vec<AllocEntry>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AllocEntry {
    pub addr: u64,
    pub size: u64,
}

/// Builds the report of one traced run.
pub fn build(run: &TracedRun, options: &Options) -> Report {
    let outstanding: &[Outstanding] = run
        .trace
        .as_ref()
        .map(|trace| trace.outstanding.as_slice())
        .unwrap_or_default();
    let counters = run
        .trace
        .as_ref()
        .map(|trace| trace.counters)
        .unwrap_or_default();

    // Without a scan (no exit stop) nothing can be called reachable.
    let category = |index: usize| {
        run.classification
            .as_ref()
            .and_then(|classification| classification.categories.get(index).copied())
            .unwrap_or(Category::DefinitelyLost)
    };
    let mut leak_summary = LeakSummary::default();
    let mut by_stack: BTreeMap<(Category, u64), Vec<&Outstanding>> = BTreeMap::new();
    for (index, alloc) in outstanding.iter().enumerate() {
        let category = category(index);
        leak_summary.add(category, alloc.size);
        let too_small = options.min_size.is_some_and(|min| alloc.size < min);
        let too_big = options.max_size.is_some_and(|max| alloc.size > max);
        let hidden = category == Category::StillReachable && !options.show_reachable;
        if !too_small && !too_big && !hidden {
            by_stack
                .entry((category, alloc.stack_id))
                .or_default()
                .push(alloc);
        }
    }
    let mut stacks: Vec<StackReport> = by_stack
        .into_iter()
        .map(|((category, stack_id), allocs)| StackReport {
            category,
            bytes: allocs.iter().map(|alloc| alloc.size).sum(),
            allocations: allocs.len() as u64,
            frames: stack_frames(run, stack_id),
            allocs: options.show_allocs.then(|| {
                allocs
                    .iter()
                    .map(|alloc| AllocEntry {
                        addr: alloc.addr,
                        size: alloc.size,
                    })
                    .collect()
            }),
        })
        .collect();
    stacks.sort_by(|a, b| {
        let key = |s: &StackReport| match options.sort {
            SortKey::Size => (s.bytes, s.allocations),
            SortKey::Count => (s.allocations, s.bytes),
        };
        a.category
            .cmp(&b.category)
            .then_with(|| key(b).cmp(&key(a)))
            .then_with(|| frame_key(&a.frames).cmp(&frame_key(&b.frames)))
    });
    let matching_stacks = stacks.len();
    stacks.truncate(options.top);

    let dropped: BTreeMap<&'static str, u64> = counters
        .drops()
        .into_iter()
        .map(|(counter, value)| (counter.name(), value))
        .collect();
    let mut incomplete: Vec<Incomplete> = counters
        .drops()
        .into_iter()
        .map(|(counter, n)| Incomplete::Dropped { counter, n })
        .collect();
    incomplete.extend(run.incomplete.iter().cloned());

    Report {
        program: run.program.clone(),
        exit: run.status.clone(),
        stacks,
        matching_stacks,
        outstanding_bytes: outstanding.iter().map(|alloc| alloc.size).sum(),
        outstanding_allocations: outstanding.len() as u64,
        leak_summary,
        counters: Counter::ALL
            .iter()
            .map(|&counter| (counter.name(), counters.get(counter)))
            .collect(),
        dropped,
        incomplete: Reasons(incomplete),
        unseen: run.unseen.clone(),
    }
}

fn stack_frames(run: &TracedRun, stack_id: u64) -> Vec<Frame> {
    let Some(addrs) = run
        .trace
        .as_ref()
        .and_then(|trace| trace.stacks.get(&stack_id))
    else {
        return vec![Frame::unknown(0, "stack not captured".into())];
    };
    addrs
        .iter()
        .flat_map(|addr| run.frames.get(addr).cloned().unwrap_or_default())
        .collect()
}

fn frame_key(frames: &[Frame]) -> Vec<(Option<&str>, Option<&str>, Option<u32>)> {
    frames
        .iter()
        .map(|f| (f.symbol.as_deref(), f.file.as_deref(), f.line))
        .collect()
}

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

/// BCC memleak's layout, then one summary line.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[{}] Top {} stacks with {} allocations:",
        clock_time(),
        report.stacks.len(),
        if report
            .stacks
            .iter()
            .any(|stack| stack.category == Category::StillReachable)
        {
            "outstanding"
        } else {
            "lost"
        }
    );
    for stack in &report.stacks {
        let _ = writeln!(
            out,
            "\t{} bytes in {} allocations from stack ({})",
            stack.bytes,
            stack.allocations,
            category_words(stack.category)
        );
        for frame in &stack.frames {
            let _ = writeln!(out, "\t\t{}", render_frame(frame));
        }
        for alloc in stack.allocs.iter().flatten() {
            let _ = writeln!(out, "\t\taddr = {:x} size = {}", alloc.addr, alloc.size);
        }
    }
    let summary = &report.leak_summary;
    for (category, amount) in [
        (Category::DefinitelyLost, summary.definitely_lost),
        (Category::IndirectlyLost, summary.indirectly_lost),
        (Category::StillReachable, summary.still_reachable),
    ] {
        let _ = writeln!(
            out,
            "{:>19}: {} bytes in {} blocks",
            category_words(category),
            amount.bytes,
            amount.blocks
        );
    }
    out.push_str(&summary_line(report));
    out.push('\n');
    if let Some(note) = unseen_note(&report.unseen) {
        out.push_str(&note);
        out.push('\n');
    }
    out
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
pub fn stacks_shown(shown: usize, matching: usize) -> String {
    if matching > shown {
        format!(" ({shown} of {matching} stacks shown)")
    } else {
        String::new()
    }
}

/// `dropped: none`, or `INCOMPLETE: ` and the reasons.
pub fn dropped_words(incomplete: &Reasons) -> String {
    if incomplete.is_empty() {
        "dropped: none".to_owned()
    } else {
        format!("INCOMPLETE: {}", incomplete.joined())
    }
}

pub fn summary_line(report: &Report) -> String {
    let shown = stacks_shown(report.stacks.len(), report.matching_stacks);
    let dropped = dropped_words(&report.incomplete);
    format!(
        "memleak: `{}` {}: {} bytes lost in {} blocks, {} bytes outstanding in {} allocations{}; traced {} allocations, {} frees; {}",
        report.program,
        report.exit,
        report.leak_summary.lost().bytes,
        report.leak_summary.lost().blocks,
        report.outstanding_bytes,
        report.outstanding_allocations,
        shown,
        report
            .counters
            .get(Counter::Allocs.name())
            .copied()
            .unwrap_or(0),
        report
            .counters
            .get(Counter::Frees.name())
            .copied()
            .unwrap_or(0),
        dropped,
    )
}

pub fn render_json(report: &Report) -> String {
    // Serializing plain data with string keys cannot fail.
    let mut out = serde_json::to_string_pretty(report).unwrap_or_default();
    out.push('\n');
    out
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Text => render_text(report),
        Format::Json => render_json(report),
    }
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
