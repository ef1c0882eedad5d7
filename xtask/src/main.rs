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

use anyhow::{Context as _, Result, ensure};
use clap::{Parser, Subcommand};

mod bench;
mod corpus;
mod ebpf;
mod fresh;
mod glibc;
mod install;
mod stress;
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
        /// Tests at once [default: the number of CPUs; twice that with --stress].
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Instead: run each crate's traced suite ROUNDS times with the machine
        /// oversubscribed, and report every verdict that changes between rounds.
        #[arg(long, value_name = "ROUNDS", num_args = 0..=1, default_missing_value = "3")]
        stress: Option<usize>,
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
    /// A thousand tiny tests against cargo test and cargo nextest run, and a trivial test's
    /// time.
    Tiny,
    /// A test that runs `/bin/true` 200 times, its children followed or not.
    Spawns,
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
                        stress: None,
                    })
                })?;
            }
            steps.print();
            Ok(())
        }
        Task::Corpus {
            crates,
            jobs,
            stress,
        } => {
            bootstrap()?;
            run_corpus(corpus::Options {
                crates,
                // Oversubscribed under --stress.
                jobs: jobs.unwrap_or_else(|| default_jobs() * if stress.is_some() { 2 } else { 1 }),
                stress,
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
            bench::bench(pairs, runs, only)
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
        // privilege tests; debootstrap: the second glibc's root; bpftool: the bench's
        // per-program costs.
        ensure_debian_packages(&[
            "gcc",
            "libc6-dev",
            "valgrind",
            "libcap2-bin",
            "debootstrap",
            "bpftool",
        ])
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

pub(crate) fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
