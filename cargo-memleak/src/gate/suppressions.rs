//! LeakSanitizer-style suppressions: `leak:PATTERN` lines, in the baseline's `suppressions` or
//! in a `--suppressions` file, plus the built-in ones LeakSanitizer always applies on Linux.
//!
//! Invariants: a pattern matches a frame's function, module or source file with
//! LeakSanitizer's template rules (`TemplateMatch`); a malformed line is an error naming its
//! line and column, never skipped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    symbolize::Frame,
};

/// Suppressions that always apply, LeakSanitizer's built-in ones for Linux: `__tls_get_addr`
/// allocates dynamic TLS blocks whose only pointer glibc keeps where no scan looks (glibc bug
/// 12650). (Its callers are in the dynamic linker, whose allocations are roots anyway.)
pub const BUILTIN_SUPPRESSIONS: &[&str] = &["*tls_get_addr*"];

/// [`BUILTIN_SUPPRESSIONS`], parsed.
pub fn builtin_suppressions() -> Vec<Suppression> {
    BUILTIN_SUPPRESSIONS
        .iter()
        .map(|pattern| Suppression {
            pattern: (*pattern).to_owned(),
        })
        .collect()
}

/// One `leak:PATTERN` line: the pattern matches a frame's function, module or source file, in
/// LeakSanitizer's template syntax (`*` any run of characters, `^` and `$` anchors, otherwise a
/// substring).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Suppression {
    pub pattern: String,
}

impl TryFrom<String> for Suppression {
    type Error = String;
    fn try_from(text: String) -> std::result::Result<Self, String> {
        Suppression::parse(&text).map_err(|(_, message)| message)
    }
}

impl From<Suppression> for String {
    fn from(suppression: Suppression) -> String {
        format!("leak:{}", suppression.pattern)
    }
}

impl Suppression {
    /// Parses `leak:PATTERN`; an error carries the (0-based) column it points at.
    pub(super) fn parse(text: &str) -> std::result::Result<Self, (usize, String)> {
        let Some((kind, pattern)) = text.split_once(':') else {
            return Err((
                0,
                format!("`{text}` is not a suppression; write `leak:PATTERN`"),
            ));
        };
        if kind != "leak" {
            return Err((
                0,
                format!(
                    "`{kind}:` suppressions are not supported (only `leak:`, as in \
                     LeakSanitizer); write `leak:PATTERN`"
                ),
            ));
        }
        if pattern.trim().is_empty() {
            return Err((kind.len() + 1, "empty pattern after `leak:`".into()));
        }
        Ok(Suppression {
            pattern: pattern.trim().to_owned(),
        })
    }

    /// Whether the pattern matches any frame's function, module or file.
    pub fn matches(&self, frames: &[Frame]) -> bool {
        frames.iter().any(|frame| {
            [
                frame.symbol.as_deref(),
                frame.module.as_deref(),
                frame.file.as_deref(),
            ]
            .into_iter()
            .flatten()
            .any(|text| template_match(&self.pattern, text))
        })
    }
}

/// LeakSanitizer's `TemplateMatch` (sanitizer_common/sanitizer_common.cpp).
fn template_match(template: &str, text: &str) -> bool {
    if text.is_empty() {
        return false;
    }
    let (mut template, mut anchored) = match template.strip_prefix('^') {
        Some(rest) => (rest, true),
        None => (template, false),
    };
    let mut text = text;
    let mut asterisk = false;
    while !template.is_empty() {
        if let Some(rest) = template.strip_prefix('*') {
            template = rest;
            anchored = false;
            asterisk = true;
            continue;
        }
        if template.starts_with('$') {
            return text.is_empty() || asterisk;
        }
        if text.is_empty() {
            return false;
        }
        let end = template.find(['*', '$']).unwrap_or(template.len());
        let literal = &template[..end];
        let Some(found) = text.find(literal) else {
            return false;
        };
        if anchored && found != 0 {
            return false;
        }
        text = &text[found + literal.len()..];
        template = &template[end..];
        anchored = false;
        asterisk = false;
    }
    true
}

/// Reads a suppressions file: one `leak:PATTERN` per line, `#` comments (whole lines, or after
/// the pattern and a space: `leak:foo  # why`) and blank lines ignored.
pub fn read_suppressions(path: &Path) -> Result<Vec<Suppression>> {
    let text = std::fs::read_to_string(path).map_err(|err| Error::GateFile {
        path: path.to_owned(),
        what: "suppressions file",
        reason: err.to_string(),
    })?;
    let mut suppressions = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = without_comment(line).trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let suppression =
            Suppression::parse(trimmed).map_err(|(column, message)| Error::Baseline {
                path: path.to_owned(),
                line: index + 1,
                column: indent + column + 1,
                message,
            })?;
        suppressions.push(suppression);
    }
    Ok(suppressions)
}

/// A line without its trailing comment: from a `#` that starts the line or follows white
/// space.
fn without_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let start = (0..bytes.len()).find(|&index| {
        bytes[index] == b'#' && (index == 0 || bytes[index - 1].is_ascii_whitespace())
    });
    start.map_or(line, |index| &line[..index])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::baseline::tests::named;

    #[test]
    fn templates_match_like_leak_sanitizer() {
        assert!(template_match("leak_vec", "leaky::leak_vec"));
        assert!(template_match("^leaky::", "leaky::leak_vec"));
        assert!(!template_match("^leak_vec", "leaky::leak_vec"));
        assert!(template_match("leak_vec$", "leaky::leak_vec"));
        assert!(!template_match("leak$", "leaky::leak_vec"));
        assert!(template_match("leaky::*::inner", "leaky::a::b::inner"));
        assert!(template_match("^leaky*vec$", "leaky::leak_vec"));
        assert!(!template_match("x", ""));
    }

    #[test]
    fn the_builtin_suppression_matches_tls_get_addr_anywhere_in_a_stack() {
        let builtin = builtin_suppressions();
        let frames: Vec<Frame> = ["malloc", "tls_get_addr_tail", "__tls_get_addr", "main"]
            .into_iter()
            .map(named)
            .collect();
        assert!(builtin.iter().any(|s| s.matches(&frames)));
        assert!(!builtin.iter().any(|s| s.matches(&frames[..1])));
        assert!(
            !builtin
                .iter()
                .any(|s| s.matches(&[named("alpha::leak_bytes")]))
        );
    }

    #[test]
    fn suppression_lines_name_their_column() {
        let dir = std::env::temp_dir().join(format!("memleak-supp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("supp.txt");
        std::fs::write(&path, "# comment\nleak:ok_one\n\n  race:foo\n").unwrap();
        let err = read_suppressions(&path).unwrap_err().to_string();
        assert!(err.contains(":4:3:"), "{err}");
        std::fs::write(&path, "leak:ok_one\nleak:  \n").unwrap();
        let err = read_suppressions(&path).unwrap_err().to_string();
        assert!(err.contains(":2:6:"), "{err}");
        std::fs::write(&path, "leak:one  # why\n  leak:^two$ \nleak:a#b\t# c\n").unwrap();
        let patterns: Vec<String> = read_suppressions(&path)
            .unwrap()
            .into_iter()
            .map(|s| s.pattern)
            .collect();
        assert_eq!(patterns, ["one", "^two$", "a#b"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
