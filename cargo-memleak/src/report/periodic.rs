//! A periodic report of a process or the kernel traced mid-run, as BCC's memleak prints them.
//! Tracing started in the middle of things, so nothing is classified (a block allocated before
//! the probes went in may be what keeps a traced one alive) and a free of an unknown block is
//! expected, not a drop.
//!
//! Invariants: a report counts only allocations at least `older` old (young ones are usually
//! about to be freed); totals cover every allocation that passes the filters, the stacks only
//! the top N, and only those N are symbolized.

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
}

/// One periodic report.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Wall-clock time of the report, HH:MM:SS (UTC).
    pub time: String,
    /// What is traced: `pid N` or `kernel`.
    pub target: String,
    pub older_than_ms: u64,
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
    let older_ns = options.older.as_nanos() as u64;
    let old_enough = trace
        .outstanding
        .iter()
        .filter(|alloc| now.saturating_sub(alloc.timestamp_ns) >= older_ns)
        .map(|alloc| (None, alloc));
    let mut groups = model::group(old_enough, &options.stacks);
    let outstanding_bytes = groups.iter().map(model::Group::bytes).sum();
    let outstanding_allocations = groups.iter().map(model::Group::allocations).sum();
    let matching_stacks = model::order_and_cut(
        &mut groups,
        options.stacks.sort,
        options.stacks.top,
        |group| (group.category, group.bytes(), group.allocations()),
        |a, b| a.stack_id.cmp(&b.stack_id),
    );

    let mut addrs: Vec<u64> = groups
        .iter()
        .filter_map(|group| trace.stacks.get(&group.stack_id))
        .flatten()
        .copied()
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    let frames = symbolize(&addrs);
    let stacks = groups
        .into_iter()
        .map(|group| Stack {
            category: None,
            bytes: group.bytes(),
            allocations: group.allocations(),
            frames: model::stack_frames(&trace.stacks, &frames, group.stack_id),
            allocs: options.stacks.show_allocs.then(|| {
                let mut allocs: Vec<Alloc> = group
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

    let (dropped, incomplete) = model::drops(&trace.counters, &[Counter::FreeUnknown]);
    Snapshot {
        time: clock_time(),
        target: target.to_owned(),
        older_than_ms: options.older.as_millis() as u64,
        stacks,
        matching_stacks,
        outstanding_bytes,
        outstanding_allocations,
        counters: model::counter_values(&trace.counters),
        dropped,
        incomplete: Reasons(incomplete),
    }
}

/// Nanoseconds on the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|time: TimeSpec| time.tv_sec() as u64 * 1_000_000_000 + time.tv_nsec() as u64)
        .unwrap_or(0)
}
