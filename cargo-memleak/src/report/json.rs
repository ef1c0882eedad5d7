//! Reports as JSON: the report at exit pretty-printed, a periodic report as one line (so a
//! consumer reads one object per line).
//!
//! Invariants: the field names are part of the CLI contract; serializing plain data with string
//! keys cannot fail.

use super::{Report, Snapshot};

/// The report at exit, pretty-printed, with a trailing newline.
pub fn render_exit(report: &Report) -> String {
    let mut out = serde_json::to_string_pretty(report).unwrap_or_default();
    out.push('\n');
    out
}

/// A periodic report as one line.
pub fn render_periodic(snapshot: &Snapshot) -> String {
    let mut line = serde_json::to_string(snapshot).unwrap_or_default();
    line.push('\n');
    line
}
