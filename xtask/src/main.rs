//! Developer tasks for cargo-memleak, run as `cargo xtask <task>`. Every task first gets onto
//! the workspace's pinned toolchain, installing it when missing ([`toolchain`]).
//!
//! - `bootstrap`: make this machine able to build the eBPF programs (the pinned nightly +
//!   rust-src, a bpf-linker built against its LLVM) and run the tests (a C compiler, valgrind).
//!   Idempotent and fast when everything is there; each failure names its step.
//! - `test`: bootstrap, the shipped eBPF object's check, the stable-only install, the
//!   fresh-machine check, the second glibc, then every test of the workspace (root needed for
//!   the tracing tests), then the corpus.
//! - `corpus`: bootstrap, then `cargo memleak test` on published crates' test suites, each
//!   test compared with a plain `cargo test` (see [`corpus`]).
//! - `ebpf [--check]`: write (or check) the shipped eBPF object, see [`ebpf`].
//! - `install-check`: `cargo install` from a clean clone with stable Rust alone, see [`install`].
//! - `fresh-check`: the README's commands with only rustup and an older stable, see [`fresh`].
//! - `glibc`: the fixtures on this glibc and on Debian 13's 2.41, see [`glibc`].
//! - `demo`: bootstrap, then `cargo memleak test` on the bundled fixture workspace.
//! - `bench`: bootstrap, then probe costs, traced and untraced side by side.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod corpus;
mod ebpf;
mod fresh;
mod glibc;
mod install;
mod toolchain;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Bootstrap,
    /// Bootstrap, then run every test, then the corpus; extra arguments go to `cargo test`.
    Test {
        /// Leave out the corpus (`cargo xtask corpus`).
        #[arg(long)]
        no_corpus: bool,
        /// Only bootstrap and the workspace's own tests (`cargo test`): what to run between
        /// commits. CI runs everything.
        #[arg(long)]
        quick: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bootstrap, then `cargo memleak test` on published crates' own test suites, each test
    /// compared with a plain `cargo test`: fails on any false failure.
    Corpus {
        /// Only this crate (repeatable).
        #[arg(long = "crate", value_name = "NAME")]
        crates: Vec<String>,
        /// Tests at once [default: the number of CPUs].
        #[arg(short, long)]
        jobs: Option<usize>,
    },
    /// Bootstrap, then build the eBPF object from source and write it to
    /// cargo-memleak/ebpf/ (the object stable-only builds ship with).
    Ebpf {
        /// Only check that the committed object is what the source builds.
        #[arg(long)]
        check: bool,
    },
    /// Install cargo-memleak from a clean clone with stable Rust alone (no nightly, no
    /// bpf-linker) and trace a program with it.
    InstallCheck,
    /// Bootstrap, then run the README's two commands from a clean clone on a machine that has
    /// only rustup and an older stable, with auto-install off.
    FreshCheck,
    /// Bootstrap, then run the fixtures under `cargo memleak exec` on this glibc and in a
    /// Debian 13 root (glibc 2.41, made once with debootstrap): the verdicts must match.
    Glibc,
    /// Bootstrap, then trace the bundled `leaky` fixture with `cargo memleak run`.
    Demo,
    /// Bootstrap, then measure probe costs, traced and untraced, side by side.
    Bench {
        /// malloc+free pairs per measurement.
        #[arg(long, default_value_t = 200_000)]
        pairs: u64,
        /// Repetitions of each measurement (the median is shown).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only this part of the bench.
        #[arg(long, value_enum)]
        only: Option<BenchPart>,
    },
}

/// A part of `cargo xtask bench` that can run alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchPart {
    /// `--combined-only` against per-allocation records.
    Combined,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    toolchain::enter()?;
    match cli.task {
        Task::Bootstrap => bootstrap(),
        Task::Test {
            no_corpus,
            quick,
            args,
        } => {
            let mut steps = Steps::default();
            steps.time("bootstrap", bootstrap)?;
            if std::env::var_os(fresh::STOP_AFTER_BOOTSTRAP).is_some() {
                println!(
                    "xtask test: bootstrapped; stopping here ({} is set)",
                    fresh::STOP_AFTER_BOOTSTRAP
                );
                return Ok(());
            }
            if !quick {
                steps.time("the shipped eBPF object", || ebpf::run(true))?;
                steps.time("install-check", install::check)?;
                steps.time("fresh-check", fresh::check)?;
                steps.time("glibc", || {
                    glibc::check(&workspace_root().join("target/debug/cargo-memleak"))
                })?;
            }
            steps.time("cargo test", || {
                run_tests(
                    cargo()
                        .arg("test")
                        .args(&args)
                        .current_dir(workspace_root()),
                )
            })?;
            if !no_corpus && !quick {
                steps.time("corpus", || {
                    run_corpus(corpus::Options {
                        crates: Vec::new(),
                        jobs: default_jobs(),
                    })
                })?;
            }
            steps.print();
            Ok(())
        }
        Task::Corpus { crates, jobs } => {
            bootstrap()?;
            run_corpus(corpus::Options {
                crates,
                jobs: jobs.unwrap_or_else(default_jobs),
            })
        }
        Task::Ebpf { check } => {
            bootstrap()?;
            ebpf::run(check)
        }
        Task::InstallCheck => install::check(),
        Task::FreshCheck => {
            bootstrap()?;
            fresh::check()
        }
        Task::Glibc => {
            bootstrap()?;
            run(
                cargo()
                    .args(["build", "--quiet", "--package", "cargo-memleak"])
                    .current_dir(workspace_root()),
                "cargo build -p cargo-memleak",
            )?;
            glibc::check(&workspace_root().join("target/debug/cargo-memleak"))
        }
        Task::Demo => {
            bootstrap()?;
            let root = workspace_root();
            let mut demo = cargo();
            demo.args([
                "run",
                "--quiet",
                "--package",
                "cargo-memleak",
                "--",
                "memleak",
                "test",
            ])
            .arg("--manifest-path")
            .arg(root.join("fixtures/workspace/Cargo.toml"))
            .args(["--package", "alpha"])
            .current_dir(&root);
            let status = demo
                .status()
                .context("cargo memleak test on fixtures/workspace: could not start")?;
            // The fixture's leaky tests have no budget: failing them is the demo.
            ensure!(
                status.code() == Some(100),
                "cargo memleak test on fixtures/workspace: expected exit 100 (three leaky \
                 tests fail the gate), got {status}"
            );
            println!("xtask demo: the three leaking tests failed the leak gate, as they should");
            Ok(())
        }
        Task::Bench { pairs, runs, only } => {
            bootstrap()?;
            bench(pairs, runs, only)
        }
    }
}

/// The steps of `cargo xtask test` and how long each took, printed at the end so that a log
/// says where the time went.
#[derive(Default)]
struct Steps(Vec<(&'static str, Duration)>);

impl Steps {
    fn time(&mut self, name: &'static str, step: impl FnOnce() -> Result<()>) -> Result<()> {
        let start = Instant::now();
        let result = step();
        self.0.push((name, start.elapsed()));
        if result.is_err() {
            self.print();
        }
        result
    }

    fn print(&self) {
        let total: Duration = self.0.iter().map(|(_, took)| *took).sum();
        let steps: Vec<String> = self
            .0
            .iter()
            .map(|(name, took)| format!("{name} {:.0} s", took.as_secs_f64()))
            .collect();
        println!(
            "xtask test: {:.0} s in all: {}",
            total.as_secs_f64(),
            steps.join(", ")
        );
    }
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Builds cargo-memleak (the checkout's, as `cargo memleak` runs it) and runs the corpus.
fn run_corpus(options: corpus::Options) -> Result<()> {
    let root = workspace_root();
    ensure!(
        nix_is_root(),
        "the corpus traces real tests: it needs root (BPF, uprobes, ptrace)"
    );
    run(
        cargo()
            .args(["build", "--quiet", "--package", "cargo-memleak"])
            .current_dir(&root),
        "cargo build -p cargo-memleak",
    )?;
    corpus::run(&root, &root.join("target/debug/cargo-memleak"), &options)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Cargo (rustup's proxy: `RUSTUP_TOOLCHAIN` names the workspace's toolchain, see
/// [`toolchain::enter`]), with /dev/null for stdin: nothing here is interactive, and CI runs
/// without one. sudo's variables are dropped: under them cargo-memleak would run the tests'
/// crates as the invoking user (tests/tests/privileges.rs sets them where that is the point).
fn cargo() -> Command {
    let mut cargo = Command::new("cargo");
    cargo.stdin(std::process::Stdio::null());
    for var in ["SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND"] {
        cargo.env_remove(var);
    }
    cargo
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{what}: could not start {command:?}"))?;
    ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// Runs `cargo test`, passing its output through, and closes with the totals over every test
/// binary (cargo's own last line is often an empty doc-test run). A failed test's captured
/// output may hold a whole test run of its own (`running N tests` … `test result:`): runs are
/// counted by nesting, so only each binary's own result line adds up.
fn run_tests(command: &mut Command) -> Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cargo test: could not start")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let mut depth = 0usize;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        let _ = std::io::stdout().flush();
        if line.starts_with("running ") && line.ends_with(" tests") || line == "running 1 test" {
            depth += 1;
        }
        if let Some(result) = line.strip_prefix("test result: ") {
            depth = depth.saturating_sub(1);
            if depth > 0 {
                continue;
            }
            let count = |label: &str| -> u64 {
                result
                    .split(['.', ';'])
                    .find_map(|part| part.trim().strip_suffix(label)?.trim().parse().ok())
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
            ignored += count("ignored");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("xtask: {passed} passed, {failed} failed, {ignored} skipped");
    ensure!(status.success(), "cargo test failed ({status})");
    ensure!(passed > 0, "cargo test ran no test");
    Ok(())
}

fn output(command: &mut Command, what: &str) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("{what}: could not start {command:?}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn bootstrap() -> Result<()> {
    // The workspace's own toolchain was installed by `toolchain::enter`, before any task.
    step("the eBPF nightly with rust-src", || {
        toolchain::install(&toolchain::ebpf(&workspace_root())?)
    })?;
    step("bpf-linker", ensure_bpf_linker)?;
    step("Debian packages", || {
        // valgrind: the classification tests compare with memcheck; libcap2-bin (setcap): the
        // privilege tests; debootstrap: the second glibc's root.
        ensure_debian_packages(&["gcc", "libc6-dev", "valgrind", "libcap2-bin", "debootstrap"])
    })?;
    Ok(())
}

fn step(name: &str, action: impl FnOnce() -> Result<()>) -> Result<()> {
    action().with_context(|| format!("bootstrap step `{name}` failed"))
}

/// bpf-linker must be built against the LLVM the eBPF nightly uses. Its build finds LLVM
/// through LLVM_PREFIX; nightly ships only `lib/libLLVM.so.<ver>-rust-<ver>-nightly`, so a
/// prefix with symlinks (under both names: the linker needs `libLLVM.so`, the binary's RUNPATH
/// the full name) stands in for an LLVM install. A bpf-linker linked against another nightly's
/// LLVM is rebuilt.
fn ensure_bpf_linker() -> Result<()> {
    let nightly = toolchain::ebpf(&workspace_root())?.channel;
    let plus = format!("+{nightly}");
    let version = output(
        Command::new("rustc").args([plus.as_str(), "-vV"]),
        "rustc -vV (eBPF nightly)",
    )?;
    let llvm_major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .with_context(|| format!("`rustc +{nightly} -vV` reports no LLVM version"))?
        .to_owned();
    let sysroot = output(
        Command::new("rustc").args([plus.as_str(), "--print", "sysroot"]),
        "rustc --print sysroot (eBPF nightly)",
    )?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let library = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let library_name = library
        .file_name()
        .context("library has a name")?
        .to_string_lossy()
        .into_owned();
    if bpf_linker_links(&library_name) {
        return Ok(());
    }

    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join("bpf-linker-llvm").join(&library_name);
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", library_name.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&library, &link)
            .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker against {nightly}'s LLVM {llvm_major} (about 80 s, once per \
         machine)"
    );
    run(
        cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix),
        "cargo install bpf-linker",
    )?;
    ensure!(
        bpf_linker_links(&library_name),
        "bpf-linker was installed but does not run against {library_name}; is ~/.cargo/bin on \
         PATH?"
    );
    Ok(())
}

/// Whether the bpf-linker on PATH runs and loads `library` (a libLLVM file name).
fn bpf_linker_links(library: &str) -> bool {
    let Ok(path) = which_bpf_linker() else {
        return false;
    };
    let runs = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    runs && Command::new("ldd")
        .arg(&path)
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(library))
}

fn which_bpf_linker() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
        .context("bpf-linker is not on PATH")
}

fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
                })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(
        Command::new("apt-get").arg("update").arg("-q"),
        "apt-get update",
    )?;
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

/// Median of `runs` measurements.
fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

fn bench(pairs: u64, runs: usize, only: Option<BenchPart>) -> Result<()> {
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
    if only == Some(BenchPart::Combined) {
        return bench_combined(&memleak, &workload, &live, pairs, runs);
    }

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
    let mut short_untraced = Vec::new();
    let mut short_traced = Vec::new();
    let mut phase_runs: Vec<Vec<(String, f64)>> = Vec::new();
    for _ in 0..runs {
        untraced.push(ns_per_pair(false)?);
        traced.push(ns_per_pair(true)?);
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
    let (untraced, traced) = (median(untraced), median(traced));
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
    let baseline = std::env::temp_dir().join(format!("memleak-bench-{}.json", std::process::id()));
    std::fs::write(&baseline, "{ \"version\": 1, \"tests\": {} }\n")
        .context("writing the bench's empty baseline")?;
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

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
