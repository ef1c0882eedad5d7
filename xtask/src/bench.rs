//! `cargo xtask bench`: what tracing costs, traced and untraced side by side in one run, on
//! this machine: the allocator pair and each probe program's share of it, short processes and
//! where their time goes, the exit scan, the test suites (a thousand tiny tests against
//! `cargo test` and `cargo nextest run`, the allocation-heavy one against memcheck), the global
//! allocators, the kernel's allocators and `--combined-only`. Figures, never assertions: the
//! README's tables come from here.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{BenchPart, cargo, nix_is_root, output, run, workspace_root};

/// Median of `runs` measurements.
fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// A baseline with no budgets (an explicit `--baseline` must exist), kept in the workspace's
/// target directory so that the bench leaves nothing behind elsewhere.
fn empty_baseline() -> Result<PathBuf> {
    let baseline = workspace_root().join("target/xtask/empty-baseline.json");
    std::fs::create_dir_all(workspace_root().join("target/xtask"))?;
    std::fs::write(&baseline, "{ \"version\": 1, \"tests\": {} }\n")
        .context("writing the bench's empty baseline")?;
    Ok(baseline)
}

pub fn bench(pairs: u64, runs: usize, only: Option<BenchPart>) -> Result<()> {
    ensure!(runs > 0 && pairs > 0, "--runs and --pairs must be positive");
    let root = workspace_root();
    let target = root.join("target/xtask");
    std::fs::create_dir_all(&target)?;
    let compile = |name: &str| -> Result<PathBuf> {
        let binary = target.join(name);
        run(
            Command::new("cc")
                .args(["-O2", "-fno-omit-frame-pointer", "-o"])
                .arg(&binary)
                .arg(root.join(format!("xtask/bench/{name}.c"))),
            &format!("cc xtask/bench/{name}.c"),
        )?;
        Ok(binary)
    };
    let workload = compile("pairs")?;
    let live = compile("live")?;
    let kpairs = compile("kpairs")?;
    run(
        cargo()
            .args([
                "build",
                "--release",
                "--quiet",
                "--package",
                "cargo-memleak",
            ])
            .current_dir(&root),
        "cargo build --release -p cargo-memleak",
    )?;
    let memleak = root.join("target/release/cargo-memleak");
    if !nix_is_root() {
        bail!("the traced measurements need root (BPF, uprobes, ptrace)");
    }
    match only {
        Some(BenchPart::Combined) => {
            return bench_combined(&memleak, &workload, &live, pairs, runs);
        }
        Some(BenchPart::Tiny) => return bench_tiny(&memleak, runs),
        Some(BenchPart::Spawns) => return bench_spawns(&memleak, runs),
        None => {}
    }

    // Traced with the heap's peak followed (the default), or `--no-peak`.
    let ns_per_pair_traced = |peak: bool| -> Result<f64> {
        let mut command = Command::new(&memleak);
        command.args(["exec", "--output", "/dev/null"]);
        if !peak {
            command.arg("--no-peak");
        }
        command.arg("--").arg(&workload);
        let stdout = output(command.arg(pairs.to_string()), "pairs workload")?;
        stdout
            .trim()
            .parse::<f64>()
            .context("the workload prints ns per pair")
    };
    let ns_per_pair = |traced: bool| -> Result<f64> {
        let mut command = if traced {
            let mut command = Command::new(&memleak);
            command
                .args(["exec", "--output", "/dev/null", "--"])
                .arg(&workload);
            command
        } else {
            Command::new(&workload)
        };
        let stdout = output(command.arg(pairs.to_string()), "pairs workload")?;
        stdout
            .trim()
            .parse::<f64>()
            .context("the workload prints ns per pair")
    };
    let wall = |mut command: Command| -> Result<Duration> {
        let start = Instant::now();
        output(&mut command, "short process")?;
        Ok(start.elapsed())
    };
    // cargo-memleak's own account of a traced process (`--timings`), in ms.
    let phases = |program: &Path, args: &[&str]| -> Result<Vec<(String, f64)>> {
        let out = Command::new(&memleak)
            .args(["exec", "--timings", "--output", "/dev/null", "--"])
            .arg(program)
            .args(args)
            .output()
            .context("running cargo-memleak --timings")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find_map(|line| line.strip_prefix("memleak: timings: "))
            .with_context(|| format!("no timings line in: {stderr}"))?;
        line.split(", ")
            .map(|phase| {
                let (name, value) = phase.split_once(' ').context("`name value ms`")?;
                let ms = value.trim_end_matches(" ms").parse::<f64>()?;
                Ok((name.to_owned(), ms))
            })
            .collect()
    };

    let mut untraced = Vec::new();
    let mut traced = Vec::new();
    let mut no_peak = Vec::new();
    let mut short_untraced = Vec::new();
    let mut short_traced = Vec::new();
    let mut phase_runs: Vec<Vec<(String, f64)>> = Vec::new();
    for _ in 0..runs {
        untraced.push(ns_per_pair(false)?);
        traced.push(ns_per_pair(true)?);
        no_peak.push(ns_per_pair_traced(false)?);
        short_untraced.push(wall(Command::new(&workload))?);
        let mut command = Command::new(&memleak);
        command
            .args(["exec", "--output", "/dev/null", "--"])
            .arg(&workload);
        short_traced.push(wall(command)?);
        phase_runs.push(phases(&workload, &[])?);
    }
    // The exit scan over a million live blocks, all reachable or all lost.
    const BLOCKS: u64 = 1_000_000;
    const BLOCK_SIZE: u64 = 32;
    let scan_ms = |fate: &str| -> Result<f64> {
        let n = BLOCKS.to_string();
        let size = BLOCK_SIZE.to_string();
        let mut times = Vec::new();
        for _ in 0..runs.min(3) {
            let run = phases(&live, &[&n, &size, fate])?;
            let scan = run.iter().find(|(name, _)| name == "scan");
            times.push(scan.context("a scan phase in --timings")?.1);
        }
        Ok(median(times))
    };
    let (scan_keep, scan_lose) = (scan_ms("keep")?, scan_ms("lose")?);
    let (untraced, traced, no_peak) = (median(untraced), median(traced), median(no_peak));
    let (short_untraced, short_traced) = (median(short_untraced), median(short_traced));
    println!("cargo xtask bench: median of {runs} runs, {pairs} malloc(64)+free pairs each");
    println!(
        "{:<36} {:>14} {:>14} {:>10}",
        "measure", "untraced", "traced", "ratio"
    );
    println!(
        "{:<36} {:>11.1} ns {:>11.1} ns {:>9.0}x",
        "malloc+free pair",
        untraced,
        traced,
        traced / untraced
    );
    println!(
        "{:<36} {:>11.1} ns {:>11.1} ns {:>9.0}x",
        "malloc+free pair, --no-peak",
        untraced,
        no_peak,
        no_peak / untraced
    );
    println!(
        "  the heap's peak costs {:.1} ns a pair ({:+.1}% of the pair traced without it)",
        traced - no_peak,
        (traced - no_peak) / no_peak * 100.0
    );
    println!(
        "{:<36} {:>11.1} ms {:>11.1} ms {:>9.0}x",
        "short process, wall time",
        short_untraced.as_secs_f64() * 1e3,
        short_traced.as_secs_f64() * 1e3,
        short_traced.as_secs_f64() / short_untraced.as_secs_f64()
    );
    println!("where a traced short process's time goes (cargo-memleak --timings, median):");
    let names: Vec<String> = phase_runs[0].iter().map(|(name, _)| name.clone()).collect();
    let mut until_report = 0.0;
    for (index, name) in names.iter().enumerate() {
        let ms = median(phase_runs.iter().map(|run| run[index].1).collect());
        if name != "detach" {
            until_report += ms;
        }
        println!("  {name:<34} {ms:>11.1} ms");
    }
    println!("  {:<34} {until_report:>11.1} ms", "report written after");
    let megabytes = (BLOCKS * BLOCK_SIZE) as f64 / 1e6;
    println!("exit scan of {BLOCKS} live {BLOCK_SIZE}-byte blocks ({megabytes:.0} MB of heap):");
    for (fate, ms) in [("all reachable", scan_keep), ("all lost", scan_lose)] {
        println!(
            "  {fate:<34} {ms:>11.1} ms {:>9.0} MB/s",
            megabytes / (ms / 1e3)
        );
    }
    let bystander = bench_bystander(&memleak, &workload, pairs, runs)?;
    println!(
        "{:<36} {:>11.1} ns {:>11.1} ns {:>9.1}x",
        "unrelated pair during a test run",
        untraced,
        bystander,
        bystander / untraced
    );
    bench_programs(&memleak, &workload, traced)?;
    bench_global_allocators(&memleak, pairs, runs)?;
    bench_kernel(&memleak, &kpairs, runs)?;
    bench_combined(&memleak, &workload, &live, pairs, runs)?;
    let root = workspace_root();
    bench_suite(
        &memleak,
        runs,
        &Suite {
            title: "fixture suite (fixtures/workspace)",
            manifest: root.join("fixtures/workspace/Cargo.toml"),
            skip: &["tests::hangs"],
            expected_exit: 100,
            memcheck: false,
        },
    )?;
    bench_tiny(&memleak, runs)?;
    bench_spawns(&memleak, runs)?;
    bench_suite(
        &memleak,
        runs,
        &Suite {
            title: "allocation-heavy suite (fixtures/heavy)",
            manifest: root.join("fixtures/heavy/Cargo.toml"),
            skip: &[],
            expected_exit: 0,
            memcheck: true,
        },
    )
}

/// A Rust `Box<[u8; 64]>` made and dropped, through each global allocator, untraced and under
/// `cargo memleak exec`: the system allocator is probed in libc alone (the shim ends there),
/// jemalloc and mimalloc by their own symbols.
fn bench_global_allocators(memleak: &Path, pairs: u64, runs: usize) -> Result<()> {
    let crate_dir = workspace_root().join("xtask/bench/alloc-pairs");
    run(
        cargo()
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(crate_dir.join("Cargo.toml"))
            .env("RUSTFLAGS", "-C force-frame-pointers=yes"),
        "cargo build xtask/bench/alloc-pairs",
    )?;
    for (allocator, how) in [
        ("system", "through libc's malloc"),
        ("jemalloc", "tikv-jemallocator"),
        ("mimalloc", "mimalloc"),
    ] {
        let binary = crate_dir.join("target/release").join(allocator);
        let ns = |traced: bool| -> Result<f64> {
            let mut command = if traced {
                let mut command = Command::new(memleak);
                command
                    .args(["exec", "--output", "/dev/null", "--"])
                    .arg(&binary);
                command
            } else {
                Command::new(&binary)
            };
            let stdout = output(command.arg(pairs.to_string()), allocator)?;
            stdout
                .trim()
                .parse::<f64>()
                .with_context(|| format!("{allocator} prints ns per pair"))
        };
        let mut untraced = Vec::new();
        let mut traced = Vec::new();
        for _ in 0..runs {
            untraced.push(ns(false)?);
            traced.push(ns(true)?);
        }
        let (untraced, traced) = (median(untraced), median(traced));
        println!(
            "{:<36} {:>11.1} ns {:>11.1} ns {:>9.0}x",
            format!("Rust Box pair, {how}"),
            untraced,
            traced,
            traced / untraced
        );
    }
    Ok(())
}

/// What `cargo memleak kernel` costs the kernel's allocations: an eventfd made and closed
/// (four kernel allocations and frees), with and without the tracepoints on.
fn bench_kernel(memleak: &Path, kpairs: &Path, runs: usize) -> Result<()> {
    const EVENTFDS: u64 = 200_000;
    let ns_per_eventfd = || -> Result<f64> {
        let stdout = output(Command::new(kpairs).arg(EVENTFDS.to_string()), "kpairs")?;
        stdout
            .trim()
            .parse::<f64>()
            .context("kpairs prints ns per eventfd")
    };
    let mut untraced = Vec::new();
    let mut traced = Vec::new();
    for _ in 0..runs {
        untraced.push(ns_per_eventfd()?);
        let mut tracer = Command::new(memleak)
            .args(["kernel", "3600"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting cargo-memleak kernel")?;
        let stderr = tracer.stderr.take().context("piped stderr")?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let attached = lines.any(|line| line.is_ok_and(|line| line.starts_with("Attaching")));
        let measured = if attached {
            ns_per_eventfd()
        } else {
            Err(anyhow::anyhow!("cargo-memleak kernel did not attach"))
        };
        // Ctrl-C: the tracer detaches and exits.
        let _ = Command::new("kill")
            .args(["-INT", &tracer.id().to_string()])
            .status();
        let _ = tracer.wait();
        traced.push(measured?);
    }
    let (untraced, traced) = (median(untraced), median(traced));
    println!(
        "{:<36} {:>11.1} ns {:>11.1} ns {:>9.1}x",
        "kernel: eventfd + close (4 allocs)",
        untraced,
        traced,
        traced / untraced
    );
    Ok(())
}

/// `--combined-only` against per-allocation records, side by side: the cost of a traced
/// malloc+free pair (the totals' atomic adds), and of reading a process with a million live
/// blocks at its exit (`--timings`' read: every record, or only the per-stack totals).
fn bench_combined(
    memleak: &Path,
    workload: &Path,
    live: &Path,
    pairs: u64,
    runs: usize,
) -> Result<()> {
    const BLOCKS: u64 = 1_000_000;
    let mode_args = |combined: bool| -> &'static [&'static str] {
        if combined { &["--combined-only"] } else { &[] }
    };
    let ns_per_pair = |combined: bool| -> Result<f64> {
        let stdout = output(
            Command::new(memleak)
                .arg("exec")
                .args(mode_args(combined))
                .args(["--output", "/dev/null", "--"])
                .arg(workload)
                .arg(pairs.to_string()),
            "pairs workload",
        )?;
        stdout
            .trim()
            .parse::<f64>()
            .context("the workload prints ns per pair")
    };
    let read_ms = |combined: bool| -> Result<f64> {
        let out = Command::new(memleak)
            .args(["exec", "--timings"])
            .args(mode_args(combined))
            .args(["--output", "/dev/null", "--"])
            .arg(live)
            .args([&BLOCKS.to_string(), "32", "keep"])
            .output()
            .context("running cargo-memleak --timings")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let read = stderr
            .lines()
            .find_map(|line| line.strip_prefix("memleak: timings: "))
            .and_then(|line| {
                line.split(", ")
                    .find_map(|phase| phase.strip_prefix("read "))
            })
            .with_context(|| format!("no read phase in: {stderr}"))?;
        Ok(read.trim_end_matches(" ms").parse::<f64>()?)
    };
    let mut pair = [Vec::new(), Vec::new()];
    let mut read = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (index, combined) in [false, true].into_iter().enumerate() {
            pair[index].push(ns_per_pair(combined)?);
        }
    }
    for _ in 0..runs.min(3) {
        for (index, combined) in [false, true].into_iter().enumerate() {
            read[index].push(read_ms(combined)?);
        }
    }
    let [pair_each, pair_combined] = pair.map(median);
    let [read_each, read_combined] = read.map(median);
    println!(
        "{:<36} {:>14} {:>14} {:>10}",
        "--combined-only", "per-alloc", "combined", "ratio"
    );
    println!(
        "{:<36} {:>11.1} ns {:>11.1} ns {:>9.2}x",
        "  traced malloc+free pair",
        pair_each,
        pair_combined,
        pair_combined / pair_each
    );
    println!(
        "{:<36} {:>11.1} ms {:>11.1} ms {:>9.4}x",
        format!("  read at exit, {BLOCKS} live blocks"),
        read_each,
        read_combined,
        read_combined / read_each
    );
    Ok(())
}

/// A fixture's test suite to time: each test as its own process, as many at once as there are
/// CPUs, plainly, optionally under memcheck, and under `cargo memleak test`.
struct Suite<'a> {
    title: &'a str,
    /// The fixture's workspace manifest.
    manifest: PathBuf,
    /// Tests left out (they hang).
    skip: &'a [&'a str],
    /// The exit code `cargo memleak test` must give (100: the fixture's leaky tests).
    expected_exit: i32,
    memcheck: bool,
}

/// Times a fixture suite (see [`Suite`]).
fn bench_suite(memleak: &Path, runs: usize, suite: &Suite<'_>) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(1, usize::from);
    let target_dir = suite
        .manifest
        .parent()
        .context("manifest dir")?
        .join("target/memleak");
    // The same build cargo memleak makes (its target dir, frame pointers): nothing rebuilds.
    let built = output(
        cargo()
            .args([
                "test",
                "--no-run",
                "--workspace",
                "--message-format=json",
                "--quiet",
            ])
            .arg("--manifest-path")
            .arg(&suite.manifest)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", "-Cforce-frame-pointers=yes")
            .env_remove("RUSTFLAGS"),
        "cargo test --no-run on a fixture",
    )?;
    let mut tests: Vec<(PathBuf, PathBuf, String)> = Vec::new();
    for line in built.lines() {
        let message: serde_json::Value = serde_json::from_str(line)?;
        let (Some(exe), Some(true)) = (
            message["executable"].as_str(),
            message["profile"]["test"].as_bool(),
        ) else {
            continue;
        };
        let manifest_path = message["manifest_path"].as_str().context("manifest_path")?;
        let dir = Path::new(manifest_path).parent().context("package dir")?;
        let listed = output(
            Command::new(exe).args(["--list", "--format", "terse"]),
            "listing tests",
        )?;
        for name in listed
            .lines()
            .filter_map(|line| line.strip_suffix(": test"))
        {
            if !suite.skip.contains(&name) {
                tests.push((exe.into(), dir.to_owned(), name.to_owned()));
            }
        }
    }
    // Every test as its own process, `jobs` at once, each started by `wrap`.
    let per_process = |wrap: &(dyn Fn(&Path) -> Command + Sync)| -> Duration {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let start = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(|| {
                    while let Some((exe, dir, name)) =
                        tests.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        let _ = wrap(exe)
                            .args(["--exact", name, "--nocapture"])
                            .current_dir(dir)
                            .output();
                    }
                });
            }
        });
        start.elapsed()
    };
    let plain = || per_process(&|exe| Command::new(exe));
    let memcheck = || {
        per_process(&|exe| {
            let mut command = Command::new("valgrind");
            command.args(["--leak-check=full", "--quiet"]).arg(exe);
            command
        })
    };
    // Wall time until the results are out (the run-finished event), and until exit (after the
    // kernel has removed the last probes).
    // No budgets: an empty baseline (an explicit --baseline must exist).
    let baseline = empty_baseline()?;
    let traced = || -> Result<(Duration, Duration)> {
        let start = Instant::now();
        let mut command = Command::new(memleak);
        command.args(["memleak", "test", "--workspace", "--exact"]);
        for skip in suite.skip {
            command.args(["--skip", skip]);
        }
        let mut child = command
            .arg("--baseline")
            .arg(&baseline)
            .args(["--message-format", "json", "--manifest-path"])
            .arg(&suite.manifest)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cargo memleak test")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut results = None;
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if line?.contains("\"event\":\"run-finished\"") {
                results = Some(start.elapsed());
            }
        }
        let status = child.wait()?;
        ensure!(
            status.code() == Some(suite.expected_exit),
            "cargo memleak test on {}: expected exit {}, got {status}",
            suite.title,
            suite.expected_exit
        );
        Ok((results.context("a run-finished event")?, start.elapsed()))
    };
    traced()?; // warm: builds if needed
    let (mut plain_runs, mut memcheck_runs, mut results_runs, mut exit_runs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        plain_runs.push(plain());
        if suite.memcheck {
            memcheck_runs.push(memcheck());
        }
        let (results, exit) = traced()?;
        results_runs.push(results);
        exit_runs.push(exit);
    }
    let (plain, results, exit) = (median(plain_runs), median(results_runs), median(exit_runs));
    println!(
        "{}: {} tests, each its own process, {jobs} at once (median of {runs}):",
        suite.title,
        tests.len()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("  {:<34} {:>11.1} ms", "plain processes", ms(plain));
    if suite.memcheck {
        let memcheck = median(memcheck_runs);
        println!(
            "  {:<34} {:>11.1} ms {:>9.1}x   ({:.1}x cargo memleak's)",
            "memcheck (valgrind --leak-check=full)",
            ms(memcheck),
            ms(memcheck) / ms(plain),
            ms(memcheck) / ms(exit)
        );
    }
    println!(
        "  {:<34} {:>11.1} ms {:>9.1}x",
        "cargo memleak test, results out",
        ms(results),
        ms(results) / ms(plain)
    );
    println!(
        "  {:<34} {:>11.1} ms {:>9.1}x",
        "cargo memleak test, exited",
        ms(exit),
        ms(exit) / ms(plain)
    );
    println!(
        "  {:<34} {:>11.1} ms",
        "  of which after the results",
        ms(exit.saturating_sub(results))
    );
    Ok(())
}

/// An unrelated process's malloc+free pair while `cargo memleak test` runs a test (one that
/// hangs until the timeout): untraced processes should not pay for it.
fn bench_bystander(memleak: &Path, workload: &Path, pairs: u64, runs: usize) -> Result<f64> {
    let mut run = Command::new(memleak)
        .args(["memleak", "test", "--manifest-path"])
        .arg(workspace_root().join("fixtures/workspace/Cargo.toml"))
        .args([
            "-p",
            "beta",
            "--lib",
            "--exact",
            "tests::hangs",
            "--timeout",
            "600",
        ])
        .args(["--message-format", "json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cargo memleak test")?;
    let stdout = run.stdout.take().context("stdout")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let started = lines.any(|line| line.is_ok_and(|line| line.contains("run-started")));
    let measured = (|| -> Result<f64> {
        ensure!(started, "cargo memleak test did not start its run");
        // Let the test process start and meet its probes.
        std::thread::sleep(Duration::from_millis(500));
        let mut times = Vec::new();
        for _ in 0..runs {
            let stdout = output(Command::new(workload).arg(pairs.to_string()), "pairs")?;
            times.push(stdout.trim().parse::<f64>()?);
        }
        Ok(median(times))
    })();
    let _ = run.kill();
    let _ = run.wait();
    measured
}

/// cargo-nextest, the process-per-test runner these figures are held against: the one on PATH,
/// else one installed once into `target/bench-tools` (about 9 minutes to build).
fn nextest() -> Result<PathBuf> {
    if let Ok(path) = crate::install::which("cargo-nextest") {
        return Ok(path);
    }
    let root = workspace_root().join("target/bench-tools");
    let installed = root.join("bin/cargo-nextest");
    if !installed.exists() {
        eprintln!(
            "xtask bench: installing cargo-nextest into {} (once)",
            root.display()
        );
        run(
            cargo()
                .args(["install", "--locked", "--quiet", "cargo-nextest", "--root"])
                .arg(&root),
            "cargo install cargo-nextest",
        )?;
    }
    Ok(installed)
}

/// A thousand tiny tests (fixtures/tiny, a crate shaped like bytes: each test allocates a
/// little; one in twenty expects a panic): `cargo test` (one process), `cargo nextest run`
/// (a process per test, the anchor) and `cargo memleak test`, with `RUST_BACKTRACE` 0 and 1
/// (a panic then symbolizes a backtrace, some 10^5 allocator calls); then where a trivial
/// test's time goes, from `--timings`, beside its plain process.
fn bench_tiny(memleak: &Path, runs: usize) -> Result<()> {
    let manifest = workspace_root().join("fixtures/tiny/Cargo.toml");
    let nextest = nextest()?;
    let baseline = empty_baseline()?;
    let time = |command: &mut Command, what: &str| -> Result<Duration> {
        let start = Instant::now();
        let status = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .with_context(|| format!("{what}: could not start"))?;
        ensure!(status.success(), "{what} failed ({status})");
        Ok(start.elapsed())
    };
    let runners = |backtrace: &str| -> [(&'static str, Command); 3] {
        let mut plain = cargo();
        plain
            .args(["test", "--quiet", "--manifest-path"])
            .arg(&manifest);
        let mut per_process = Command::new(&nextest);
        per_process
            .args(["nextest", "run", "--manifest-path"])
            .arg(&manifest);
        let mut traced = Command::new(memleak);
        traced
            .args(["memleak", "test", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .arg("--baseline")
            .arg(&baseline);
        let mut all = [
            ("cargo test", plain),
            ("cargo nextest run", per_process),
            ("cargo memleak test", traced),
        ];
        for (_, command) in &mut all {
            command.env("RUST_BACKTRACE", backtrace);
        }
        all
    };
    println!("a thousand tiny tests (fixtures/tiny), median of {runs} runs, warm builds:");
    println!(
        "  {:<22} {:>14} {:>18} {:>20}",
        "RUST_BACKTRACE", "cargo test", "cargo nextest run", "cargo memleak test"
    );
    for backtrace in ["0", "1"] {
        let mut medians = Vec::new();
        for (name, mut command) in runners(backtrace) {
            time(&mut command, name)?; // warm: builds
            let mut times = Vec::new();
            for _ in 0..runs {
                times.push(time(&mut command, name)?);
            }
            medians.push(median(times).as_secs_f64());
        }
        println!(
            "  {:<22} {:>12.2} s {:>16.2} s {:>11.2} s ({:.1}x)",
            backtrace,
            medians[0],
            medians[1],
            medians[2],
            medians[2] / medians[1]
        );
    }
    // A trivial test (`ok_0001`: a few hundred allocations in all): its plain process, and
    // the means of --timings over the thousand, per test.
    let binary = tiny_binary(memleak, &manifest, &baseline)?;
    let mut plain = Vec::new();
    for _ in 0..runs.max(5) {
        let start = Instant::now();
        for _ in 0..20 {
            output(
                Command::new(&binary)
                    .args(["--exact", "ok_0001", "--nocapture"])
                    .env("RUST_BACKTRACE", "0"),
                "the trivial test",
            )?;
        }
        plain.push(start.elapsed() / 20);
    }
    let plain = median(plain).as_secs_f64() * 1e3;
    let out = Command::new(memleak)
        .args(["memleak", "test", "--timings", "--message-format", "json"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--baseline")
        .arg(&baseline)
        .env("RUST_BACKTRACE", "0")
        .output()
        .context("cargo memleak test --timings")?;
    let mut sums: Vec<(String, f64)> = Vec::new();
    let (mut tests, mut worker) = (0.0, 0.0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let event: serde_json::Value = serde_json::from_str(line)?;
        if event["event"] != "test-finished"
            || event["test"]
                .as_str()
                .is_some_and(|t| t.starts_with("panics"))
        {
            continue;
        }
        tests += 1.0;
        worker += event["duration_ms"].as_f64().unwrap_or_default();
        for (phase, value) in event["timings"].as_object().context("timings")? {
            let name = phase.trim_end_matches("_ms").to_owned();
            let value = value.as_f64().unwrap_or_default();
            match sums.iter_mut().find(|(known, _)| *known == name) {
                Some((_, sum)) => *sum += value,
                None => sums.push((name, value)),
            }
        }
    }
    ensure!(tests > 0.0, "cargo memleak test --timings reported no test");
    println!(
        "a trivial test, worker time (the mean of {tests:.0} passing tests of that run): plain process {plain:.1} ms, traced {:.1} ms ({:+.1} ms)",
        worker / tests,
        worker / tests - plain
    );
    // In the order a test goes through them.
    let order = [
        "spawn",
        "attach",
        "program",
        "read",
        "symbolize",
        "scan",
        "finish",
        "judge",
    ];
    sums.sort_by_key(|(name, _)| order.iter().position(|known| known == name));
    let phases: Vec<String> = sums
        .iter()
        .map(|(name, sum)| format!("{name} {:.1}", sum / tests))
        .collect();
    println!("  ms per test: {}", phases.join(", "));
    Ok(())
}

/// fixtures/spawns' one test, which runs `/bin/true` [`SPAWNS`] times: under `cargo test`,
/// and under `cargo memleak test` following no child, the workspace's binaries (the default:
/// each `true` is let go at its exec) and every child (each `true` traced).
fn bench_spawns(memleak: &Path, runs: usize) -> Result<()> {
    const SPAWNS: u32 = 200;
    let manifest = workspace_root().join("fixtures/spawns/Cargo.toml");
    let baseline = empty_baseline()?;
    // Wall time, and the test's own duration as cargo memleak's worker measured it (without
    // the build check, cargo metadata and listing around it).
    let mut rows: Vec<(String, f64, Option<f64>)> = Vec::new();
    let mut plain = cargo();
    plain
        .args(["test", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("SPAWNS", SPAWNS.to_string());
    let mut times = Vec::new();
    for run in 0..=runs {
        let start = Instant::now();
        output(&mut plain, "cargo test fixtures/spawns")?;
        if run > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    rows.push(("cargo test".into(), median(times), None));
    for follow in ["none", "workspace", "all"] {
        let mut traced = Command::new(memleak);
        traced
            .args(["memleak", "test", "--message-format", "json"])
            .args(["--follow-children", follow, "--manifest-path"])
            .arg(&manifest)
            .arg("--baseline")
            .arg(&baseline)
            .env("SPAWNS", SPAWNS.to_string());
        let (mut walls, mut tests) = (Vec::new(), Vec::new());
        for run in 0..=runs {
            let start = Instant::now();
            let stdout = output(&mut traced, "cargo memleak test fixtures/spawns")?;
            let wall = start.elapsed().as_secs_f64();
            let duration = stdout
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|event| event["event"] == "test-finished")
                .and_then(|event| event["duration_ms"].as_f64())
                .context("a test-finished event with its duration")?;
            if run > 0 {
                walls.push(wall);
                tests.push(duration / 1e3);
            }
        }
        rows.push((
            format!("cargo memleak test --follow-children {follow}"),
            median(walls),
            Some(median(tests)),
        ));
    }
    println!("a test that runs /bin/true {SPAWNS} times (fixtures/spawns), median of {runs} runs:");
    println!("  {:<48} {:>8} {:>8}", "", "wall", "the test");
    let unfollowed = rows[1].2.unwrap_or_default();
    for (name, wall, test) in &rows {
        let test = test.map_or("".to_owned(), |test| format!("{test:.2} s"));
        let per_child = match rows.iter().find(|(row, _, _)| row == name) {
            Some((_, _, Some(duration))) if !name.ends_with("none") => format!(
                "{:+.2} ms a child over `none`",
                (duration - unfollowed) * 1e3 / f64::from(SPAWNS)
            ),
            _ => String::new(),
        };
        println!("  {name:<48} {wall:>6.2} s {test:>8}  {per_child}");
    }
    Ok(())
}

/// The test binary of fixtures/tiny that cargo memleak built (with frame pointers).
fn tiny_binary(memleak: &Path, manifest: &Path, baseline: &Path) -> Result<PathBuf> {
    // Listing builds it.
    output(
        Command::new(memleak)
            .args(["memleak", "test", "--list", "--message-format", "json"])
            .arg("--manifest-path")
            .arg(manifest)
            .arg("--baseline")
            .arg(baseline),
        "cargo memleak test --list",
    )?;
    let dir = manifest
        .parent()
        .context("the fixture's directory")?
        .join("target/memleak/debug/deps");
    std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("tiny-") && !name.contains('.'))
        })
        .find(|path| {
            Command::new(path)
                .args(["--list", "--format", "terse"])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("ok_0001: test"))
        })
        .context("the built test binary of fixtures/tiny")
}

/// What each probe program costs per call, from the kernel's own accounting
/// (`kernel.bpf_stats_enabled=1`, read with bpftool twice while a traced pairs workload runs),
/// and what a pair then costs beyond its programs: the traps, the floor of the mechanism.
fn bench_programs(memleak: &Path, workload: &Path, pair_ns: f64) -> Result<()> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(STATS).context("reading bpf_stats_enabled")?;
    std::fs::write(STATS, "1").context("enabling bpf_stats")?;
    let sample = || -> Result<Vec<(String, u64, u64)>> {
        let shown = output(
            Command::new("bpftool").args(["-j", "prog", "show"]),
            "bpftool",
        )?;
        let programs: serde_json::Value = serde_json::from_str(&shown)?;
        Ok(programs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|program| {
                let name = program["name"].as_str()?;
                name.starts_with("alloc_").then(|| {
                    (
                        name.to_owned(),
                        program["run_time_ns"].as_u64().unwrap_or_default(),
                        program["run_cnt"].as_u64().unwrap_or_default(),
                    )
                })
            })
            .collect())
    };
    let measured = (|| -> Result<Vec<(String, f64, f64)>> {
        let mut traced = Command::new(memleak)
            .args(["exec", "--output", "/dev/null", "--"])
            .arg(workload)
            .arg("1500000")
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("a traced pairs workload")?;
        std::thread::sleep(Duration::from_millis(1500));
        let first = sample()?;
        std::thread::sleep(Duration::from_millis(1500));
        let second = sample()?;
        let _ = traced.wait();
        Ok(second
            .iter()
            .filter_map(|(name, time, count)| {
                let (_, time0, count0) = first.iter().find(|(known, ..)| known == name)?;
                let calls = count.checked_sub(*count0).filter(|&calls| calls > 0)?;
                Some((
                    name.clone(),
                    (time - time0) as f64 / calls as f64,
                    calls as f64,
                ))
            })
            .collect())
    })();
    std::fs::write(STATS, before.trim()).context("restoring bpf_stats_enabled")?;
    let measured = measured?;
    ensure!(!measured.is_empty(), "bpftool saw no alloc_ program run");
    println!("probe programs (kernel.bpf_stats_enabled, a traced malloc(64)+free loop):");
    // Per pair: malloc's and free's entries, malloc's return.
    let calls_of = |name: &str| measured.iter().find(|(known, ..)| known == name);
    let returns = calls_of("alloc_return_multi").map_or(0.0, |(_, _, calls)| *calls);
    let mut per_pair = 0.0;
    for (name, ns, calls) in &measured {
        let share = if returns > 0.0 { calls / returns } else { 1.0 };
        per_pair += ns * share;
        println!("  {name:<34} {ns:>11.0} ns a call, {share:.0} calls a pair");
    }
    println!(
        "  {:<34} {per_pair:>11.0} ns of programs, {:.0} ns of traps (the pair, {pair_ns:.0} ns, less its programs)",
        "per malloc+free pair",
        pair_ns - per_pair
    );
    Ok(())
}
