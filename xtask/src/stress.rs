//! `cargo xtask corpus --stress`: the corpus's traced suites, several rounds, on a machine
//! deliberately oversubscribed (twice as many tests at once as there are cores, a busy thread
//! on every core, and a thread that keeps faulting in and freeing 256 MiB), reporting every
//! test whose verdict is not the same in every round.
//!
//! A verdict that changes between rounds is one of two things: a *flaky verdict* (a leak or
//! incomplete verdict in some rounds only: the tracer's fault until shown otherwise, and what
//! this mode is for), or a test that is flaky by itself (its own exit status or timeout
//! changes; reported apart). It fails on any flaky verdict.

use std::{
    collections::{BTreeMap, BTreeSet},
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use serde_json::Value;

/// Competing load, for as long as it lives: a spinning thread per core and one that faults
/// in, writes and frees 256 MiB over and over (none at all for 0 cores).
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(cores: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..cores {
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..10_000 {
                        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                }
            }));
        }
        if cores == 0 {
            return Self { stop, threads };
        }
        let memory_stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            const SIZE: usize = 256 << 20;
            while !memory_stop.load(Ordering::Relaxed) {
                let mut block = vec![0u8; SIZE];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                black_box(&block);
            }
        }));
        Self { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A test's verdict in one round: `ok`, or its failure kinds.
pub fn verdict(result: &Value) -> String {
    if result["result"] == "ok" {
        return "ok".to_owned();
    }
    let kinds: BTreeSet<&str> = result["failure_reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|reason| reason["kind"].as_str())
        .collect();
    kinds.into_iter().collect::<Vec<_>>().join("+")
}

/// Whether a verdict is cargo-memleak's (a leak or an incomplete trace) rather than the test's.
pub fn by_the_tracer(verdict: &str) -> bool {
    verdict.split('+').any(|kind| {
        kind.contains("over_budget")
            || kind == "incomplete"
            || kind == "not_run"
            || kind == "missing"
    })
}

/// What one crate's rounds found.
pub struct Rounds {
    pub tests: usize,
    pub round_times: Vec<Duration>,
    /// `[binary] test: verdict per round`, for a leak or incomplete verdict that changed.
    pub flaky_verdicts: Vec<String>,
    /// The same, for a test whose own failure changed.
    pub flaky_tests: Vec<String>,
}

/// Runs `round` (one traced run of the crate's suite, its test-finished events) `rounds`
/// times under [`Load`], and compares the verdicts.
pub fn rounds(
    rounds: usize,
    cores: usize,
    mut round: impl FnMut() -> Result<Vec<Value>>,
) -> Result<Rounds> {
    ensure!(rounds >= 2, "--rounds must be at least 2 to compare rounds");
    let mut verdicts: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    // Each test's first failure, described: what a changing verdict was when it failed.
    let mut failures: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut round_times = Vec::new();
    for at in 0..rounds {
        let load = Load::start(cores);
        let start = Instant::now();
        let results = round()?;
        round_times.push(start.elapsed());
        drop(load);
        for result in &results {
            let key = (
                result["binary_id"].as_str().unwrap_or_default().to_owned(),
                result["test"].as_str().unwrap_or_default().to_owned(),
            );
            if result["result"] != "ok" {
                failures
                    .entry(key.clone())
                    .or_insert_with(|| crate::corpus::describe_failure(result));
            }
            let seen = verdicts.entry(key).or_default();
            // A test missing from a round counts as such.
            seen.resize(at, "missing".to_owned());
            seen.push(verdict(result));
        }
    }
    let mut found = Rounds {
        tests: verdicts.len(),
        round_times,
        flaky_verdicts: Vec::new(),
        flaky_tests: Vec::new(),
    };
    for (key, mut seen) in verdicts {
        seen.resize(rounds, "missing".to_owned());
        if seen.iter().all(|verdict| *verdict == seen[0]) {
            continue;
        }
        let (binary, test) = &key;
        let mut line = format!("[{binary}] {test}: {}", seen.join(", "));
        if let Some(failure) = failures.get(&key).filter(|failure| !failure.is_empty()) {
            line.push_str(&format!(" ({failure})"));
        }
        if seen.iter().any(|verdict| by_the_tracer(verdict)) {
            found.flaky_verdicts.push(line);
        } else {
            found.flaky_tests.push(line);
        }
    }
    Ok(found)
}

/// Prints what the rounds found, and fails on a flaky verdict.
pub fn report(found: &[(String, Rounds)], cores: usize, jobs: usize) -> Result<()> {
    println!(
        "xtask corpus --stress: {jobs} tests at once on {cores} cores, a busy thread per core and \
         256 MiB faulted in and freed over and over"
    );
    println!(
        "{:<26} {:>6} {:>8} {:>14} {:>12}  seconds a round",
        "crate", "tests", "rounds", "flaky verdict", "flaky test"
    );
    for (name, rounds) in found {
        let times: Vec<String> = rounds
            .round_times
            .iter()
            .map(|time| format!("{:.1}", time.as_secs_f64()))
            .collect();
        println!(
            "{:<26} {:>6} {:>8} {:>14} {:>12}  {}",
            name,
            rounds.tests,
            rounds.round_times.len(),
            rounds.flaky_verdicts.len(),
            rounds.flaky_tests.len(),
            times.join(" ")
        );
    }
    for (name, rounds) in found {
        for line in &rounds.flaky_tests {
            println!("flaky by itself (not counted): {name} {line}");
        }
        for line in &rounds.flaky_verdicts {
            println!("FLAKY VERDICT {name} {line}");
        }
    }
    let flaky: usize = found.iter().map(|(_, r)| r.flaky_verdicts.len()).sum();
    ensure!(flaky == 0, "xtask corpus --stress: {flaky} flaky verdicts");
    println!("xtask corpus --stress: no flaky verdict");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leak_in_some_rounds_only_is_a_flaky_verdict_and_a_panic_is_the_tests() {
        let result = |test: &str, kinds: &[&str]| {
            let reasons: Vec<Value> = kinds
                .iter()
                .map(|kind| serde_json::json!({ "kind": kind }))
                .collect();
            serde_json::json!({
                "binary_id": "b",
                "test": test,
                "result": if kinds.is_empty() { "ok" } else { "failed" },
                "failure_reasons": reasons,
                "failures": kinds,
            })
        };
        let mut round = 0;
        let found = rounds(3, 0, || {
            round += 1;
            Ok(vec![
                result("steady", &[]),
                result(
                    "leaky",
                    if round == 2 {
                        &["lost_over_budget"]
                    } else {
                        &[]
                    },
                ),
                result("panicky", if round == 3 { &["test_failed"] } else { &[] }),
                result("always_leaks", &["lost_over_budget"]),
            ])
        })
        .unwrap();
        assert_eq!(found.tests, 4);
        assert_eq!(found.round_times.len(), 3);
        assert_eq!(
            found.flaky_verdicts,
            ["[b] leaky: ok, lost_over_budget, ok (lost_over_budget)"]
        );
        assert_eq!(
            found.flaky_tests,
            ["[b] panicky: ok, ok, test_failed (test_failed)"]
        );
    }
}
