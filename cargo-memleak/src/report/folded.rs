//! Stacks as pictures: Brendan Gregg's folded format (`root;caller;allocator BYTES`, one line
//! per stack, `--format folded`) and the SVG flame graph inferno draws from it
//! (`--flamegraph PATH`), of what a report's stacks hold: lost bytes, or outstanding ones when
//! still-reachable stacks are shown too (and in periodic reports).
//!
//! Invariants: lines are sorted and identical stacks merged, so the output is deterministic;
//! frames run root first (the folded format's order), a test's stacks under a root frame
//! naming the test; a frame name never contains `;` (it would split the frame) nor a newline.

use std::{collections::BTreeMap, path::Path};

use super::{Report, Snapshot, Stack, above_harness};
use crate::{
    error::{Error, Result},
    fsutil,
    symbolize::Frame,
};

/// A frame's name in a folded line: its function (`;` written `,`), or its address.
fn frame_name(frame: &Frame) -> String {
    match &frame.symbol {
        Some(symbol) => symbol.replace(';', ",").replace(['\n', '\r'], " "),
        None => format!("{:#x}", frame.addr),
    }
}

/// Folded lines of `stacks`, each under its `root` frames: root first, the bytes last;
/// identical stacks merged, sorted.
pub fn fold<'a>(stacks: impl IntoIterator<Item = (&'a [String], &'a [Frame], u64)>) -> Vec<String> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for (root, frames, bytes) in stacks {
        let names: Vec<String> = root
            .iter()
            .map(|name| name.replace(';', ","))
            .chain(frames.iter().rev().map(frame_name))
            .collect();
        if names.is_empty() || bytes == 0 {
            continue;
        }
        *merged.entry(names.join(";")).or_default() += bytes;
    }
    merged
        .into_iter()
        .map(|(stack, bytes)| format!("{stack} {bytes}"))
        .collect()
}

fn joined(lines: &[String]) -> String {
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Folded lines of a report's stacks, every frame of each.
pub fn fold_stacks(stacks: &[Stack]) -> Vec<String> {
    fold(
        stacks
            .iter()
            .map(|stack| (&[][..], &stack.frames[..], stack.bytes)),
    )
}

/// The report at exit, folded: its stacks (lost ones; outstanding ones too with
/// `--show-reachable`).
pub fn render_exit(report: &Report) -> String {
    joined(&fold_stacks(&report.stacks))
}

/// A periodic report, folded: its outstanding stacks.
pub fn render_periodic(snapshot: &Snapshot) -> String {
    joined(&fold_stacks(&snapshot.stacks))
}

/// A test's lost stacks, under a root frame `[binary id] test`, without libtest's harness.
pub fn test_stacks<'a>(
    root: &'a [String],
    stacks: &'a [Stack],
) -> impl Iterator<Item = (&'a [String], &'a [Frame], u64)> {
    stacks
        .iter()
        .map(move |stack| (root, above_harness(&stack.frames), stack.bytes))
}

/// The exit report's stacks as `--flamegraph` wants them: every stack, not only the top N.
pub fn all_stacks(options: &super::Options) -> super::Options {
    super::Options {
        stacks: super::StackOptions {
            top: usize::MAX,
            ..options.stacks
        },
        show_reachable: options.show_reachable,
    }
}

/// Draws `lines` (folded) as an SVG flame graph of bytes with inferno and writes it to `path`
/// atomically (a new file is `owner`'s). With no stack at all, the picture says so.
pub fn write_flamegraph(
    path: &Path,
    lines: &[String],
    title: &str,
    owner: Option<&crate::user::RunAs>,
) -> Result<()> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = "bytes".to_owned();
    let mut svg = Vec::new();
    let drawn =
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg);
    match drawn {
        Ok(()) => {}
        // inferno has drawn its "no input" picture: nothing was lost.
        Err(_) if lines.is_empty() => {}
        Err(err) => {
            return Err(Error::Write {
                path: path.to_owned(),
                source: err,
            });
        }
    }
    fsutil::write_atomically(path, &svg, owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(symbol: &str) -> Frame {
        Frame {
            addr: 0x1234,
            symbol: Some(symbol.into()),
            offset: 0,
            file: None,
            line: None,
            module: None,
            inlined: false,
            unknown_reason: None,
        }
    }

    #[test]
    fn stacks_fold_root_first_and_merge() {
        let leak = [
            frame("alpha::leak_bytes"),
            frame("gate::leaks_a_vec"),
            frame("main"),
        ];
        let odd = [frame("<[u8; 4] as x::Y>::f")];
        let root = ["[alpha::gate] leaks_a_vec".to_owned()];
        let lines = fold([
            (&root[..], &leak[..], 4000),
            (&root[..], &leak[..], 96),
            (&[][..], &odd[..], 8),
        ]);
        assert_eq!(
            lines,
            [
                "<[u8, 4] as x::Y>::f 8",
                "[alpha::gate] leaks_a_vec;main;gate::leaks_a_vec;alpha::leak_bytes 4096"
            ]
        );
    }
}
