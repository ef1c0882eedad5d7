//! The report at a traced program's exit: every outstanding allocation classified (definitely
//! lost, indirectly lost, still reachable), memcheck's leak summary, and the stacks asked for.
//!
//! Invariants: totals and the leak summary count every outstanding allocation, whatever the
//! filters; still-reachable stacks are listed only when asked for; an allocation the scan did
//! not classify (no exit stop) counts as definitely lost.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::model::{
    self, Alloc, Amount, CycleBlock, CycleKind, HeapUse, LeakSummary, LostCycle, Stack,
    StackOptions,
};
use crate::{
    classify::{Category, Cycle},
    incomplete::Reasons,
    scan::Gap,
    session::{ChildFate, TracedRun},
    spawn::ExitStatus,
    symbolize::Frame,
    tracer::Outstanding,
};

/// What goes into a report at exit.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub stacks: StackOptions,
    /// List still-reachable stacks too, not only lost ones.
    pub show_reachable: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub program: String,
    /// How the program ended.
    pub exit: ExitStatus,
    /// Stacks with lost allocations, and reachable ones if asked (filtered, sorted, top N).
    pub stacks: Vec<Stack>,
    /// Stacks that passed the filters, before the top-N cut.
    pub matching_stacks: usize,
    /// The lost blocks that only point at each other, largest first (unfiltered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cycles: Vec<LostCycle>,
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
    /// Its heap over its life (`None`: not followed, as under `--sample-rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap: Option<HeapUse>,
    /// The processes it started that were followed, in the order they ended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildReport>,
}

/// A followed child's own report.
#[derive(Clone, Debug, Serialize)]
pub struct ChildReport {
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// How it ended: `scanned`, `killed` (no exit stop), `still_running`, `handed_over` (to a
    /// `ptrace` call's caller) or `untraced`.
    pub fate: &'static str,
    /// Its report, when it was scanned at its exit stop.
    pub report: Option<Report>,
}

impl Report {
    /// Complete, and so is every child's (an untraced child is not).
    pub fn is_complete(&self) -> bool {
        self.incomplete.is_empty()
            && self.children.iter().all(|child| {
                child.fate != "untraced" && child.report.as_ref().is_none_or(Report::is_complete)
            })
    }
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
    let no_stacks = Default::default();
    let stacks_of = run.trace.as_ref().map_or(&no_stacks, |trace| &trace.stacks);

    // Without a scan (no exit stop) nothing can be called reachable.
    let category = |index: usize| {
        run.classification
            .as_ref()
            .and_then(|classification| classification.categories.get(index).copied())
            .unwrap_or(Category::DefinitelyLost)
    };
    let mut leak_summary = LeakSummary::default();
    for (index, alloc) in outstanding.iter().enumerate() {
        leak_summary.add(category(index), alloc.size);
    }
    // What each definitely lost block holds, by its address.
    let mut held: HashMap<u64, Amount> = HashMap::new();
    if let Some(classification) = &run.classification {
        for (index, holder) in classification.holders.iter().enumerate() {
            if let (Some(holder), Some(alloc)) = (holder, outstanding.get(index))
                && let Some(holder) = outstanding.get(*holder)
            {
                let amount = held.entry(holder.addr).or_default();
                amount.bytes += alloc.size;
                amount.blocks += 1;
            }
        }
    }
    let shown = outstanding
        .iter()
        .enumerate()
        .map(|(index, alloc)| (category(index), alloc))
        .filter(|&(category, _)| options.show_reachable || category != Category::StillReachable)
        .map(|(category, alloc)| (Some(category), alloc));
    let mut stacks: Vec<Stack> = model::group(shown, &options.stacks)
        .into_iter()
        .map(|group| Stack {
            holds: (group.category == Some(Category::DefinitelyLost))
                .then(|| {
                    group.allocs.iter().fold(Amount::default(), |total, alloc| {
                        let more = held.get(&alloc.addr).copied().unwrap_or_default();
                        Amount {
                            bytes: total.bytes + more.bytes,
                            blocks: total.blocks + more.blocks,
                        }
                    })
                })
                .filter(|holds| holds.blocks > 0),
            category: group.category,
            bytes: group.bytes(),
            allocations: group.allocations(),
            frames: model::stack_frames(stacks_of, &run.frames, group.stack_id),
            allocs: options.stacks.show_allocs.then(|| {
                group
                    .allocs
                    .iter()
                    .map(|alloc| Alloc {
                        addr: Some(alloc.addr),
                        pfn: None,
                        size: alloc.size,
                        age_ms: None,
                    })
                    .collect()
            }),
        })
        .collect();
    let matching_stacks = model::order_and_cut(
        &mut stacks,
        options.stacks.sort,
        options.stacks.top,
        |stack| (stack.category, stack.bytes, stack.allocations),
        |a, b| frame_key(&a.frames).cmp(&frame_key(&b.frames)),
    );

    let cycles = run
        .classification
        .iter()
        .flat_map(|classification| &classification.cycles)
        .map(|cycle| lost_cycle(cycle, outstanding, stacks_of, &run.frames))
        .collect();

    let (dropped, mut incomplete) = model::drops(&counters, &[]);
    incomplete.extend(run.incomplete.iter().cloned());

    Report {
        program: run.program.clone(),
        exit: run.status.clone(),
        stacks,
        matching_stacks,
        cycles,
        outstanding_bytes: outstanding.iter().map(|alloc| alloc.size).sum(),
        outstanding_allocations: outstanding.len() as u64,
        leak_summary,
        counters: model::counter_values(&counters),
        dropped,
        incomplete: Reasons(incomplete),
        unseen: run.unseen.clone(),
        heap: HeapUse::of(
            run.trace.as_ref().and_then(|trace| trace.heap),
            stacks_of,
            &run.frames,
        ),
        children: run
            .children
            .iter()
            .map(|child| ChildReport {
                pid: child.pid,
                command: child.program.clone(),
                fate: match child.fate {
                    ChildFate::Scanned => "scanned",
                    ChildFate::Killed(_) => "killed",
                    ChildFate::StillRunning => "still_running",
                    ChildFate::HandedOver => "handed_over",
                    ChildFate::Untraced(_) => "untraced",
                },
                report: child.run.as_ref().map(|run| build(run, options)),
            })
            .collect(),
    }
}

/// A cycle of the classification as the report tells it: each block's size and site, and
/// what the blocks look like.
fn lost_cycle(
    cycle: &Cycle,
    outstanding: &[Outstanding],
    stacks: &HashMap<u64, Vec<u64>>,
    frames: &HashMap<u64, Vec<Frame>>,
) -> LostCycle {
    struct Member {
        size: u64,
        frames: Vec<Frame>,
        head: Option<[u64; 2]>,
    }
    let members: Vec<Member> = cycle
        .blocks
        .iter()
        .zip(&cycle.heads)
        .filter_map(|(&index, &head)| {
            let alloc = outstanding.get(index)?;
            Some(Member {
                size: alloc.size,
                frames: model::stack_frames(stacks, frames, alloc.stack_id),
                head,
            })
        })
        .collect();
    let kind = CycleKind::of(
        &members
            .iter()
            .map(|member| (member.head, member.frames.as_slice()))
            .collect::<Vec<_>>(),
    );
    LostCycle {
        kind,
        bytes: members.iter().map(|member| member.size).sum(),
        blocks: members
            .iter()
            .map(|member| CycleBlock {
                size: member.size,
                site: member
                    .frames
                    .get(model::user_frames(&member.frames).start)
                    .cloned(),
                counts: member.head.filter(|_| kind != CycleKind::Unknown),
            })
            .collect(),
    }
}

fn frame_key(frames: &[Frame]) -> Vec<(Option<&str>, Option<&str>, Option<u32>)> {
    frames
        .iter()
        .map(|f| (f.symbol.as_deref(), f.file.as_deref(), f.line))
        .collect()
}
