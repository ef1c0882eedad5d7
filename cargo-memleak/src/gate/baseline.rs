//! The baseline file: leak budgets, its schema, and how a stack is keyed in it.
//!
//! The baseline file (`memleak-baseline.json` at the workspace root by default) holds, per test
//! binary and test (and per `cargo memleak run` binary), the lost bytes and blocks allowed, and
//! optionally per stack, keyed by symbol names — never addresses. A test absent from it may lose
//! nothing. It may also hold suppressions ([`super::suppressions`]).
//!
//! Invariants: a malformed file is an error naming its line and column, never a default; a
//! written baseline has sorted keys and a stable layout (diffs show only what changed); it is
//! written atomically.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::Suppression;
use crate::{
    error::{Error, Result},
    report::{Amount, above_harness, is_allocation_plumbing},
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
    /// The most bytes it may have outstanding at once; checked only with `--fail-on peak`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<u64>,
    /// How many allocations it may make; checked only with `--fail-on allocations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u64>,
    /// When present, every lost stack must be listed here, within its own budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<StackBudget>,
    /// The processes it started that were followed, by executable name: what all of them
    /// that ran that executable may lose together (absent means nothing).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub children: BTreeMap<String, Budget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackBudget {
    /// The stack's key: see [`stack_key`].
    pub frames: Vec<String>,
    pub bytes: u64,
    pub blocks: u64,
}

impl Baseline {
    /// Reads the baseline at `path`; a missing file is an empty baseline (whether that is
    /// allowed is the caller's call: see [`super::Gate::load`]).
    pub fn read(path: &Path) -> Result<Baseline> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Baseline::default());
            }
            Err(err) => {
                return Err(Error::GateFile {
                    path: path.to_owned(),
                    what: "baseline",
                    reason: err.to_string(),
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

    /// Writes the baseline atomically: sorted keys, two-space indent, trailing newline; a new
    /// file is `owner`'s.
    pub fn write(&self, path: &Path, owner: Option<&crate::user::RunAs>) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        crate::fsutil::write_atomically(path, text.as_bytes(), owner)
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

/// A stack's key in the baseline: the first `STACK_KEY_FRAMES` symbol names above libtest's
/// harness that are not the standard library's (`alloc::`, `core::`, `std::`, their trait
/// impls, `__rust_alloc`, ...), so it names the code that allocated and survives toolchain
/// changes. A stack of standard-library frames only is keyed by those. Unknown frames are `??`.
pub fn stack_key(frames: &[Frame]) -> Vec<String> {
    // libtest's harness is below the test: not part of what leaked.
    let names: Vec<String> = above_harness(frames)
        .iter()
        .map(|frame| frame.symbol.clone().unwrap_or_else(|| "??".into()))
        .collect();
    let key: Vec<String> = names
        .iter()
        .filter(|name| !is_allocation_plumbing(name))
        .take(STACK_KEY_FRAMES)
        .cloned()
        .collect();
    if key.is_empty() {
        // Only the standard library's own frames (its runtime allocating): key by those.
        return names.into_iter().take(STACK_KEY_FRAMES).collect();
    }
    key
}

/// A baseline entry for a test or test binary that no longer exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleEntry {
    pub binary_id: String,
    /// `None`: the whole binary's entry is stale.
    pub test: Option<String>,
}

impl Baseline {
    /// Entries for tests (in binaries that were listed) and binaries (of packages that are not
    /// in the workspace any more) that no longer exist.
    pub fn stale_entries(
        &self,
        listed: &BTreeMap<String, BTreeSet<String>>,
        workspace_members: &BTreeSet<String>,
    ) -> Vec<StaleEntry> {
        let mut stale = Vec::new();
        for (binary_id, tests) in &self.tests {
            match listed.get(binary_id) {
                Some(names) => {
                    for test in tests.keys().filter(|test| !names.contains(*test)) {
                        stale.push(StaleEntry {
                            binary_id: binary_id.clone(),
                            test: Some(test.clone()),
                        });
                    }
                }
                None => {
                    let package = binary_id.split("::").next().unwrap_or_default();
                    if !workspace_members.contains(package) {
                        stale.push(StaleEntry {
                            binary_id: binary_id.clone(),
                            test: None,
                        });
                    }
                }
            }
        }
        stale
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::gate) fn named(symbol: &str) -> Frame {
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
        baseline.write(&path, None).unwrap();
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
