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
    model::{Amount, CycleKind, HeapUse, LostCycle, Stack, above_harness},
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

/// How a test's stack reads by default: from the first frame past the allocator, short paths,
/// no offsets; `full` shows every frame as [`render_frame`] does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Short {
    /// `--full-stacks`.
    pub full: bool,
    /// Paths under it are shown relative to it.
    pub workspace_root: Option<std::path::PathBuf>,
}

/// The longest frame line the short view prints; longer symbols are cut in the middle.
const SHORT_FRAME_MAX: usize = 150;

/// `path` as the short view shows it: relative to the workspace root, the standard library's
/// from `library/` (`library/alloc/src/raw_vec/mod.rs`), a registry crate's from its
/// `name-version/` directory; anything else whole.
pub fn short_path(path: &str, workspace_root: Option<&std::path::Path>) -> String {
    if let Some(root) = workspace_root
        && let Ok(relative) = std::path::Path::new(path).strip_prefix(root)
    {
        return relative.display().to_string();
    }
    let std_source = path.starts_with("/rustc/") || path.contains("/lib/rustlib/src/rust/");
    if std_source && let Some(index) = path.find("/library/") {
        return path[index + 1..].to_owned();
    }
    if let Some(index) = path.find("/registry/src/") {
        // .../registry/src/index.crates.io-HASH/serde-1.0.219/src/lib.rs
        let rest = &path[index + "/registry/src/".len()..];
        if let Some((_, inside)) = rest.split_once('/') {
            return inside.to_owned();
        }
    }
    path.to_owned()
}

/// A module's file name without cargo's `-<16 hex digits>` suffix (`gate-ada4b0710e96b47a` is
/// `gate`).
pub fn without_hash(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((stem, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            stem
        }
        _ => name,
    }
}

/// One frame in the short view: `symbol (short/path.rs:line)`, `[inlined]`, and the module
/// only when it is a shared object (`[libc.so.6]`), never an offset.
pub fn render_short_frame(frame: &Frame, workspace_root: Option<&std::path::Path>) -> String {
    let location = frame.file.as_ref().map(|file| {
        let file = short_path(file, workspace_root);
        match frame.line {
            Some(line) => format!(" ({file}:{line})"),
            None => format!(" ({file})"),
        }
    });
    let module = if frame.inlined {
        " [inlined]".to_owned()
    } else if let Some(module) = &frame.module {
        let name = module.rsplit('/').next().unwrap_or(module);
        if name.contains(".so") {
            format!(" [{}]", without_hash(name))
        } else {
            String::new()
        }
    } else if let Some(reason) = &frame.unknown_reason {
        format!(" [unknown: {reason}]")
    } else {
        String::new()
    };
    let tail = format!("{}{module}", location.unwrap_or_default());
    let symbol = match &frame.symbol {
        Some(symbol) => symbol.clone(),
        None => format!("{:#x}", frame.addr),
    };
    let room = SHORT_FRAME_MAX.saturating_sub(tail.chars().count()).max(40);
    format!("{}{tail}", cut_middle(&symbol, room))
}

/// `text` cut to `max` characters by leaving out its middle (`...`).
fn cut_middle(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let keep = max.saturating_sub(3);
    let head: String = text.chars().take(keep / 2).collect();
    let tail: String = text.chars().skip(count - (keep - keep / 2)).collect();
    format!("{head}...{tail}")
}

/// How a text report writes its stacks.
#[derive(Clone, Copy, Debug)]
pub enum Layout<'a> {
    /// BCC memleak's, byte for byte: every frame as `symbol+0xoff (file:line) [module]`, and
    /// the summary on one line (`--format bcc`).
    Bcc,
    /// The short view ([`write_short_stack`]; every frame with `--full-stacks`), what each lost
    /// stack holds, and the summary on two lines (`--format text`).
    Short(&'a Short),
}

impl<'a> Layout<'a> {
    fn write_stack(self, out: &mut String, stack: &Stack) {
        match self {
            Layout::Bcc => write_stack(out, stack, Frames::All),
            Layout::Short(style) if style.full => {
                write_stack(out, stack, Frames::All);
                write_holds(out, stack);
            }
            Layout::Short(style) => write_short_stack(out, stack, style),
        }
    }

    fn workspace_root(self) -> Option<&'a std::path::Path> {
        match self {
            Layout::Bcc => None,
            Layout::Short(style) => style.workspace_root.as_deref(),
        }
    }
}

/// A test's stack as the test runner shows it: the short view, or with `--full-stacks` every
/// frame above the harness as [`write_stack`] shows them.
pub fn write_test_stack(out: &mut String, stack: &Stack, style: &Short) {
    if style.full {
        write_stack(out, stack, Frames::AboveHarness);
        write_holds(out, stack);
    } else {
        write_short_stack(out, stack, style);
    }
}

/// A stack in the short view: the frames past the allocator and above the standard library's
/// glue, libtest's harness and the runtime's tail ([`user_frames`](super::user_frames)), saying
/// how many were left out on each side.
pub fn write_short_stack(out: &mut String, stack: &Stack, style: &Short) {
    write_stack_heading(out, stack);
    let shown = super::model::user_frames(&stack.frames);
    let root = style.workspace_root.as_deref();
    for frame in &stack.frames[shown.clone()] {
        let _ = writeln!(out, "\t\t{}", render_short_frame(frame, root));
    }
    let above = shown.start;
    let below = stack.frames.len() - shown.end;
    if above + below > 0 {
        let first_below = stack.frames[shown.end..]
            .iter()
            .find_map(|f| f.symbol.as_deref());
        let tail = if above_harness(&stack.frames).len() < stack.frames.len() {
            "the standard library and the test harness"
        } else if first_below.is_some_and(super::model::is_kernel_entry) {
            "the kernel's entry"
        } else {
            "the standard library and the runtime"
        };
        let _ = writeln!(
            out,
            "\t\t({above} frames of the allocator above, {below} of {tail} below; --full-stacks \
             shows them)"
        );
    }
    write_holds(out, stack);
}

/// What a definitely lost stack's blocks hold: the indirectly lost memory reached only
/// through them.
fn write_holds(out: &mut String, stack: &Stack) {
    if let Some(holds) = stack.holds {
        let _ = writeln!(
            out,
            "\t\tholding {} bytes more in {} blocks, lost only through these (indirectly lost)",
            holds.bytes, holds.blocks
        );
    }
}

/// A process's heap in words: `peak heap 1048576 bytes, reached at peaks::fill
/// (tests/peaks.rs:9); 201 allocations of 1150000 bytes in all`.
pub fn heap_line(heap: &HeapUse, workspace_root: Option<&std::path::Path>) -> String {
    let site = match heap
        .peak_stack
        .get(super::model::user_frames(&heap.peak_stack).start)
    {
        Some(frame) => render_short_frame(frame, workspace_root),
        None => "the blocks it started with".to_owned(),
    };
    format!(
        "peak heap {} bytes, reached at {site}; {} allocations of {} bytes in all",
        heap.peak_bytes, heap.allocations, heap.allocated_bytes
    )
}

/// How many of a cycle's blocks and sites a line names before it counts the rest.
const CYCLE_SHOWN: usize = 4;

/// A cycle among lost blocks in words: its blocks and their sizes, where they were allocated,
/// each site once, and what they look like (`a cycle of 2 lost blocks (1032 + 1032 bytes)
/// allocated at cycles::rc_node (tests/cycles.rs:22): likely an Rc cycle (strong and weak
/// counts 1 and 1, 1 and 1)`).
pub fn cycle_line(cycle: &LostCycle, workspace_root: Option<&std::path::Path>) -> String {
    let count = cycle.blocks.len();
    let sizes = if count <= CYCLE_SHOWN {
        let sizes: Vec<String> = cycle.blocks.iter().map(|b| b.size.to_string()).collect();
        format!("{} bytes", sizes.join(" + "))
    } else {
        format!("{} bytes", cycle.bytes)
    };
    let mut sites: Vec<String> = Vec::new();
    for block in &cycle.blocks {
        let site = block.site.as_ref().map_or_else(
            || "an unknown site".to_owned(),
            |frame| render_short_frame(frame, workspace_root),
        );
        if !sites.contains(&site) {
            sites.push(site);
        }
    }
    let more = sites.len().saturating_sub(CYCLE_SHOWN);
    sites.truncate(CYCLE_SHOWN);
    let sites = match (sites.as_slice(), more) {
        ([one], 0) => one.clone(),
        ([first @ .., last], 0) => format!("{} and {last}", first.join(", ")),
        (shown, more) => format!("{} and {more} more sites", shown.join(", ")),
    };
    let kind = match cycle.kind {
        CycleKind::Rc => Some("an Rc"),
        CycleKind::Arc => Some("an Arc"),
        CycleKind::RcOrArc => Some("an Rc or Arc"),
        CycleKind::Unknown => None,
    };
    let blocks = if count == 1 {
        "a lost block pointing at itself".to_owned()
    } else {
        format!("a cycle of {count} lost blocks")
    };
    let mut line = format!("{blocks} ({sizes}) allocated at {sites}");
    if let Some(kind) = kind {
        let counts: Vec<String> = cycle
            .blocks
            .iter()
            .take(CYCLE_SHOWN)
            .filter_map(|block| block.counts)
            .map(|[strong, weak]| format!("{strong} and {weak}"))
            .collect();
        let _ = write!(
            line,
            ": likely {kind} cycle (strong and weak counts {}{})",
            counts.join(", "),
            if count > CYCLE_SHOWN { ", ..." } else { "" }
        );
    }
    line
}

fn write_stack_heading(out: &mut String, stack: &Stack) {
    let _ = write!(
        out,
        "\t{} bytes in {} allocations from stack",
        stack.bytes, stack.allocations
    );
    if let Some(category) = stack.category {
        let _ = write!(out, " ({})", category_words(category));
    }
    out.push('\n');
}

/// A stack: `\tB bytes in M allocations from stack (category)`, its frames, its allocations.
pub fn write_stack(out: &mut String, stack: &Stack, frames: Frames) {
    write_stack_heading(out, stack);
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

/// BCC memleak's layout, memcheck's leak summary, then the summary: the report at a program's
/// exit.
pub fn render_exit(report: &Report, layout: Layout) -> String {
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
        layout.write_stack(&mut out, stack);
    }
    for (category, amount) in report.leak_summary.rows() {
        write_amount(&mut out, category_words(category), amount);
    }
    match layout {
        Layout::Bcc => {
            out.push_str(&summary_line(report));
            out.push('\n');
        }
        Layout::Short(style) => {
            let root = style.workspace_root.as_deref();
            let (outcome, tracing) = summary_lines(report, root);
            let _ = writeln!(out, "{outcome}\n{tracing}");
            if let Some(heap) = &report.heap {
                let _ = writeln!(out, "memleak: {}", heap_line(heap, root));
            }
        }
    }
    for cycle in &report.cycles {
        let _ = writeln!(
            out,
            "memleak: {}",
            cycle_line(cycle, layout.workspace_root())
        );
    }
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
            out.push_str(&render_exit(report, layout));
        }
    }
    out
}

/// BCC's periodic layout: a timestamped heading, each stack with its frames, a summary line.
pub fn render_periodic(snapshot: &Snapshot, layout: Layout) -> String {
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
        layout.write_stack(&mut out, stack);
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

/// The exit report's last line in BCC's layout: what the program did, lost and left
/// outstanding, and what was traced.
pub fn summary_line(report: &Report) -> String {
    let (outcome, tracing) = summary_parts(report, &report.program);
    format!("{outcome}; {tracing}")
}

/// The short view's two summary lines: what the program (its path relative to
/// `workspace_root`) did, lost and left outstanding; what was traced and dropped.
pub fn summary_lines(
    report: &Report,
    workspace_root: Option<&std::path::Path>,
) -> (String, String) {
    let program = workspace_root
        .and_then(|root| {
            let root = root.to_str()?.trim_end_matches('/');
            report.program.strip_prefix(root)?.strip_prefix('/')
        })
        .unwrap_or(&report.program);
    let (outcome, tracing) = summary_parts(report, program);
    (outcome, format!("memleak: {tracing}"))
}

fn summary_parts(report: &Report, program: &str) -> (String, String) {
    let shown = stacks_shown(report.stacks.len(), report.matching_stacks);
    let dropped = dropped_words(&report.incomplete);
    let counter = |counter: Counter| report.counters.get(counter.name()).copied().unwrap_or(0);
    let outcome = format!(
        "memleak: `{program}` {}: {} bytes lost in {} blocks, {} bytes outstanding in {} \
         allocations{shown}",
        report.exit,
        report.leak_summary.lost().bytes,
        report.leak_summary.lost().blocks,
        report.outstanding_bytes,
        report.outstanding_allocations,
    );
    let tracing = format!(
        "traced {} allocations, {} frees; {dropped}",
        counter(Counter::Allocs),
        counter(Counter::Frees),
    );
    (outcome, tracing)
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

    fn stack_of(symbols: &[&str]) -> Vec<Frame> {
        symbols
            .iter()
            .map(|symbol| frame(Some(symbol), false))
            .collect()
    }

    #[test]
    fn the_short_view_ends_above_the_runtime() {
        let user_frames = super::super::user_frames;
        // A program's main, on libc's start.
        let program = stack_of(&[
            "<alloc::raw_vec::RawVecInner>::try_allocate_in",
            "leaky::leak_vec",
            "leaky::main",
            "<fn() as core::ops::function::FnOnce<()>>::call_once",
            "std::rt::lang_start::<()>::{closure#0}",
            "std::rt::lang_start_internal",
            "main",
            "__libc_start_call_main",
        ]);
        assert_eq!(user_frames(&program), 1..3);
        // A thread's closure, on std's thread start and libc's.
        let thread = stack_of(&[
            "leaky::leak_on_thread::{closure#0}",
            "std::sys::backtrace::__rust_begin_short_backtrace::<_, ()>",
            "<std::sys::thread::unix::Thread>::new::thread_start",
            "start_thread",
            "clone3",
        ]);
        assert_eq!(user_frames(&thread), 0..1);
        // A system call's allocation, below the kernel's allocators.
        let kernel = stack_of(&[
            "__kmalloc_cache_noprof",
            "___kmalloc_large_node",
            "do_eventfd",
            "__x64_sys_eventfd2",
            "do_syscall_64",
            "entry_SYSCALL_64_after_hwframe",
        ]);
        assert_eq!(user_frames(&kernel), 2..4);
        // The runtime's own allocation: all of it.
        let runtime = stack_of(&[
            "alloc::alloc::alloc",
            "std::rt::init",
            "std::rt::lang_start_internal",
            "main",
        ]);
        assert_eq!(user_frames(&runtime), 0..4);
        // `_start`'s name is matched whole: a user's `_start_engine` is not the runtime.
        let named = stack_of(&["_start_engine", "main", "_start"]);
        assert_eq!(user_frames(&named), 0..2);
    }

    #[test]
    fn the_count_names_what_was_cut_below() {
        let stack = |symbols: &[&str]| Stack {
            bytes: 64,
            allocations: 1,
            category: None,
            frames: stack_of(symbols),
            allocs: None,
            holds: None,
        };
        let style = Short::default();
        let mut out = String::new();
        write_short_stack(
            &mut out,
            &stack(&[
                "do_eventfd",
                "do_syscall_64",
                "entry_SYSCALL_64_after_hwframe",
            ]),
            &style,
        );
        assert!(out.ends_with("(0 frames of the allocator above, 2 of the kernel's entry below; --full-stacks shows them)\n"), "{out}");
        let mut out = String::new();
        write_short_stack(
            &mut out,
            &stack(&["alloc::alloc::alloc", "gate::leaks", "test::run_test"]),
            &style,
        );
        assert!(out.contains("\t\tgate::leaks (src/main.rs:12)\n"), "{out}");
        assert!(out.ends_with("(1 frames of the allocator above, 1 of the standard library and the test harness below; --full-stacks shows them)\n"), "{out}");
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

    #[test]
    fn short_frames_have_short_paths_and_no_offsets_or_hashes() {
        let root = std::path::Path::new("/work/ws");
        assert_eq!(
            short_path("/work/ws/alpha/src/lib.rs", Some(root)),
            "alpha/src/lib.rs"
        );
        assert_eq!(
            short_path(
                "/rustc/58cf8f9c35b355199727627d07ae34a4e2846d67/library/core/src/ops/function.rs",
                Some(root)
            ),
            "library/core/src/ops/function.rs"
        );
        assert_eq!(
            short_path(
                "/root/.rustup/toolchains/1.99.1-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/\
                 library/alloc/src/raw_vec/mod.rs",
                None
            ),
            "library/alloc/src/raw_vec/mod.rs"
        );
        assert_eq!(
            short_path(
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/serde-1.0.219/src/de.rs",
                None
            ),
            "serde-1.0.219/src/de.rs"
        );
        assert_eq!(without_hash("gate-ada4b0710e96b47a"), "gate");
        assert_eq!(without_hash("my-tool"), "my-tool");
        let mut leak = frame(Some("alpha::leak_bytes"), false);
        leak.file = Some("/work/ws/alpha/src/lib.rs".into());
        leak.module = Some("/work/ws/target/debug/deps/gate-ada4b0710e96b47a".into());
        assert_eq!(
            render_short_frame(&leak, Some(root)),
            "alpha::leak_bytes (alpha/src/lib.rs:12)"
        );
        leak.module = Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into());
        assert_eq!(
            render_short_frame(&leak, Some(root)),
            "alpha::leak_bytes (alpha/src/lib.rs:12) [libc.so.6]"
        );
        let long = frame(Some(&"x".repeat(300)), true);
        assert!(render_short_frame(&long, None).chars().count() <= 160);
    }
}
