//! Reports: first the data, then its renderings. One model serves the report at a traced
//! program's exit ([`Report`]: `exec`, `run`, and each test of `test`) and the periodic ones of
//! a process or the kernel traced mid-run ([`Snapshot`]: `attach`, `kernel`): outstanding
//! allocations pass a size filter, are grouped by stack (at exit, by category too), ordered and
//! cut to the top N, and the tracer's drop counters become reasons the report is incomplete
//! (`model`). [`text`] renders them in BCC memleak's and memcheck's wording, [`json`] as
//! JSON, [`folded`] as folded stacks and flame graphs.
//!
//! Invariants: stacks are ordered by category (definitely lost, indirectly lost, still
//! reachable), then by bytes or count (descending), then by a deterministic tie-break (frames
//! at exit, stack id mid-run), so output is deterministic; at exit totals count every
//! outstanding allocation whatever the filters, mid-run every allocation that passes them;
//! JSON carries no addresses unless `--show-allocs` asked for them.

mod exit;
pub mod folded;
pub mod json;
mod model;
mod periodic;
pub mod text;

pub use exit::{Options, Report, build};
pub use model::{
    Alloc, Amount, CycleBlock, CycleKind, HeapUse, LeakSummary, LostCycle, SortKey, Stack,
    StackOptions, above_harness, is_allocation_plumbing, user_frames,
};
pub use periodic::{PeriodicOptions, Snapshot, process_snapshot, snapshot};
pub use text::{category_words, render_frame};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The short view ([`text::Short`]): BCC's layout with the user's frames first.
    #[default]
    Text,
    /// BCC memleak's text, byte for byte.
    Bcc,
    Json,
    /// Brendan Gregg's folded stacks, one `frame;frame;frame bytes` line per stack.
    Folded,
}

/// The report at exit, as text (stacks as `style` says), BCC's text, JSON or folded stacks.
pub fn render(report: &Report, format: Format, style: &text::Short) -> String {
    match format {
        Format::Text => text::render_exit(report, text::Layout::Short(style)),
        Format::Bcc => text::render_exit(report, text::Layout::Bcc),
        Format::Json => json::render_exit(report),
        Format::Folded => folded::render_exit(report),
    }
}

/// A periodic report, as text (stacks as `style` says), BCC's text, one JSON object per line
/// or folded stacks.
pub fn render_periodic(snapshot: &Snapshot, format: Format, style: &text::Short) -> String {
    match format {
        Format::Text => text::render_periodic(snapshot, text::Layout::Short(style)),
        Format::Bcc => text::render_periodic(snapshot, text::Layout::Bcc),
        Format::Json => json::render_periodic(snapshot),
        Format::Folded => folded::render_periodic(snapshot),
    }
}
