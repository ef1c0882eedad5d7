//! Leak budgets and suppressions, and the verdict they give a traced run.
//!
//! The baseline file (`memleak-baseline.json` at the workspace root by default) holds, per test
//! binary and test (and per `cargo memleak run` binary), the lost bytes and blocks allowed, and
//! optionally per stack, keyed by symbol names — never addresses. A test absent from it may lose
//! nothing. User suppressions use LeakSanitizer's `leak:PATTERN` form and live in the baseline
//! or in a `--suppressions` file.
//!
//! Invariants: a malformed file is an error naming its line and column, never a default; a
//! written baseline has sorted keys and a stable layout (diffs show only what changed); it is
//! written atomically, and only by a run that could measure every test it blesses.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    classify::Category,
    error::{Error, Result},
    report::{Amount, Report, StackReport},
    symbolize::Frame,
};

/// The default baseline file name, at the workspace root.
pub const FILE_NAME: &str = "memleak-baseline.json";

/// The baseline schema this version reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// How many symbol names key a stack (from the first frame outside the allocator and the
/// standard library's allocation plumbing).
const STACK_KEY_FRAMES: usize = 5;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Always [`SCHEMA_VERSION`]; anything else is refused where it is read.
    pub version: Version,
    /// LeakSanitizer-style `leak:PATTERN` suppressions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressions: Vec<Suppression>,
    /// Binary id → test name → budget.
    #[serde(default)]
    pub tests: BTreeMap<String, BTreeMap<String, Budget>>,
    /// `cargo memleak run`: binary id → budget.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, Budget>,
}

/// The schema version, checked while parsing so an error names its line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Version;

impl Default for Version {
    fn default() -> Self {
        Version
    }
}

impl TryFrom<u32> for Version {
    type Error = String;
    fn try_from(version: u32) -> std::result::Result<Self, String> {
        if version == SCHEMA_VERSION {
            Ok(Version)
        } else {
            Err(format!(
                "baseline schema version {version} is not supported (this cargo-memleak reads \
                 version {SCHEMA_VERSION}); upgrade cargo-memleak or rewrite it with --bless"
            ))
        }
    }
}

impl From<Version> for u32 {
    fn from(_: Version) -> u32 {
        SCHEMA_VERSION
    }
}

/// What one test (or run) may leave lost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Definitely plus indirectly lost, after suppressions.
    pub lost: Amount,
    /// Still reachable; checked only with `--fail-on reachable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<Amount>,
    /// When present, every lost stack must be listed here, within its own budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<StackBudget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackBudget {
    /// The stack's key: see [`stack_key`].
    pub frames: Vec<String>,
    pub bytes: u64,
    pub blocks: u64,
}

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
    fn parse(text: &str) -> std::result::Result<Self, (usize, String)> {
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

/// Reads a suppressions file: one `leak:PATTERN` per line, `#` comments and blank lines
/// ignored.
pub fn read_suppressions(path: &Path) -> Result<Vec<Suppression>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading suppressions {}", path.display()),
        source,
    })?;
    let mut suppressions = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
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

impl Baseline {
    /// Reads the baseline at `path`; a missing file is an empty baseline.
    pub fn read(path: &Path) -> Result<Baseline> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Baseline::default());
            }
            Err(source) => {
                return Err(Error::Io {
                    context: format!("reading baseline {}", path.display()),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|err| Error::Baseline {
            path: path.to_owned(),
            line: err.line(),
            column: err.column(),
            message: strip_position(&err.to_string()),
        })
    }

    /// Writes the baseline atomically: sorted keys, two-space indent, trailing newline.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        crate::fsutil::write_atomically(path, text.as_bytes())
    }
}

/// serde_json appends " at line L column C"; the error names them already.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// Where the baseline is: `--baseline PATH`, or the default name at the workspace root.
pub fn path(given: Option<&Path>, workspace_root: &Path) -> PathBuf {
    given
        .map(Path::to_owned)
        .unwrap_or_else(|| workspace_root.join(FILE_NAME))
}

/// A stack's key in the baseline: the first [`STACK_KEY_FRAMES`] symbol names above libtest's
/// harness that are not the standard library's (`alloc::`, `core::`, `std::`, their trait
/// impls, `__rust_alloc`, ...), so it names the code that allocated and survives toolchain
/// changes. A stack of standard-library frames only is keyed by those. Unknown frames are `??`.
pub fn stack_key(frames: &[Frame]) -> Vec<String> {
    let names: Vec<String> = frames
        .iter()
        .map(|frame| frame.symbol.clone().unwrap_or_else(|| "??".into()))
        .collect();
    const CRATES: [&str; 3] = ["alloc::", "core::", "std::"];
    // `alloc::vec::from_elem`, and `<u8 as alloc::vec::SpecFromElem>::from_elem` too.
    let plumbing = |name: &str| {
        let name = name.trim_start_matches('<');
        CRATES
            .iter()
            .any(|krate| name.starts_with(krate) || name.contains(&format!(" as {krate}")))
            || ["__rust", "__rdl", "__rg_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
    };
    // libtest's harness is below the test: not part of what leaked.
    let before_harness = || names.iter().take_while(|name| !name.starts_with("test::"));
    let key: Vec<String> = before_harness()
        .filter(|name| !plumbing(name))
        .take(STACK_KEY_FRAMES)
        .cloned()
        .collect();
    if key.is_empty() {
        // Only the standard library's own frames (its runtime allocating): key by those.
        return before_harness().take(STACK_KEY_FRAMES).cloned().collect();
    }
    key
}

/// What counts toward the gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Lost memory (definitely and indirectly lost).
    #[default]
    Lost,
    /// Lost memory, and still-reachable memory over its budget too.
    Reachable,
}

/// A run's leak figures after suppressions, and how they compare with the budget.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Judgement {
    /// Definitely plus indirectly lost, suppressions applied.
    pub lost: Amount,
    pub reachable: Amount,
    /// Lost memory that matched a suppression.
    pub suppressed: Amount,
    /// Lost stacks by key, suppressions applied, largest first.
    pub stacks: Vec<KeyedStack>,
    /// Why the run is over budget, one line each; empty when within.
    pub over_budget: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyedStack {
    pub frames: Vec<String>,
    pub bytes: u64,
    pub blocks: u64,
}

/// Compares `report` (built with every stack, reachable ones included) with `budget`.
pub fn judge(
    report: &Report,
    budget: Option<&Budget>,
    suppressions: &[Suppression],
    fail_on: FailOn,
) -> Judgement {
    let mut judgement = Judgement::default();
    let mut by_key: BTreeMap<Vec<String>, Amount> = BTreeMap::new();
    for stack in &report.stacks {
        let amount = Amount {
            bytes: stack.bytes,
            blocks: stack.allocations,
        };
        match stack.category {
            Category::StillReachable => add(&mut judgement.reachable, amount),
            Category::DefinitelyLost | Category::IndirectlyLost => {
                if suppressions.iter().any(|s| s.matches(&stack.frames)) {
                    add(&mut judgement.suppressed, amount);
                } else {
                    add(&mut judgement.lost, amount);
                    add(by_key.entry(stack_key(&stack.frames)).or_default(), amount);
                }
            }
        }
    }
    judgement.stacks = by_key
        .into_iter()
        .map(|(frames, amount)| KeyedStack {
            frames,
            bytes: amount.bytes,
            blocks: amount.blocks,
        })
        .collect();
    judgement
        .stacks
        .sort_by_key(|stack| std::cmp::Reverse((stack.bytes, stack.blocks)));

    let zero = Budget::default();
    let budget = budget.unwrap_or(&zero);
    let over = |what: &str, have: Amount, allowed: Amount| {
        (have.bytes > allowed.bytes || have.blocks > allowed.blocks).then(|| {
            format!(
                "{what} {} bytes in {} blocks, over its budget of {} bytes in {} blocks",
                have.bytes, have.blocks, allowed.bytes, allowed.blocks
            )
        })
    };
    judgement
        .over_budget
        .extend(over("lost", judgement.lost, budget.lost));
    if fail_on == FailOn::Reachable {
        judgement.over_budget.extend(over(
            "still reachable",
            judgement.reachable,
            budget.reachable.unwrap_or_default(),
        ));
    }
    if !budget.stacks.is_empty() {
        for stack in &judgement.stacks {
            let allowed = budget
                .stacks
                .iter()
                .find(|allowed| allowed.frames == stack.frames);
            let have = Amount {
                bytes: stack.bytes,
                blocks: stack.blocks,
            };
            match allowed {
                None => judgement.over_budget.push(format!(
                    "lost {} bytes in {} blocks from a stack the baseline does not list: {}",
                    stack.bytes,
                    stack.blocks,
                    stack.frames.join(" <- ")
                )),
                Some(allowed) => judgement.over_budget.extend(over(
                    &format!("stack {}: lost", stack.frames.join(" <- ")),
                    have,
                    Amount {
                        bytes: allowed.bytes,
                        blocks: allowed.blocks,
                    },
                )),
            }
        }
    }
    judgement
}

fn add(total: &mut Amount, amount: Amount) {
    total.bytes += amount.bytes;
    total.blocks += amount.blocks;
}

impl Judgement {
    /// The budget that makes this run pass exactly.
    pub fn as_budget(&self, fail_on: FailOn) -> Budget {
        Budget {
            lost: self.lost,
            reachable: (fail_on == FailOn::Reachable).then_some(self.reachable),
            stacks: self
                .stacks
                .iter()
                .map(|stack| StackBudget {
                    frames: stack.frames.clone(),
                    bytes: stack.bytes,
                    blocks: stack.blocks,
                })
                .collect(),
        }
    }

    /// Whether blessing should record a budget at all (absent means zero).
    pub fn needs_budget(&self, fail_on: FailOn) -> bool {
        self.lost.blocks > 0 || (fail_on == FailOn::Reachable && self.reachable.blocks > 0)
    }
}

/// The lost, unsuppressed stacks of a report, for showing under a failed test.
pub fn lost_stacks<'a>(
    report: &'a Report,
    suppressions: &'a [Suppression],
) -> impl Iterator<Item = &'a StackReport> {
    report.stacks.iter().filter(|stack| {
        stack.category != Category::StillReachable
            && !suppressions.iter().any(|s| s.matches(&stack.frames))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn named(symbol: &str) -> Frame {
        Frame {
            addr: 0,
            symbol: Some(symbol.into()),
            offset: 0,
            file: Some("/src/alpha/src/lib.rs".into()),
            line: Some(1),
            module: Some("/target/debug/deps/gate-1234".into()),
            inlined: false,
            unknown_reason: None,
        }
    }

    #[test]
    fn stack_keys_start_at_the_code_that_allocated() {
        let frames: Vec<Frame> = [
            "<std::alloc::System as core::alloc::global::GlobalAlloc>::alloc",
            "__rust_alloc",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "alloc::vec::from_elem",
            "alpha::leak_bytes",
            "gate::leaks_a_vec",
            "core::ops::function::FnOnce::call_once",
            "gate::leaks_a_vec::{{closure}}",
            "test::run_test",
            "main",
            "std::rt::lang_start",
        ]
        .into_iter()
        .map(named)
        .collect();
        assert_eq!(
            stack_key(&frames),
            [
                "alpha::leak_bytes",
                "gate::leaks_a_vec",
                "gate::leaks_a_vec::{{closure}}"
            ]
        );
        assert_eq!(
            stack_key(&frames[..2]),
            [
                "<std::alloc::System as core::alloc::global::GlobalAlloc>::alloc",
                "__rust_alloc"
            ]
        );
        let suppression = Suppression::parse("leak:gate-*").unwrap();
        assert!(suppression.matches(&frames), "module names match");
        let suppression = Suppression::parse("leak:alpha/src/lib.rs$").unwrap();
        assert!(suppression.matches(&frames), "file names match");
        assert!(
            !Suppression::parse("leak:^leaks_a_vec")
                .unwrap()
                .matches(&frames)
        );
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
        std::fs::write(&path, "leak:one\n  leak:^two$ \n").unwrap();
        let patterns: Vec<String> = read_suppressions(&path)
            .unwrap()
            .into_iter()
            .map(|s| s.pattern)
            .collect();
        assert_eq!(patterns, ["one", "^two$"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_baseline_round_trips_and_errors_carry_positions() {
        let dir = std::env::temp_dir().join(format!("memleak-base-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        let mut baseline = Baseline::default();
        baseline.suppressions.push(Suppression {
            pattern: "^lazy_init".into(),
        });
        baseline.tests.entry("pkg::it".into()).or_default().insert(
            "leaks".into(),
            Budget {
                lost: Amount {
                    bytes: 32,
                    blocks: 1,
                },
                ..Budget::default()
            },
        );
        baseline.write(&path).unwrap();
        assert_eq!(Baseline::read(&path).unwrap(), baseline);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\n  \"version\": 1,\n"), "{text}");

        std::fs::write(&path, "{\n  \"version\": 1,\n  \"tests\": [}\n").unwrap();
        let err = Baseline::read(&path).unwrap_err().to_string();
        assert!(err.contains(":3:"), "{err}");
        std::fs::write(&path, "{\n  \"version\": 7, \"tests\": {}\n}\n").unwrap();
        let err = Baseline::read(&path).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("version 7"), "{err}");
        std::fs::write(&path, "{\"version\": 1, \"suppressions\": [\"race:x\"]}").unwrap();
        let err = Baseline::read(&path).unwrap_err().to_string();
        assert!(err.contains("race:"), "{err}");
        assert!(Baseline::read(&dir.join("absent.json")).unwrap() == Baseline::default());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
