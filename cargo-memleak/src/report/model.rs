//! The one report model: which outstanding allocations a report counts, how it groups them
//! into stacks, orders and cuts them, and what the tracer's counters say about completeness.
//! Both [`super::Report`] (at exit) and [`super::Snapshot`] (periodic) are built from it.
//!
//! Invariants: the size filter applies to each allocation, before grouping; ordering is total
//! (the caller's tie-break decides between equal figures, then the stack id); the top-N cut
//! comes last, after the count of matching stacks is taken.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap},
};

use memleak_common::Counter;
use serde::Serialize;

use crate::{
    classify::Category,
    incomplete::Incomplete,
    symbolize::Frame,
    tracer::{Counters, Outstanding},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    /// Outstanding bytes.
    #[default]
    Size,
    /// Number of outstanding allocations.
    Count,
}

/// Which stacks a report shows, and in what order: every report's options.
#[derive(Clone, Copy, Debug)]
pub struct StackOptions {
    /// Show this many stacks.
    pub top: usize,
    pub sort: SortKey,
    /// Only count allocations of at least this many bytes.
    pub min_size: Option<u64>,
    /// Only count allocations of at most this many bytes.
    pub max_size: Option<u64>,
    /// List every allocation of a shown stack.
    pub show_allocs: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            top: 10,
            sort: SortKey::Size,
            min_size: None,
            max_size: None,
            show_allocs: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amount {
    pub bytes: u64,
    pub blocks: u64,
}

/// memcheck's LEAK SUMMARY.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LeakSummary {
    pub definitely_lost: Amount,
    pub indirectly_lost: Amount,
    pub still_reachable: Amount,
}

impl LeakSummary {
    /// Adds another run's summary to this one.
    pub fn merge(&mut self, other: &LeakSummary) {
        for (total, more) in [
            (&mut self.definitely_lost, other.definitely_lost),
            (&mut self.indirectly_lost, other.indirectly_lost),
            (&mut self.still_reachable, other.still_reachable),
        ] {
            total.bytes += more.bytes;
            total.blocks += more.blocks;
        }
    }

    pub(super) fn add(&mut self, category: Category, bytes: u64) {
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

    /// Its three lines, in memcheck's order and words.
    pub fn rows(&self) -> [(Category, Amount); 3] {
        [
            (Category::DefinitelyLost, self.definitely_lost),
            (Category::IndirectlyLost, self.indirectly_lost),
            (Category::StillReachable, self.still_reachable),
        ]
    }
}

/// The outstanding allocations of one stack.
#[derive(Clone, Debug, Serialize)]
pub struct Stack {
    /// Lost or reachable, at exit; `None` in periodic reports, which classify nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    pub bytes: u64,
    pub allocations: u64,
    /// Innermost first: the function that called the allocator comes first.
    pub frames: Vec<Frame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocs: Option<Vec<Alloc>>,
    /// Definitely lost blocks only: the indirectly lost memory they hold, lost only through
    /// them (`None` when they hold none, and for every other stack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds: Option<Amount>,
}

/// A process's heap over its life: the most it had outstanding at once, where that was
/// reached, and what it allocated in all.
#[derive(Clone, Debug, Serialize)]
pub struct HeapUse {
    /// The most bytes it had outstanding at once (blocks recorded, as requested).
    pub peak_bytes: u64,
    /// The stack of the allocation that reached the peak; empty when unknown (a forked child
    /// whose peak is the blocks it started with).
    pub peak_stack: Vec<Frame>,
    /// Blocks it was handed (each `malloc`, `calloc`, `realloc`, `mmap`, ...), and their bytes.
    pub allocations: u64,
    pub allocated_bytes: u64,
}

impl HeapUse {
    /// From a process's trace: `None` when its heap was not followed (sampled, the kernel's).
    pub fn of(
        heap: Option<crate::tracer::Heap>,
        stacks: &HashMap<u64, Vec<u64>>,
        frames: &HashMap<u64, Vec<Frame>>,
    ) -> Option<Self> {
        heap.map(|heap| Self {
            peak_bytes: heap.peak_bytes,
            peak_stack: match heap.peak_stack {
                0 => Vec::new(),
                id => stack_frames(stacks, frames, id),
            },
            allocations: heap.allocations,
            allocated_bytes: heap.allocated_bytes,
        })
    }
}

/// Lost blocks that only point at each other: why they are lost although each is pointed at.
#[derive(Clone, Debug, Serialize)]
pub struct LostCycle {
    pub kind: CycleKind,
    pub bytes: u64,
    /// In address order.
    pub blocks: Vec<CycleBlock>,
}

/// What a cycle's blocks look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CycleKind {
    /// Each starts with counts (strong and weak, both small and positive) and was allocated by
    /// `Rc::new` (or another `alloc::rc` function).
    Rc,
    /// The same, through `alloc::sync`: `Arc`.
    Arc,
    /// Each starts with counts, allocated elsewhere (or some by each).
    RcOrArc,
    /// Not laid out as `Rc` or `Arc` allocations.
    Unknown,
}

impl CycleKind {
    /// A cycle's kind from each block's first two words and its stack's frames.
    pub fn of(blocks: &[(Option<[u64; 2]>, &[Frame])]) -> Self {
        const MAX_COUNT: u64 = 1 << 32;
        let counted = blocks.iter().all(|(head, _)| {
            head.is_some_and(|[strong, weak]| {
                (1..=MAX_COUNT).contains(&strong) && (1..=MAX_COUNT).contains(&weak)
            })
        });
        let all_through = |path: &str| {
            blocks.iter().all(|(_, frames)| {
                frames
                    .iter()
                    .filter_map(|frame| frame.symbol.as_deref())
                    .any(|symbol| symbol.contains(path))
            })
        };
        match counted {
            false => CycleKind::Unknown,
            true if all_through("alloc::rc::") => CycleKind::Rc,
            true if all_through("alloc::sync::") => CycleKind::Arc,
            true => CycleKind::RcOrArc,
        }
    }
}

/// One block of a [`LostCycle`].
#[derive(Clone, Debug, Serialize)]
pub struct CycleBlock {
    pub size: u64,
    /// Where it was allocated: its stack's first frame past the allocator ([`user_frames`]).
    pub site: Option<Frame>,
    /// Its first two words when they read as an `Rc`'s or `Arc`'s strong and weak counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<[u64; 2]>,
}

/// One outstanding allocation, with `--show-allocs`.
#[derive(Clone, Debug, Serialize)]
pub struct Alloc {
    /// The block's address (absent for a kernel page: see `pfn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
    /// A kernel page's frame number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pfn: Option<u64>,
    pub size: u64,
    /// How long ago it was made (periodic reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
}

/// The outstanding allocations of one stack and category, before they become a [`Stack`].
pub(super) struct Group<'t> {
    pub category: Option<Category>,
    pub stack_id: u64,
    pub allocs: Vec<&'t Outstanding>,
}

impl Group<'_> {
    pub fn bytes(&self) -> u64 {
        self.allocs.iter().map(|alloc| alloc.size).sum()
    }

    pub fn allocations(&self) -> u64 {
        self.allocs.len() as u64
    }
}

/// Groups the allocations that pass `options`' size filter by category and stack, in that
/// order.
pub(super) fn group<'t>(
    allocs: impl IntoIterator<Item = (Option<Category>, &'t Outstanding)>,
    options: &StackOptions,
) -> Vec<Group<'t>> {
    let mut by_stack: BTreeMap<(Option<Category>, u64), Vec<&Outstanding>> = BTreeMap::new();
    for (category, alloc) in allocs {
        let too_small = options.min_size.is_some_and(|min| alloc.size < min);
        let too_big = options.max_size.is_some_and(|max| alloc.size > max);
        if !too_small && !too_big {
            by_stack
                .entry((category, alloc.stack_id))
                .or_default()
                .push(alloc);
        }
    }
    by_stack
        .into_iter()
        .map(|((category, stack_id), allocs)| Group {
            category,
            stack_id,
            allocs,
        })
        .collect()
}

/// Orders `stacks` by category (lost first), then largest first by `sort`, then by `then`,
/// keeping the given order between equals; cuts them to the top `top`, and returns how many
/// there were before the cut. `figures` gives a stack's (category, bytes, allocations).
pub(super) fn order_and_cut<T>(
    stacks: &mut Vec<T>,
    sort: SortKey,
    top: usize,
    figures: impl Fn(&T) -> (Option<Category>, u64, u64),
    then: impl Fn(&T, &T) -> Ordering,
) -> usize {
    stacks.sort_by(|a, b| {
        let (a_category, a_bytes, a_count) = figures(a);
        let (b_category, b_bytes, b_count) = figures(b);
        let key = |bytes: u64, count: u64| match sort {
            SortKey::Size => (bytes, count),
            SortKey::Count => (count, bytes),
        };
        a_category
            .cmp(&b_category)
            .then_with(|| key(b_bytes, b_count).cmp(&key(a_bytes, a_count)))
            .then_with(|| then(a, b))
    });
    let matching = stacks.len();
    stacks.truncate(top);
    matching
}

/// A stack's frames: those of each of its return addresses, or one unknown frame when the
/// stack was not captured.
pub(super) fn stack_frames(
    stacks: &HashMap<u64, Vec<u64>>,
    frames: &HashMap<u64, Vec<Frame>>,
    stack_id: u64,
) -> Vec<Frame> {
    let Some(addrs) = stacks.get(&stack_id) else {
        return vec![Frame::unknown(0, "stack not captured".into())];
    };
    addrs
        .iter()
        .flat_map(|addr| frames.get(addr).cloned().unwrap_or_default())
        .collect()
}

/// Every counter of the tracer, by name.
pub(super) fn counter_values(counters: &Counters) -> BTreeMap<&'static str, u64> {
    Counter::ALL
        .iter()
        .map(|&counter| (counter.name(), counters.get(counter)))
        .collect()
}

/// The counters that lost data (non-zero, other than `expected`): by name, and as the reasons
/// the report is incomplete.
pub(super) fn drops(
    counters: &Counters,
    expected: &[Counter],
) -> (BTreeMap<&'static str, u64>, Vec<Incomplete>) {
    let drops: Vec<(Counter, u64)> = counters
        .drops()
        .into_iter()
        .filter(|(counter, _)| !expected.contains(counter))
        .collect();
    let by_name = drops
        .iter()
        .map(|&(counter, n)| (counter.name(), n))
        .collect();
    let reasons = drops
        .into_iter()
        .map(|(counter, n)| Incomplete::Dropped { counter, n })
        .collect();
    (by_name, reasons)
}

/// The frames above libtest's harness (everything from the first `test::` frame down is the
/// harness, not the test): what a test's stack is shown and keyed by.
pub fn above_harness(frames: &[Frame]) -> &[Frame] {
    let harness = frames
        .iter()
        .position(|frame| {
            frame
                .symbol
                .as_deref()
                .is_some_and(|symbol| symbol.starts_with("test::"))
        })
        .unwrap_or(frames.len());
    &frames[..harness]
}

/// Whether a function is the allocator's or the standard library's allocation code
/// (`alloc::`, `core::`, `std::`, their trait impls such as `<u8 as
/// alloc::vec::spec_from_elem::SpecFromElem>::from_elem`, `__rust_alloc`, ...): not where a
/// leak is, only how it was allocated.
pub fn is_allocation_plumbing(symbol: &str) -> bool {
    const CRATES: [&str; 3] = ["alloc::", "core::", "std::"];
    let name = symbol.trim_start_matches('<');
    CRATES
        .iter()
        .any(|krate| name.starts_with(krate) || name.contains(&format!(" as {krate}")))
        || ["__rust", "__rdl", "__rg_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// Where a stack's runtime tail starts: the frames below the program's own code that every
/// stack of its kind has (`std::rt::lang_start` and libc's `__libc_start_main` below a
/// program's `main`, `start_thread` and `clone3` below a thread's first function, the kernel's
/// system call entry below a system call).
fn is_runtime_entry(symbol: &str) -> bool {
    const PREFIXES: [&str; 2] = ["std::rt::lang_start", "__libc_start_main"];
    const NAMES: [&str; 5] = [
        "__libc_start_call_main",
        "_start",
        "start_thread",
        "clone3",
        "clone",
    ];
    PREFIXES.iter().any(|prefix| symbol.starts_with(prefix))
        || NAMES.contains(&symbol)
        || is_kernel_entry(symbol)
        || is_merged_doctest_entry(symbol)
}

/// rustdoc's entry into one of the doc tests it merged (edition 2024): what calls the doc
/// test's `main`, from its own harness.
fn is_merged_doctest_entry(symbol: &str) -> bool {
    symbol.starts_with("doctest_bundle_20") && symbol.ends_with("::__main_fn")
}

/// Whether a kernel function is where the kernel was entered: a system call's entry, or a
/// new task's first return.
pub fn is_kernel_entry(symbol: &str) -> bool {
    ["entry_SYSCALL_64", "ret_from_fork"]
        .iter()
        .any(|prefix| symbol.starts_with(prefix))
        || symbol == "do_syscall_64"
}

/// Whether a kernel function is one of the kernel's allocators (`__kmalloc_cache_noprof`,
/// `kmem_cache_alloc_noprof`, `__alloc_frozen_pages_noprof`, `__kvmalloc_node_noprof`,
/// `pcpu_alloc_noprof`, ...): in a kernel stack, how it was allocated, as `alloc::` is in a
/// program's.
fn is_kernel_allocator(symbol: &str) -> bool {
    const ALLOCATORS: [&str; 12] = [
        "kmalloc",
        "kzalloc",
        "krealloc",
        "kvmalloc",
        "kvzalloc",
        "kmem_cache_alloc",
        "alloc_pages",
        "alloc_frozen_pages",
        "folio_alloc",
        "vmalloc",
        "pcpu_alloc",
        "alloc_percpu",
    ];
    let name = symbol.trim_start_matches('_');
    ALLOCATORS.iter().any(|prefix| name.starts_with(prefix))
}

/// A stack as the user reads it: above libtest's harness and the runtime's tail, from the
/// first frame past the allocator and the standard library's allocation code (the frames the
/// baseline's stack key skips too) to the last frame that is not the standard library's (below
/// it, `FnOnce` glue, the harness, `std::rt` and the thread or process entry); the whole of it
/// above the harness when it is all such code (the runtime allocating). As a range of indices
/// into `frames`.
pub fn user_frames(frames: &[Frame]) -> std::ops::Range<usize> {
    let frames = above_harness(frames);
    fn symbol(frame: &Frame) -> Option<&str> {
        frame.symbol.as_deref()
    }
    let tail = frames
        .iter()
        .position(|frame| symbol(frame).is_some_and(is_runtime_entry))
        .unwrap_or(frames.len());
    let user = |frame: &Frame| {
        symbol(frame)
            .is_some_and(|symbol| !is_allocation_plumbing(symbol) && !is_kernel_allocator(symbol))
    };
    let own = &frames[..tail];
    match (own.iter().position(user), own.iter().rposition(user)) {
        (Some(first), Some(last)) => first..last + 1,
        _ => 0..frames.len(),
    }
}
