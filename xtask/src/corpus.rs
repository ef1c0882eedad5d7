//! `cargo xtask corpus`: `cargo memleak test` on published crates' own test suites, compared
//! test by test with a plain `cargo test` of the same build.
//!
//! The crates are chosen for what breaks leak checkers: thread pools whose workers outlive the
//! test, async runtimes with reactor and blocking threads, thread-locals and their destructors,
//! lazy statics, channels and their stress tests, crates that spawn processes. Each is fetched
//! through cargo from the registry at a pinned version, with the `Cargo.lock` it ships (or, for
//! the few that ship none, one committed under `xtask/corpus/`), and built once into
//! `target/corpus/build/<crate>`, where later runs find it.
//!
//! A run fails on any test that passes plainly but fails under cargo memleak (a false
//! failure). One that fails in the full run and passes when run again alone is flaky: a leak
//! or incomplete verdict that does not come back is a *flaky verdict*, printed as such and
//! counted as a false failure (a user's CI runs nothing again alone); a test that failed by
//! itself (its exit status or timeout) is printed as a FLAKY TEST and does not fail the run.
//! A run also fails on a test that really leaks (written down in [`CORPUS`] with memcheck's figures)
//! that cargo memleak does not fail with exactly those figures, and on a crate whose number of
//! tests is not the one recorded (a listing that silently lost tests would check nothing).
//!
//! `--stress [ROUNDS]` runs no plain suite: each crate's traced suite runs ROUNDS times (3) on
//! an oversubscribed machine, and any verdict that changes between rounds is reported
//! ([`crate::stress`]).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

/// A crate of the corpus.
pub struct Crate {
    pub name: &'static str,
    pub version: &'static str,
    /// What in it breaks leak checkers.
    pub why: &'static str,
    /// `cargo test` arguments (features, targets) for both runs.
    pub args: &'static [&'static str],
    /// Tests that run (listed and not ignored) with those arguments.
    pub tests: usize,
    /// Tests that really leak.
    pub leaks: &'static [Leak],
}

/// A test that leaks on purpose (or by a bug of its crate), with memcheck's figures for it
/// run alone (`BIN --exact TEST`): cargo memleak must report the same and fail it.
pub struct Leak {
    pub binary: &'static str,
    pub test: &'static str,
    /// (bytes, blocks), memcheck's "definitely lost".
    pub definitely: (u64, u64),
    /// (bytes, blocks), memcheck's "indirectly lost".
    pub indirectly: (u64, u64),
    pub why: &'static str,
}

pub const CORPUS: &[Crate] = &[
    Crate {
        name: "crossbeam-channel",
        version: "0.5.17",
        why: "channels: select, zero-capacity rendezvous, stress tests of many short threads",
        args: &[],
        tests: 391,
        leaks: &[],
    },
    Crate {
        name: "flume",
        version: "0.12.0",
        why: "channels, sync and async, with threads still sending when a test ends",
        args: &[],
        tests: 236,
        leaks: &[],
    },
    Crate {
        name: "crossbeam-epoch",
        version: "0.9.21",
        why: "a lazy global garbage collector and thread-local handles, deferred frees",
        args: &[],
        tests: 40,
        leaks: &[],
    },
    Crate {
        name: "crossbeam-utils",
        version: "0.8.23",
        why: "scoped threads, parkers, per-thread caches",
        args: &[],
        tests: 62,
        leaks: &[],
    },
    Crate {
        name: "rayon-core",
        version: "1.13.0",
        why: "thread pools: a global pool whose workers outlive every test, spawn handlers",
        args: &[],
        tests: 110,
        leaks: &[Leak {
            binary: "rayon-core::use_current_thread",
            test: "use_current_thread_basic",
            definitely: (384, 1),
            indirectly: (9856, 18),
            why: "the test thread joins a pool with use_current_thread(); when it exits, the \
                  pool's registry it still holds a reference to is never freed",
        }],
    },
    Crate {
        name: "rayon",
        version: "1.12.0",
        why: "parallel iterators on the global pool; one test holds 1.1 million blocks",
        args: &[],
        tests: 332,
        leaks: &[],
    },
    Crate {
        name: "threadpool",
        version: "1.8.1",
        why: "a pool whose workers are only told to stop when it is dropped; 4.2 million \
              queued tasks in one test",
        args: &[],
        tests: 21,
        leaks: &[],
    },
    Crate {
        name: "async-std",
        version: "1.13.2",
        why: "an async runtime: a global executor and blocking pool, threads alive at exit",
        args: &[],
        tests: 62,
        leaks: &[],
    },
    Crate {
        name: "async-io",
        version: "2.6.0",
        why: "a reactor thread started on first use and never stopped",
        args: &[],
        tests: 25,
        leaks: &[],
    },
    Crate {
        name: "blocking",
        version: "1.7.0",
        why: "a thread pool for blocking work whose idle threads linger",
        args: &[],
        tests: 8,
        leaks: &[],
    },
    Crate {
        name: "async-process",
        version: "2.5.0",
        why: "spawns processes, with a reaper thread and a SIGCHLD handler",
        args: &[],
        tests: 23,
        leaks: &[],
    },
    Crate {
        name: "duct",
        version: "1.1.2",
        why: "spawns process pipelines, with threads that feed and drain them",
        args: &[],
        tests: 42,
        leaks: &[],
    },
    Crate {
        name: "thread_local",
        version: "1.1.10",
        why: "per-object thread-locals and their destructors",
        args: &[],
        tests: 9,
        leaks: &[],
    },
    Crate {
        name: "once_cell",
        version: "1.21.4",
        why: "lazy statics; a stress test of 1000 threads that end with the process",
        args: &[],
        tests: 75,
        leaks: &[],
    },
    Crate {
        name: "parking_lot",
        version: "0.13.0",
        why: "a global hash table of parked threads, grown and never freed",
        args: &[],
        tests: 100,
        leaks: &[],
    },
    Crate {
        name: "dashmap",
        version: "6.2.1",
        why: "a sharded concurrent map; ships a rust-toolchain file of its own",
        args: &[],
        tests: 20,
        leaks: &[],
    },
    Crate {
        name: "indexmap",
        version: "2.14.2",
        why: "a map whose tiny unit tests end just as libtest's test thread exits",
        args: &[],
        tests: 183,
        leaks: &[],
    },
    Crate {
        name: "hashbrown",
        version: "0.17.2",
        why: "the standard library's map, with rayon and allocator-API tests",
        args: &[],
        tests: 115,
        leaks: &[],
    },
    Crate {
        name: "bytes",
        version: "1.12.2",
        why: "doc tests (edition 2021: each its own binary), compared with cargo test --doc",
        args: &["--doc"],
        tests: 248,
        leaks: &[],
    },
];

impl Crate {
    /// Whether this entry runs the crate's doc tests (`--doc`) rather than its test targets.
    fn doc(&self) -> bool {
        self.args.contains(&"--doc")
    }
}

/// Options of one corpus run.
pub struct Options {
    /// Only these crates (all when empty).
    pub crates: Vec<String>,
    /// Tests at once.
    pub jobs: usize,
    /// `--stress`: this many traced rounds of each crate under load, compared
    /// ([`crate::stress`]), instead of the comparison with plain runs.
    pub stress: Option<usize>,
}

/// How one test went in the plain run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plain {
    Passed,
    Failed,
    Ignored,
}

/// What one crate's run found.
#[derive(Default)]
struct Outcome {
    tests: usize,
    passed: usize,
    caught: usize,
    /// Failed under cargo memleak and plainly too.
    fail_plainly: Vec<String>,
    false_failures: Vec<String>,
    /// Tests that failed by themselves (exit status, timeout) and passed when run again alone:
    /// reported, not failed.
    flaky_tests: Vec<String>,
    /// Leak or incomplete verdicts that did not come back when the test ran again alone:
    /// false failures all the same (a user's CI gets no second run), printed as such.
    flaky_verdicts: Vec<String>,
    problems: Vec<String>,
    build: Duration,
    plain: Duration,
    traced: Duration,
}

pub fn run(root: &Path, memleak: &Path, options: &Options) -> Result<()> {
    let selected: Vec<&Crate> = CORPUS
        .iter()
        .filter(|krate| options.crates.is_empty() || options.crates.iter().any(|c| c == krate.name))
        .collect();
    ensure!(
        !selected.is_empty(),
        "no corpus crate is named {:?}; the corpus has {}",
        options.crates,
        CORPUS.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
    );
    let corpus_dir = root.join("target/corpus");
    // The workspace's toolchain, named, so that a crate's own `rust-toolchain` file does not
    // send rustup off to install another.
    let toolchain = crate::toolchain::WORKSPACE_CHANNEL.to_owned();
    if let Some(rounds) = options.stress {
        return stress(
            root,
            &corpus_dir,
            memleak,
            &toolchain,
            &selected,
            options,
            rounds,
        );
    }
    let mut outcomes = Vec::new();
    for krate in &selected {
        eprintln!(
            "xtask corpus: {} {} ({})",
            krate.name, krate.version, krate.why
        );
        let outcome = run_crate(root, &corpus_dir, memleak, &toolchain, krate, options)
            .with_context(|| format!("corpus crate {} {}", krate.name, krate.version))?;
        outcomes.push((krate, outcome));
    }

    println!(
        "{:<22} {:>6} {:>6} {:>6} {:>6} {:>7} {:>9} {:>11} {:>11} {:>6}",
        "crate",
        "tests",
        "passed",
        "leaks",
        "false",
        "plainly",
        "build",
        "cargo test",
        "memleak",
        "ratio"
    );
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let mut totals = Outcome::default();
    for (krate, outcome) in &outcomes {
        println!(
            "{:<22} {:>6} {:>6} {:>6} {:>6} {:>7} {:>9} {:>11} {:>11} {:>5.1}x",
            format!("{} {}", krate.name, krate.version),
            outcome.tests,
            outcome.passed,
            outcome.caught,
            outcome.false_failures.len() + outcome.flaky_verdicts.len(),
            outcome.fail_plainly.len(),
            secs(outcome.build),
            secs(outcome.plain),
            secs(outcome.traced),
            outcome.traced.as_secs_f64() / outcome.plain.as_secs_f64().max(1e-3)
        );
        totals.tests += outcome.tests;
        totals.passed += outcome.passed;
        totals.caught += outcome.caught;
        totals
            .fail_plainly
            .extend(outcome.fail_plainly.iter().cloned());
        totals.build += outcome.build;
        totals.plain += outcome.plain;
        totals.traced += outcome.traced;
    }
    let false_failures: Vec<&String> = outcomes
        .iter()
        .flat_map(|(_, outcome)| outcome.false_failures.iter().chain(&outcome.flaky_verdicts))
        .collect();
    let problems: Vec<&String> = outcomes
        .iter()
        .flat_map(|(_, outcome)| &outcome.problems)
        .collect();
    println!(
        "{:<22} {:>6} {:>6} {:>6} {:>6} {:>7} {:>9} {:>11} {:>11} {:>5.1}x",
        "total",
        totals.tests,
        totals.passed,
        totals.caught,
        false_failures.len(),
        totals.fail_plainly.len(),
        secs(totals.build),
        secs(totals.plain),
        secs(totals.traced),
        totals.traced.as_secs_f64() / totals.plain.as_secs_f64().max(1e-3)
    );
    for failure in &totals.fail_plainly {
        println!("fails plainly too (not counted): {failure}");
    }
    for (_, outcome) in &outcomes {
        for flake in &outcome.flaky_tests {
            println!("FLAKY TEST (failed by itself once, passed alone when run again) {flake}");
        }
        for flake in &outcome.flaky_verdicts {
            println!("FLAKY VERDICT (a false failure: did not come back when run alone) {flake}");
        }
    }
    for failure in &false_failures {
        println!("FALSE FAILURE {failure}");
    }
    for problem in &problems {
        println!("PROBLEM {problem}");
    }
    ensure!(
        false_failures.is_empty() && problems.is_empty(),
        "xtask corpus: {} false failures, {} other problems",
        false_failures.len(),
        problems.len()
    );
    println!(
        "xtask corpus: {} tests in {} crates, no false failure ({} flaky tests: failed by \
         themselves once, passed alone when run again), {} real leaks caught",
        totals.tests,
        outcomes.len(),
        outcomes
            .iter()
            .map(|(_, outcome)| outcome.flaky_tests.len())
            .sum::<usize>(),
        totals.caught
    );
    Ok(())
}

/// `--stress`: each crate built once, then its traced suite `rounds` times on an
/// oversubscribed machine; every verdict that changes between rounds is reported.
fn stress(
    root: &Path,
    corpus_dir: &Path,
    memleak: &Path,
    toolchain: &str,
    selected: &[&Crate],
    options: &Options,
    rounds: usize,
) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let jobs = options.jobs;
    let mut found = Vec::new();
    for krate in selected {
        eprintln!(
            "xtask corpus --stress: {} {}, {rounds} rounds",
            krate.name, krate.version
        );
        let source = fetch(root, corpus_dir, toolchain, krate)?;
        let target_dir = build_dir(corpus_dir, krate);
        build(&source, &target_dir, toolchain, krate)?;
        let rounds = crate::stress::rounds(rounds, cores, || {
            traced_run(&source, &target_dir, toolchain, memleak, krate, jobs, &[])
        })
        .with_context(|| format!("corpus crate {} {}", krate.name, krate.version))?;
        found.push((format!("{} {}", krate.name, krate.version), rounds));
    }
    crate::stress::report(&found, cores, jobs)
}

/// Where a crate is built, once, for every run that follows.
fn build_dir(corpus_dir: &Path, krate: &Crate) -> PathBuf {
    corpus_dir
        .join("build")
        .join(format!("{}-{}", krate.name, krate.version))
}

fn run_crate(
    root: &Path,
    corpus_dir: &Path,
    memleak: &Path,
    toolchain: &str,
    krate: &Crate,
    options: &Options,
) -> Result<Outcome> {
    let source = fetch(root, corpus_dir, toolchain, krate)?;
    let target_dir = build_dir(corpus_dir, krate);
    let mut outcome = Outcome::default();

    // Build once, with the flags cargo memleak builds with: both runs below reuse it.
    let start = Instant::now();
    let binaries = build(&source, &target_dir, toolchain, krate)?;
    outcome.build = start.elapsed();

    let start = Instant::now();
    let plain = plain_run(
        &source,
        &target_dir,
        toolchain,
        krate,
        &binaries,
        options.jobs,
    )?;
    outcome.plain = start.elapsed();

    let start = Instant::now();
    let traced = traced_run(
        &source,
        &target_dir,
        toolchain,
        memleak,
        krate,
        options.jobs,
        &[],
    )?;
    outcome.traced = start.elapsed();

    for result in &traced {
        let binary = result["binary_id"].as_str().unwrap_or_default();
        let test = result["test"].as_str().unwrap_or_default();
        let id = format!("[{binary}] {test}");
        outcome.tests += 1;
        let passed = result["result"] == "ok";
        let leak = krate
            .leaks
            .iter()
            .find(|leak| leak.binary == binary && leak.test == test);
        match (passed, leak) {
            (true, None) => outcome.passed += 1,
            (true, Some(leak)) => outcome.problems.push(format!(
                "{} {id}: leaks (memcheck: {:?} definitely, {:?} indirectly lost; {}) but \
                 passed under cargo memleak",
                krate.name, leak.definitely, leak.indirectly, leak.why
            )),
            (false, Some(leak)) => {
                let amount = |category: &str| {
                    let amount = &result["leak_summary"][category];
                    (
                        amount["bytes"].as_u64().unwrap_or(0),
                        amount["blocks"].as_u64().unwrap_or(0),
                    )
                };
                let ours = (amount("definitely_lost"), amount("indirectly_lost"));
                if ours == (leak.definitely, leak.indirectly) {
                    outcome.caught += 1;
                } else {
                    outcome.problems.push(format!(
                        "{} {id}: cargo memleak lost {:?} definitely, {:?} indirectly; memcheck \
                         {:?}, {:?}",
                        krate.name, ours.0, ours.1, leak.definitely, leak.indirectly
                    ));
                }
            }
            (false, None) => match plain.get(&(binary.to_owned(), test.to_owned())) {
                Some(Plain::Failed) => outcome.fail_plainly.push(format!(
                    "{} {id}: {}",
                    krate.name,
                    describe_failure(result)
                )),
                plainly => {
                    let failure = format!(
                        "{} {id} ({}): {}",
                        krate.name,
                        match plainly {
                            Some(Plain::Passed) => "passes plainly",
                            Some(Plain::Ignored) => "ignored plainly",
                            _ => "not run plainly",
                        },
                        describe_failure(result)
                    );
                    // Once more, alone: a failure that does not come back is flaky. The test's
                    // own flaky failure is shown apart; a flaky verdict of ours is a false
                    // failure like one that comes back.
                    let again = traced_run(
                        &source,
                        &target_dir,
                        toolchain,
                        memleak,
                        krate,
                        1,
                        &["--exact", test],
                    )?;
                    let passed_alone = again
                        .iter()
                        .any(|rerun| rerun["binary_id"] == binary && rerun["result"] == "ok");
                    if passed_alone && plainly == Some(&Plain::Passed) {
                        if crate::stress::by_the_tracer(&crate::stress::verdict(result)) {
                            outcome.flaky_verdicts.push(failure);
                        } else {
                            outcome.flaky_tests.push(failure);
                        }
                    } else {
                        outcome.false_failures.push(failure);
                    }
                }
            },
        }
    }
    if outcome.tests != krate.tests {
        outcome.problems.push(format!(
            "{}: {} tests ran, the corpus records {}",
            krate.name, outcome.tests, krate.tests
        ));
    }
    for leak in krate.leaks {
        let ran = traced
            .iter()
            .any(|result| result["binary_id"] == leak.binary && result["test"] == leak.test);
        if !ran {
            outcome.problems.push(format!(
                "{}: the leaking test [{}] {} did not run",
                krate.name, leak.binary, leak.test
            ));
        }
        // The recorded figures are memcheck's: check they still are.
        let binary = binaries
            .iter()
            .find_map(|(path, id)| (id == leak.binary).then_some(path))
            .with_context(|| format!("no test binary {}", leak.binary))?;
        let theirs = memcheck(binary, &source, leak.test)?;
        if theirs != (leak.definitely, leak.indirectly) {
            outcome.problems.push(format!(
                "{} [{}] {}: memcheck now says {:?} definitely, {:?} indirectly lost; the \
                 corpus records {:?}, {:?}",
                krate.name,
                leak.binary,
                leak.test,
                theirs.0,
                theirs.1,
                leak.definitely,
                leak.indirectly
            ));
        }
    }
    Ok(outcome)
}

/// The failure reasons and the first lost stack's first frames, on one line.
pub fn describe_failure(result: &Value) -> String {
    let mut text: Vec<String> = result["failures"]
        .as_array()
        .map(|failures| {
            failures
                .iter()
                .filter_map(Value::as_str)
                .map(|failure| failure.chars().take(400).collect())
                .collect()
        })
        .unwrap_or_default();
    if let Some(stack) = result["stacks"]
        .as_array()
        .and_then(|stacks| stacks.first())
    {
        let frames: Vec<&str> = stack["frames"]
            .as_array()
            .map(|frames| {
                frames
                    .iter()
                    .filter_map(|frame| frame["symbol"].as_str())
                    .take(8)
                    .collect()
            })
            .unwrap_or_default();
        text.push(format!(
            "{} bytes {}: {}",
            stack["bytes"],
            stack["category"].as_str().unwrap_or_default(),
            frames.join(" <- ")
        ));
    }
    text.join("; ")
}

/// The crate's source at `target/corpus/src/<crate>-<version>`, fetched through cargo from
/// the registry, with a `Cargo.lock`.
fn fetch(root: &Path, corpus_dir: &Path, toolchain: &str, krate: &Crate) -> Result<PathBuf> {
    let name = format!("{}-{}", krate.name, krate.version);
    let source = corpus_dir.join("src").join(&name);
    let ready = source.join(".corpus-fetched");
    if ready.exists() {
        return Ok(source);
    }
    // A throwaway package that depends on exactly that version: cargo downloads and unpacks
    // it, and `cargo metadata` says where.
    let fetcher = corpus_dir.join("fetch").join(&name);
    std::fs::create_dir_all(fetcher.join("src"))?;
    std::fs::write(
        fetcher.join("Cargo.toml"),
        format!(
            "[package]\nname = \"corpus-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[dependencies]\n{} = \"={}\"\n\n[workspace]\n",
            krate.name, krate.version
        ),
    )?;
    std::fs::write(fetcher.join("src/lib.rs"), "")?;
    let out = Command::new(cargo_program())
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(fetcher.join("Cargo.toml"))
        .env("RUSTUP_TOOLCHAIN", toolchain)
        .stdin(Stdio::null())
        .output()
        .context("cargo metadata (fetching the crate)")?;
    ensure!(
        out.status.success(),
        "fetching {name} through cargo failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let metadata: Value = serde_json::from_slice(&out.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages.iter().find(|package| {
                package["name"] == krate.name && package["version"] == krate.version
            })
        })
        .and_then(|package| package["manifest_path"].as_str())
        .with_context(|| format!("cargo metadata does not list {name}"))?;
    let unpacked = Path::new(manifest).parent().context("manifest dir")?;
    let _ = std::fs::remove_dir_all(&source);
    copy_tree(unpacked, &source)?;
    if !source.join("Cargo.lock").exists() {
        let committed = root.join("xtask/corpus").join(format!("{name}.lock"));
        ensure!(
            committed.exists(),
            "{name} ships no Cargo.lock and xtask/corpus/{name}.lock is missing; generate one \
             (`cargo generate-lockfile` in {}) and commit it there",
            source.display()
        );
        std::fs::copy(&committed, source.join("Cargo.lock"))?;
    }
    std::fs::write(&ready, "")?;
    Ok(source)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn cargo_program() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `cargo test` in the crate, with the flags `cargo memleak test` builds with (frame pointers
/// and nothing else), so that the two share one build.
fn cargo_test(source: &Path, target_dir: &Path, toolchain: &str, krate: &Crate) -> Command {
    let mut command = Command::new(cargo_program());
    command
        .args(["test", "--locked"])
        .args(krate.args)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(source)
        .env("RUSTUP_TOOLCHAIN", toolchain)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cforce-frame-pointers=yes")
        .env_remove("RUSTFLAGS")
        .stdin(Stdio::null());
    command
}

/// Builds the tests; returns each test binary's path → its binary id (nextest's).
fn build(
    source: &Path,
    target_dir: &Path,
    toolchain: &str,
    krate: &Crate,
) -> Result<BTreeMap<PathBuf, String>> {
    if krate.doc() {
        // rustdoc compiles doc tests as it runs them: nothing to build ahead.
        std::fs::create_dir_all(target_dir)?;
        return Ok(BTreeMap::new());
    }
    let out = cargo_test(source, target_dir, toolchain, krate)
        .args(["--no-run", "--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    ensure!(
        out.status.success(),
        "building {}'s tests failed",
        krate.name
    );
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(executable), Some(true)) = (
            message["executable"].as_str(),
            message["profile"]["test"].as_bool(),
        ) else {
            continue;
        };
        let package = message["package_id"].as_str().unwrap_or_default();
        // `registry+https://...#name@version`, `path+file:///...#name@version`, or `...#version`.
        let package_name = package
            .rsplit('#')
            .next()
            .and_then(|tail| tail.split('@').next())
            .filter(|name| !name.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .unwrap_or(krate.name)
            .to_owned();
        let target = message["target"]["name"].as_str().unwrap_or_default();
        let kinds: Vec<&str> = message["target"]["kind"]
            .as_array()
            .map(|kinds| kinds.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let id = if kinds.iter().any(|kind| {
            ["lib", "rlib", "dylib", "cdylib", "staticlib", "proc-macro"].contains(kind)
        }) {
            package_name
        } else if kinds.contains(&"test") {
            format!("{package_name}::{target}")
        } else if kinds.contains(&"example") {
            format!("{package_name}::example/{target}")
        } else if kinds.contains(&"bench") {
            format!("{package_name}::bench/{target}")
        } else {
            format!("{package_name}::bin/{target}")
        };
        binaries.insert(PathBuf::from(executable), id);
    }
    Ok(binaries)
}

/// `cargo test` as a user runs it (nothing is rebuilt), its results by (binary id, test).
fn plain_run(
    source: &Path,
    target_dir: &Path,
    toolchain: &str,
    krate: &Crate,
    binaries: &BTreeMap<PathBuf, String>,
    jobs: usize,
) -> Result<BTreeMap<(String, String), Plain>> {
    // cargo names each binary on stderr and libtest prints on stdout: one file, appended to,
    // keeps them in order. (Not a pipe: processes a test leaves behind would hold it open.)
    let log_path = target_dir.join("plain-cargo-test.log");
    let log = std::fs::File::create(&log_path)?;
    let mut command = cargo_test(source, target_dir, toolchain, krate);
    if !krate.doc() {
        // Every test target (the examples some tests run were built with the rest); doc
        // tests only in the entries that are about them.
        command.arg("--tests");
    }
    command
        .arg("--no-fail-fast")
        .args(["--", "--test-threads", &jobs.to_string()])
        .stdout(log.try_clone()?)
        .stderr(log);
    run_in_session(&mut command, "cargo test")?;
    let mut results = BTreeMap::new();
    let mut binary: Option<String> = None;
    for line in BufReader::new(std::fs::File::open(&log_path)?).lines() {
        let line = line?;
        let trimmed = line.trim_start();
        if trimmed.starts_with("Doc-tests ") {
            binary = Some(format!("{}::doc-tests", krate.name));
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            // `Running unittests src/lib.rs (target/debug/deps/name-hash)`
            binary = rest
                .rsplit_once(" (")
                .and_then(|(_, path)| path.strip_suffix(')'))
                .and_then(|path| {
                    let path = Path::new(path);
                    let absolute = if path.is_absolute() {
                        path.to_owned()
                    } else {
                        source.join(path)
                    };
                    binaries.get(&absolute).cloned()
                });
            continue;
        }
        let (Some(binary), Some(rest)) = (&binary, trimmed.strip_prefix("test ")) else {
            continue;
        };
        let Some((name, verdict)) = rest.rsplit_once(" ... ") else {
            continue;
        };
        // libtest marks `#[should_panic]` tests in its line, rustdoc `no_run` and
        // `compile_fail` ones; cargo memleak's names are without.
        let name = [" - should panic", " - compile fail", " - compile"]
            .iter()
            .find_map(|mode| name.strip_suffix(mode))
            .unwrap_or(name);
        let outcome = match verdict.split([',', ' ']).next().unwrap_or_default() {
            "ok" => Plain::Passed,
            "FAILED" => Plain::Failed,
            "ignored" => Plain::Ignored,
            _ => continue,
        };
        results.insert((binary.clone(), name.to_owned()), outcome);
    }
    if results.is_empty() {
        bail!("cargo test of {} printed no test results", krate.name);
    }
    Ok(results)
}

/// Runs `command` in a session of its own to its end, then kills whatever it left behind in
/// that session (some tests leave processes on purpose: duct's grandchild sleeps for a day).
fn run_in_session(command: &mut Command, what: &str) -> Result<std::process::ExitStatus> {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent's.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let session = child.id() as i32;
    let status = child
        .wait()
        .with_context(|| format!("waiting for {what}"))?;
    kill_session(session);
    Ok(status)
}

/// Kills every process of session `sid`.
fn kill_session(sid: i32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp session ...`; comm may hold spaces and parentheses.
        let session = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3))
            .and_then(|field| field.parse::<i32>().ok());
        if session == Some(sid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `cargo memleak test` on the same build: every `test-finished` event.
fn traced_run(
    source: &Path,
    target_dir: &Path,
    toolchain: &str,
    memleak: &Path,
    krate: &Crate,
    jobs: usize,
    filter: &[&str],
) -> Result<Vec<Value>> {
    let events_path = target_dir.join("memleak-events.json");
    let events = std::fs::File::create(&events_path)?;
    // The crate's own baseline, if it had one, is not ours to apply: an empty one instead (an
    // explicit --baseline must exist).
    let no_baseline = target_dir.join("no-baseline.json");
    std::fs::write(&no_baseline, "{ \"version\": 1, \"tests\": {} }\n")?;
    let mut command = Command::new(memleak);
    command
        .args(["memleak", "test", "--locked"])
        .args(krate.args)
        // As the plain run: the test targets, or (`--doc`) the doc tests.
        .args((!krate.doc()).then_some("--tests"))
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--message-format", "json", "--timeout", "600", "--jobs"])
        .arg(jobs.to_string())
        .arg("--baseline")
        .arg(&no_baseline)
        .arg("--")
        .args(filter)
        .current_dir(source)
        .env("RUSTUP_TOOLCHAIN", toolchain)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .stdout(events)
        .stderr(Stdio::inherit());
    let status = run_in_session(&mut command, "cargo memleak test")?;
    let mut results = Vec::new();
    let mut finished = None;
    for line in BufReader::new(std::fs::File::open(&events_path)?).lines() {
        let line = line?;
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match event["event"].as_str() {
            Some("test-finished") => results.push(event),
            Some("run-finished") => finished = Some(event),
            _ => {}
        }
    }
    let finished = finished.with_context(|| {
        format!("cargo memleak test ended ({status}) without a run-finished event")
    })?;
    let code = finished["exit_code"]
        .as_u64()
        .and_then(|code| i32::try_from(code).ok());
    ensure!(
        matches!(code, Some(0 | 100)) && status.code() == code,
        "cargo memleak test on {} exited {status} (run-finished says {code:?})",
        krate.name
    );
    Ok(results)
}

/// memcheck's (definitely, indirectly) lost, each (bytes, blocks), for one test run alone.
fn memcheck(binary: &Path, source: &Path, test: &str) -> Result<((u64, u64), (u64, u64))> {
    let out = Command::new("valgrind")
        .args(["--leak-check=full", "--error-exitcode=0"])
        .arg(binary)
        .args(["--exact", test, "--test-threads", "1"])
        .current_dir(source)
        .stdin(Stdio::null())
        .output()
        .context("valgrind (cargo xtask bootstrap installs it)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let amount = |what: &str| -> Result<(u64, u64)> {
        let Some(line) = stderr.lines().find(|line| line.contains(what)) else {
            ensure!(
                stderr.contains("no leaks are possible"),
                "memcheck printed no leak summary: {stderr}"
            );
            return Ok((0, 0));
        };
        let numbers: Vec<u64> = line
            .split(what)
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|word| word.replace(',', "").parse().ok())
            .collect();
        ensure!(numbers.len() == 2, "bytes and blocks in {line:?}");
        Ok((numbers[0], numbers[1]))
    };
    Ok((amount("definitely lost:")?, amount("indirectly lost:")?))
}
