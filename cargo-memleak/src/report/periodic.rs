//! A periodic report of a process or the kernel traced mid-run, as BCC's memleak prints them.
//! Tracing started in the middle of things, so nothing is classified (a block allocated before
//! the probes went in may be what keeps a traced one alive) and a free of an unknown block is
//! expected, not a drop.
//!
//! With `--combined-only` the figures are the kernel's totals per stack, which have no ages or
//! sizes of single blocks: every outstanding allocation counts. With `--sample-rate N` they are
//! those of the recorded allocations (one in N), said so and never scaled.
//!
//! Invariants: a report counts only allocations at least `older` old (young ones are usually
//! about to be freed), except from combined totals; totals cover every allocation that passes
//! the filters, the stacks only the top N, and only those N are symbolized.

use std::{collections::BTreeMap, collections::HashMap, time::Duration};

use memleak_common::Counter;
use nix::{
    sys::time::TimeSpec,
    time::{ClockId, clock_gettime},
};
use serde::Serialize;

use super::{
    model::{self, Alloc, Stack, StackOptions},
    text::clock_time,
};
use crate::{incomplete::Reasons, symbolize::Frame, tracer::ProcessTrace};

/// What a periodic report counts and shows.
#[derive(Clone, Debug, Default)]
pub struct PeriodicOptions {
    /// Leave out allocations younger than this.
    pub older: Duration,
    pub stacks: StackOptions,
    /// `--wa-missing-free`: an allocation at an address still recorded is taken for the old
    /// block's free (`missing_free` is then informational, not a drop).
    pub missing_free_is_free: bool,
}

/// One periodic report.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Wall-clock time of the report, HH:MM:SS (UTC).
    pub time: String,
    /// What is traced: `pid N` or `kernel`.
    pub target: String,
    pub older_than_ms: u64,
    /// `--sample-rate N`: one allocation in N (per thread) was recorded, and every figure is
    /// of those, unscaled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled_one_in: Option<u32>,
    /// `--combined-only`: the figures are the kernel's totals per stack (`older_than_ms` does
    /// not apply).
    pub combined: bool,
    /// The report made at the process's exit, with why its blocks are not classified (lost or
    /// reachable); `None` for a report while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_exit: Option<String>,
    /// The largest stacks (top N), filtered and sorted.
    pub stacks: Vec<Stack>,
    /// Stacks that passed the filters, before the top-N cut.
    pub matching_stacks: usize,
    /// Every allocation that passed the filters.
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Every counter since tracing began, by name.
    pub counters: BTreeMap<&'static str, u64>,
    /// Counters that lost data, non-zero only (not `free_unknown`: expected here).
    pub dropped: BTreeMap<&'static str, u64>,
    /// Why the report is incomplete: `incomplete` in words and `incomplete_reasons` as data.
    /// Empty when complete.
    #[serde(flatten)]
    pub incomplete: Reasons,
}

/// Builds one report from what the tracer recorded; `symbolize` gets the return addresses of
/// the shown stacks only. `pfn_of` tells a kernel page's key from a block's address.
pub fn snapshot(
    target: &str,
    trace: &ProcessTrace,
    options: &PeriodicOptions,
    pfn_of: impl Fn(u64) -> Option<u64>,
    symbolize: impl FnOnce(&[u64]) -> HashMap<u64, Vec<Frame>>,
) -> Snapshot {
    let now = monotonic_ns();
    let older_ns = match trace.combined {
        Some(_) => 0,
        None => options.older.as_nanos() as u64,
    };
    let old_enough = trace
        .outstanding
        .iter()
        .filter(|alloc| now.saturating_sub(alloc.timestamp_ns) >= older_ns)
        .map(|alloc| (None, alloc));
    let mut rows: Vec<Row> = match &trace.combined {
        Some(totals) => totals
            .iter()
            .map(|(&stack_id, total)| Row {
                stack_id,
                bytes: total.bytes,
                allocations: total.allocations,
                allocs: Vec::new(),
            })
            .collect(),
        None => model::group(old_enough, &options.stacks)
            .into_iter()
            .map(|group| Row {
                stack_id: group.stack_id,
                bytes: group.bytes(),
                allocations: group.allocations(),
                allocs: group.allocs,
            })
            .collect(),
    };
    let outstanding_bytes = rows.iter().map(|row| row.bytes).sum();
    let outstanding_allocations = rows.iter().map(|row| row.allocations).sum();
    let matching_stacks = model::order_and_cut(
        &mut rows,
        options.stacks.sort,
        options.stacks.top,
        |row| (None, row.bytes, row.allocations),
        |a, b| a.stack_id.cmp(&b.stack_id),
    );

    let mut addrs: Vec<u64> = rows
        .iter()
        .filter_map(|row| trace.stacks.get(&row.stack_id))
        .flatten()
        .copied()
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    let frames = symbolize(&addrs);
    let stacks = rows
        .into_iter()
        .map(|row| Stack {
            category: None,
            holds: None,
            bytes: row.bytes,
            allocations: row.allocations,
            frames: model::stack_frames(&trace.stacks, &frames, row.stack_id),
            allocs: options.stacks.show_allocs.then(|| {
                let mut allocs: Vec<Alloc> = row
                    .allocs
                    .iter()
                    .map(|alloc| {
                        let pfn = pfn_of(alloc.addr);
                        Alloc {
                            addr: pfn.is_none().then_some(alloc.addr),
                            pfn,
                            size: alloc.size,
                            age_ms: Some(now.saturating_sub(alloc.timestamp_ns) / 1_000_000),
                        }
                    })
                    .collect();
                allocs.sort_by_key(|alloc| (alloc.addr, alloc.pfn));
                allocs
            }),
        })
        .collect();

    let expected: &[Counter] = if options.missing_free_is_free {
        &[Counter::FreeUnknown, Counter::MissingFree]
    } else {
        &[Counter::FreeUnknown]
    };
    let (dropped, incomplete) = model::drops(&trace.counters, expected);
    Snapshot {
        time: clock_time(),
        target: target.to_owned(),
        older_than_ms: older_ns / 1_000_000,
        sampled_one_in: trace.sampled,
        combined: trace.combined.is_some(),
        at_exit: None,
        stacks,
        matching_stacks,
        outstanding_bytes,
        outstanding_allocations,
        counters: model::counter_values(&trace.counters),
        dropped,
        incomplete: Reasons(incomplete),
    }
}

/// [`snapshot`] of process `pid`, its frames symbolized in the process (through thread
/// `tid`: a process at its exit stop is read through the stopped thread).
pub fn process_snapshot(
    pid: u32,
    tid: u32,
    trace: &ProcessTrace,
    options: &PeriodicOptions,
    symbolizer: &crate::symbolize::Symbolizer,
) -> Snapshot {
    snapshot(
        &format!("pid {pid}"),
        trace,
        options,
        |_| None,
        |addrs| symbolizer.symbolize(tid, addrs),
    )
}

/// One stack's figures, from its allocations or from the kernel's total.
struct Row<'t> {
    stack_id: u64,
    bytes: u64,
    allocations: u64,
    /// Its allocations, when they were read one by one.
    allocs: Vec<&'t crate::tracer::Outstanding>,
}

/// Nanoseconds on the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|time: TimeSpec| time.tv_sec() as u64 * 1_000_000_000 + time.tv_nsec() as u64)
        .unwrap_or(0)
}
