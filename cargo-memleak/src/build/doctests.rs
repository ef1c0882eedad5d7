//! Doc tests: compiled by rustdoc at test time, so they are collected from a `cargo test --doc`
//! run, then run traced like any test.
//!
//! Cargo hands `target.<triple>.runner` to rustdoc (`--test-runtool`), which starts it with the
//! path of each doc test binary it compiled, in the doc test's directory and environment. Our
//! runner is this executable again ([`COLLECT_ARGUMENT`]): it asks the collecting run over a
//! socket where to put the binary, copies it there with its directory and environment, and
//! exits 0 without running it. rustdoc compiles them all at once; each binary is named by the
//! function rustdoc wraps a doc test's code in (`_doctest_main_src_lib_rs_42_0`: its file and
//! line). When one cannot be named so (a doc test with its own `main`), the collection runs
//! again one doc test at a time (`--test-threads=1`): rustdoc then prints `test NAME ... `
//! before each, so when a runner connects, the collecting run reads what rustdoc printed so
//! far and knows which doc test it is. rustdoc's verdicts then
//! say the rest: a collected test that failed is `should_panic` (it "succeeded"); one that
//! failed without being collected did not compile; `no_run` and `compile_fail` tests keep
//! rustdoc's verdict.
//!
//! Doc tests merged into one binary (edition 2024) come as one runner call before rustdoc's
//! own tests. That binary runs its test number N alone when `RUSTDOC_DOCTEST_RUN_NB_TEST=N` is
//! set, and runs all of them (spawning `RUSTDOC_DOCTEST_BIN_PATH` for each) otherwise; with
//! this executable as that path in [`PROBE_VAR`] mode, it prints each test's number and fails,
//! so one probe run of the binary maps every name to its number.
//!
//! Invariants: a doc test's binary id is `<package>::doc-tests`, its name the one `cargo test`
//! prints; every doc test rustdoc reports is collected, kept with rustdoc's verdict, or an
//! error of the run; nothing of the collected binaries is run before the traced run.

use std::{
    ffi::OsString,
    io::{ErrorKind, Read as _, Write as _},
    os::{
        fd::{AsFd as _, OwnedFd},
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

use cargo_metadata::Metadata;
use serde::{Deserialize, Serialize};

use super::{BuildOptions, Executable, Harness, TestSelection};
use crate::{
    error::{Error, Result},
    user::{self, RunAs},
};

/// The argument rustdoc starts this executable with, as cargo's runner, for each doc test.
pub const COLLECT_ARGUMENT: &str = "--memleak-collect-doctest";
/// The abstract socket a collecting runner asks, in its environment.
const SOCKET_VAR: &str = "CARGO_MEMLEAK_DOCTEST_SOCKET";
/// Set when a merged doc test binary is probed for its tests' numbers.
pub const PROBE_VAR: &str = "CARGO_MEMLEAK_DOCTEST_PROBE";
/// What a probed test prints.
const INDEX_PREFIX: &str = "memleak-doctest-index: ";
/// The variable merged doc tests are chosen by.
pub const RUN_NB_TEST: &str = "RUSTDOC_DOCTEST_RUN_NB_TEST";
/// The target part of a package's doc tests' binary id.
pub const DOC_TESTS: &str = "doc-tests";

/// The binary id of a package's doc tests.
pub fn binary_id(package: &str) -> String {
    format!("{package}::{DOC_TESTS}")
}

/// One doc test, as it is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocTest {
    /// As `cargo test` prints it: `src/lib.rs - Bytes::slice (line 42)`.
    pub name: String,
    /// Its budget's key in the baseline (see [`budget_keys`]).
    pub key: String,
    pub run: DocRun,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocRun {
    /// Compiled on its own: the binary is the test, run without arguments.
    Alone { should_panic: bool },
    /// Merged (edition 2024): the binary runs it alone with `RUSTDOC_DOCTEST_RUN_NB_TEST`.
    Merged { index: usize, should_panic: bool },
    /// Not run: rustdoc's verdict stands (`no_run` and `compile_fail` tests, and those that did
    /// not compile), with its text when it failed.
    Rustdoc { passed: bool, text: String },
    /// `ignore`: rustdoc compiles nothing.
    Ignored,
}

impl DocRun {
    /// Whether a run that exited this way passed, as rustdoc judges it.
    pub fn passed(&self, success: bool) -> bool {
        match self {
            DocRun::Alone { should_panic } | DocRun::Merged { should_panic, .. } => {
                success != *should_panic
            }
            DocRun::Rustdoc { passed, .. } => *passed,
            DocRun::Ignored => false,
        }
    }
}

/// What a collecting runner writes beside the binary it copied.
#[derive(Serialize, Deserialize)]
struct Collected {
    cwd: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The runner's side (rustdoc started us with a doc test's binary): copy it where the
/// collecting run says, with what it needs to run, and exit 0 without running it.
pub fn serve_collect(args: &[OsString]) -> ExitCode {
    match collect_one(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cargo-memleak: collecting a doc test: {err}");
            ExitCode::FAILURE
        }
    }
}

fn collect_one(args: &[OsString]) -> std::io::Result<()> {
    let other = |text: &str| std::io::Error::other(text.to_owned());
    let binary = args.get(2).ok_or_else(|| other("no binary given"))?;
    let name = std::env::var(SOCKET_VAR).map_err(|_| other("not started by cargo memleak"))?;
    let mut stream = UnixStream::connect_addr(&SocketAddr::from_abstract_name(name)?)?;
    let mut dest = String::new();
    stream.read_to_string(&mut dest)?;
    let dest = PathBuf::from(dest.trim_end());
    std::fs::create_dir_all(&dest)?;
    std::fs::copy(binary, dest.join("rust_out"))?;
    // A merged binary's sources (its frames' files), which rustdoc deletes when it ends.
    if let Some(dir) = Path::new(binary).parent() {
        for entry in std::fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|extension| extension == "rs") {
                std::fs::copy(&path, dest.join(entry.file_name()))?;
            }
        }
    }
    let collected = Collected {
        cwd: std::env::current_dir()?,
        args: args[3..]
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect(),
        env: std::env::vars()
            .filter(|(name, _)| name != SOCKET_VAR)
            .collect(),
    };
    // Written last: its presence says the copy is whole.
    std::fs::write(
        dest.join("run.json"),
        serde_json::to_vec(&collected).map_err(std::io::Error::other)?,
    )
}

/// The probe's side: a merged doc test binary started us for its test number N.
pub fn serve_probe() -> ExitCode {
    let index = std::env::var(RUN_NB_TEST).unwrap_or_default();
    println!("{INDEX_PREFIX}{index}");
    ExitCode::FAILURE
}

/// Builds and collects the doc tests `selection` runs, as `run_as`.
pub fn collect(
    options: &BuildOptions,
    metadata: &Metadata,
    selection: &TestSelection,
    run_as: Option<&RunAs>,
) -> Result<Vec<Executable>> {
    // As `cargo test`, which runs no doc tests where no library has them.
    let documented = metadata
        .workspace_packages()
        .iter()
        .any(|package| package.targets.iter().any(|target| target.doctest));
    if !documented && !selection.doc {
        return Ok(Vec::new());
    }
    let root = run_directory(&options.target_directory(metadata).join("doctests"));
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        context: "finding cargo-memleak's own executable".into(),
        source,
    })?;
    let socket = format!("cargo-memleak-doctests-{}", std::process::id());
    let listener = SocketAddr::from_abstract_name(socket.as_bytes())
        .and_then(|address| UnixListener::bind_addr(&address))
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|source| Error::Io {
            context: "listening for rustdoc's doc tests".into(),
            source,
        })?;
    let rustdoc = Rustdoc {
        options,
        metadata,
        selection,
        run_as,
        root: &root,
        exe: &exe,
        listener: &listener,
        socket: &socket,
    };
    // All at once first: each doc test is named by the function rustdoc wraps it in. When one
    // cannot be (its own `main`, inlined, two on one line), again one at a time, named by
    // what rustdoc printed before it.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut session = rustdoc.run(threads)?;
    if threads > 1 && !session.named_by_symbols() {
        session = rustdoc.run(1)?;
    }
    if !session.success
        && !selection.doc
        && session.text.contains("error: no library targets found")
    {
        // A package without a library, chosen by default: `cargo test` tests none of its.
        return Ok(Vec::new());
    }
    let success = session.success;
    session.finish(metadata, success, &exe)
}

/// This run's directory of collected doc tests, `doctests/run-<pid>`: runs at once on one
/// target directory (a terminal and an editor) keep apart. Those of runs that have ended go.
fn run_directory(doctests: &Path) -> PathBuf {
    let own = format!("run-{}", std::process::id());
    for entry in std::fs::read_dir(doctests).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let running = name
            .strip_prefix("run-")
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if name != own && !running {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    doctests.join(own)
}

/// What one `cargo test --doc` needs.
struct Rustdoc<'a> {
    options: &'a BuildOptions,
    metadata: &'a Metadata,
    selection: &'a TestSelection,
    run_as: Option<&'a RunAs>,
    root: &'a Path,
    exe: &'a Path,
    listener: &'a UnixListener,
    socket: &'a str,
}

impl Rustdoc<'_> {
    /// `cargo test --doc` with this executable as rustdoc's runner, `threads` doc tests at once.
    fn run(&self, threads: usize) -> Result<Session> {
        let _ = std::fs::remove_dir_all(self.root);
        std::fs::create_dir_all(self.root).map_err(|source| Error::Io {
            context: format!("creating {}", self.root.display()),
            source,
        })?;
        // The target dir is the user's (cargo made it); these directories are too.
        if let Some(parent) = self.root.parent() {
            let _ = user::give(parent, self.run_as);
        }
        let _ = user::give(self.root, self.run_as);
        let runner =
            serde_json::to_string(&[self.exe.to_string_lossy().as_ref(), COLLECT_ARGUMENT])
                .unwrap_or_default();
        let host = host_triple(self.run_as)?;
        let mut args = self.selection.packages();
        args.extend(["--doc".to_owned(), "--no-fail-fast".to_owned()]);
        args.extend([
            "--config".to_owned(),
            format!("target.{host}.runner={runner}"),
        ]);
        args.extend([
            "--".to_owned(),
            format!("--test-threads={threads}"),
            "--color".to_owned(),
            "never".to_owned(),
        ]);
        let mut command =
            self.options
                .cargo_command(self.metadata, &["test"], &args, false, self.run_as);
        rustdoc_flags(&mut command, self.options.optimized());
        command.env(SOCKET_VAR, self.socket);
        let (reader, writer) = nix::unistd::pipe().map_err(|err| Error::Io {
            context: "making a pipe for rustdoc".into(),
            source: err.into(),
        })?;
        let duplicate = writer.try_clone().map_err(|source| Error::Io {
            context: "making a pipe for rustdoc".into(),
            source,
        })?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(duplicate));
        let mut child = command.spawn().map_err(|source| Error::Io {
            context: "running cargo test --doc".into(),
            source,
        })?;
        // The write ends are the child's now: the pipe ends when it does.
        drop(command);
        let mut session = Session::new(self.root, threads == 1);
        let read = session.serve(reader, self.listener);
        let status = child.wait();
        read.map_err(|source| Error::Io {
            context: "reading cargo test --doc".into(),
            source,
        })?;
        session.success = status
            .map_err(|source| Error::Io {
                context: "waiting for cargo test --doc".into(),
                source,
            })?
            .success();
        Ok(session)
    }
}

/// The host's target triple, whose runner doc tests take.
fn host_triple(run_as: Option<&RunAs>) -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut command = Command::new(rustc);
    command.arg("-vV");
    user::apply(&mut command, run_as);
    let output = command.output().map_err(|source| Error::Io {
        context: "running rustc -vV".into(),
        source,
    })?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| Error::DocTests("rustc -vV names no host".into()))
}

/// Frame pointers and debuginfo for the doc tests rustdoc compiles (which it builds without
/// any), around the user's RUSTDOCFLAGS: full debuginfo as in the dev profile, line tables
/// for an optimized one, before the user's flags so that their choice wins.
fn rustdoc_flags(command: &mut Command, optimized: bool) {
    const SEPARATOR: char = '\x1f';
    let debuginfo = if optimized { "line-tables-only" } else { "2" };
    let mut flags = vec![format!("-Cdebuginfo={debuginfo}")];
    match std::env::var("CARGO_ENCODED_RUSTDOCFLAGS") {
        Ok(encoded) if !encoded.is_empty() => {
            flags.extend(encoded.split(SEPARATOR).map(str::to_owned));
        }
        _ => flags.extend(
            std::env::var("RUSTDOCFLAGS")
                .map(|flags| flags.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_else(|_| Vec::<String>::new()),
        ),
    }
    flags.push("-Cforce-frame-pointers=yes".into());
    command.env(
        "CARGO_ENCODED_RUSTDOCFLAGS",
        flags.join(&SEPARATOR.to_string()),
    );
    command.env_remove("RUSTDOCFLAGS");
}

type Environment = Vec<(OsString, OsString)>;

/// A runner's call, as matched to what rustdoc had printed.
struct Call {
    /// The crate whose doc tests were running (`Doc-tests NAME`).
    krate: String,
    /// The doc test rustdoc was running, if it was one of its own (none: a merged binary).
    test: Option<String>,
    dir: PathBuf,
}

/// One `cargo test --doc` being collected: its output so far and the runners' calls.
struct Session {
    root: PathBuf,
    /// One doc test at a time: a runner that calls is the one rustdoc announced last.
    serial: bool,
    text: String,
    calls: Vec<Call>,
    /// cargo's exit status was success.
    success: bool,
}

impl Session {
    fn new(root: &Path, serial: bool) -> Self {
        Self {
            root: root.to_path_buf(),
            serial,
            text: String::new(),
            calls: Vec::new(),
            success: false,
        }
    }

    /// Names the calls of doc tests compiled on their own by the function rustdoc wrapped each
    /// in (`_doctest_main_src_lib_rs_42_0`: its file and line), and a crate's one call left
    /// unnamed (a doc test with a `main` of its own) by the one doc test left that ran; false
    /// when a call cannot be named so, or not uniquely.
    fn named_by_symbols(&mut self) -> bool {
        let sections = sections(&self.text);
        let mut taken: Vec<(String, String)> = Vec::new();
        let mut unnamed: Vec<usize> = Vec::new();
        // Each binary's symbols, read once.
        let compiled: Vec<Compiled> = self
            .calls
            .iter()
            .map(|call| Compiled::of(&call.dir.join("rust_out")))
            .collect();
        for (index, call) in self.calls.iter_mut().enumerate() {
            let (file, line) = match &compiled[index] {
                Compiled::Merged => continue,
                Compiled::OwnMain => {
                    unnamed.push(index);
                    continue;
                }
                Compiled::Wrapped { file, line } => (file.clone(), *line),
            };
            let Some((_, results)) = sections.iter().find(|(krate, _)| *krate == call.krate) else {
                return false;
            };
            let candidates: Vec<&TestLine> = results
                .iter()
                .filter(|result| {
                    source_of(&result.name).is_some_and(|(name_file, name_line)| {
                        mangled(name_file) == file && name_line == line
                    })
                })
                .collect();
            let [only] = candidates.as_slice() else {
                return false;
            };
            let key = (call.krate.clone(), only.name.clone());
            if taken.contains(&key) {
                return false;
            }
            taken.push(key);
            call.test = Some(only.name.clone());
        }
        for index in unnamed {
            let krate = self.calls[index].krate.clone();
            let unnamed_here = self
                .calls
                .iter()
                .zip(&compiled)
                .filter(|(call, compiled)| {
                    call.krate == krate && call.test.is_none() && **compiled != Compiled::Merged
                })
                .count();
            let Some((_, results)) = sections.iter().find(|(name, _)| *name == krate) else {
                return false;
            };
            // The doc tests that may have run on their own and were not named: one, for one
            // call (a doc test that did not compile would be one more, and makes it two).
            let left: Vec<&TestLine> = results
                .iter()
                .filter(|result| {
                    result.verdict != "ignored"
                        && matches!(result.mode, Mode::Run | Mode::ShouldPanic)
                        && !taken.contains(&(krate.clone(), result.name.clone()))
                })
                .collect();
            match (unnamed_here, left.as_slice()) {
                (1, [only]) => {
                    taken.push((krate.clone(), only.name.clone()));
                    self.calls[index].test = Some(only.name.clone());
                }
                _ => return false,
            }
        }
        true
    }

    /// Reads cargo's output until it ends, answering every runner that calls.
    fn serve(&mut self, reader: OwnedFd, listener: &UnixListener) -> std::io::Result<()> {
        use nix::{
            fcntl::{FcntlArg, OFlag, fcntl},
            poll::{PollFd, PollFlags, PollTimeout, poll},
        };
        fcntl(&reader, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let mut pipe = std::fs::File::from(reader);
        let mut open = true;
        while open {
            let (pipe_ready, call_ready) = {
                let mut fds = [
                    PollFd::new(pipe.as_fd(), PollFlags::POLLIN),
                    PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::from(100u16)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(err) => return Err(err.into()),
                }
                let ready = |fd: &PollFd| !fd.revents().unwrap_or(PollFlags::empty()).is_empty();
                (ready(&fds[0]), ready(&fds[1]))
            };
            if pipe_ready || call_ready {
                // Everything rustdoc printed before a runner called is read before it is
                // answered.
                open = self.drain(&mut pipe)?;
            }
            if call_ready {
                self.answer(listener)?;
            }
        }
        // A runner that called as the output ended.
        self.answer(listener)
    }

    /// Reads what the pipe holds; false once it has ended.
    fn drain(&mut self, pipe: &mut std::fs::File) -> std::io::Result<bool> {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => return Ok(false),
                Ok(read) => self
                    .text
                    .push_str(&String::from_utf8_lossy(&buffer[..read])),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    fn answer(&mut self, listener: &UnixListener) -> std::io::Result<()> {
        loop {
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            let (krate, test) = self.running();
            let test = test.filter(|_| self.serial);
            let dir = self.root.join(self.calls.len().to_string());
            stream.set_nonblocking(false)?;
            stream.set_write_timeout(Some(Duration::from_secs(10)))?;
            // A runner that went away is missed by the check for its files.
            let _ = stream.write_all(dir.to_string_lossy().as_bytes());
            self.calls.push(Call { krate, test, dir });
        }
    }

    /// The crate whose doc tests are running, and the doc test rustdoc started last if it
    /// has not finished (`test NAME ... ` without its result).
    fn running(&self) -> (String, Option<String>) {
        let krate = self
            .text
            .lines()
            .rev()
            .find_map(|line| line.trim_start().strip_prefix("Doc-tests "))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let last = self.text.rsplit('\n').next().unwrap_or_default();
        let test = last
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... "))
            .map(|name| split_mode(name).0.to_owned());
        (krate, test)
    }

    /// Turns the calls and rustdoc's verdicts into executables, one per package's doc test
    /// binary, and one with every test rustdoc's verdict stands for.
    fn finish(self, metadata: &Metadata, success: bool, exe: &Path) -> Result<Vec<Executable>> {
        let sections = sections(&self.text);
        let mut executables = Vec::new();
        let mut matched = 0;
        for (krate, results) in &sections {
            let Some(package) = package_of(metadata, krate) else {
                return Err(unexpected(
                    &self.text,
                    &format!("no package has crate {krate}"),
                ));
            };
            let id = binary_id(&package.name);
            let package_dir = package
                .manifest_path
                .parent()
                .map(|dir| dir.to_path_buf().into_std_path_buf())
                .unwrap_or_default();
            let mut verdicts = Vec::new();
            for result in results {
                let call = self
                    .calls
                    .iter()
                    .find(|call| call.krate == *krate && call.test.as_ref() == Some(&result.name));
                let run = match (call, result.verdict.as_str(), result.mode) {
                    (_, "ignored", _) => DocRun::Ignored,
                    (Some(call), verdict, _) => {
                        matched += 1;
                        let (path, cwd, env) = collected(call, &self.text)?;
                        let test = DocTest {
                            name: result.name.clone(),
                            key: String::new(),
                            run: DocRun::Alone {
                                // Collected tests "succeed": only a should_panic one fails.
                                should_panic: verdict != "ok",
                            },
                        };
                        executables.push(doc_executable(path, &id, cwd, env, vec![test]));
                        continue;
                    }
                    (None, verdict, mode) => {
                        if mode == Mode::Run && verdict == "ok" {
                            return Err(unexpected(
                                &self.text,
                                &format!("doc test `{}` ran without the runner", result.name),
                            ));
                        }
                        DocRun::Rustdoc {
                            passed: verdict == "ok",
                            text: failure_text(&self.text, &result.name),
                        }
                    }
                };
                verdicts.push(DocTest {
                    name: result.name.clone(),
                    key: String::new(),
                    run,
                });
            }
            for call in self
                .calls
                .iter()
                .filter(|call| call.krate == *krate && call.test.is_none())
            {
                matched += 1;
                let (path, cwd, env) = collected(call, &self.text)?;
                if Compiled::of(&path) != Compiled::Merged {
                    return Err(unexpected(
                        &self.text,
                        "rustdoc started a doc test that was not matched to a name",
                    ));
                }
                let tests = probe_merged(&path, &cwd, &env, exe)?;
                executables.push(doc_executable(path, &id, cwd, env, tests));
            }
            if !verdicts.is_empty() {
                // rustdoc's verdicts: nothing runs (no binary).
                executables.push(doc_executable(
                    PathBuf::new(),
                    &id,
                    package_dir,
                    Vec::new(),
                    verdicts,
                ));
            }
        }
        if matched != self.calls.len() {
            return Err(unexpected(
                &self.text,
                &format!(
                    "rustdoc started {} doc tests, {matched} of them matched to a name",
                    self.calls.len()
                ),
            ));
        }
        key_by_place(&mut executables);
        if !success && sections.is_empty() {
            return Err(Error::Build {
                detail: last_error(&self.text),
            });
        }
        Ok(executables)
    }
}

/// An executable of doc tests: a collected binary run in the directory and environment
/// rustdoc gave it.
fn doc_executable(
    path: PathBuf,
    id: &str,
    package_dir: PathBuf,
    env: Environment,
    tests: Vec<DocTest>,
) -> Executable {
    Executable {
        path,
        id: id.to_owned(),
        package_dir,
        env,
        bins: Vec::new(),
        harness: Harness::DocTests(tests),
    }
}

/// Gives every doc test its budget key, among the doc tests of its package.
fn key_by_place(executables: &mut [Executable]) {
    let mut ids: Vec<String> = executables
        .iter()
        .map(|executable| executable.id.clone())
        .collect();
    ids.dedup();
    for id in ids {
        let mut tests: Vec<&mut DocTest> = executables
            .iter_mut()
            .filter(|executable| executable.id == id)
            .filter_map(|executable| match &mut executable.harness {
                Harness::DocTests(tests) => Some(tests),
                Harness::Libtest => None,
            })
            .flatten()
            .collect();
        let names: Vec<String> = tests.iter().map(|test| test.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for (test, key) in tests.iter_mut().zip(budget_keys(&names)) {
            test.key = key;
        }
    }
}

/// A runner's files: its binary, directory and environment.
fn collected(call: &Call, text: &str) -> Result<(PathBuf, PathBuf, Environment)> {
    let run = std::fs::read(call.dir.join("run.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Collected>(&bytes).ok())
        .ok_or_else(|| {
            unexpected(
                text,
                &format!(
                    "the runner for {} left no files",
                    call.test.as_deref().unwrap_or("merged doc tests")
                ),
            )
        })?;
    let env = run
        .env
        .into_iter()
        .map(|(name, value)| (name.into(), value.into()))
        .collect();
    Ok((call.dir.join("rust_out"), run.cwd, env))
}

/// Every test of a merged doc test binary with its number: one run with this executable as
/// the binary each test is spawned as (see [`serve_probe`]), which fails every test but the
/// `should_panic` ones after printing its number; those, which print nothing, take the numbers
/// left in name order (rustdoc numbers them in name order, which the others confirm).
fn probe_merged(
    binary: &Path,
    cwd: &Path,
    env: &[(OsString, OsString)],
    exe: &Path,
) -> Result<Vec<DocTest>> {
    let output = Command::new(binary)
        .current_dir(cwd)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .env_remove(RUN_NB_TEST)
        .env("RUSTDOC_DOCTEST_BIN_PATH", exe)
        .env(PROBE_VAR, "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Io {
            context: format!("probing {}", binary.display()),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut results: Vec<TestLine> = text.lines().filter_map(TestLine::parse).collect();
    results.sort_by(|a, b| a.name.cmp(&b.name));
    let mut tests = Vec::new();
    for (position, result) in results.iter().enumerate() {
        let shown = failure_text(&text, &result.name);
        let printed = shown
            .lines()
            .find_map(|line| line.trim().strip_prefix(INDEX_PREFIX))
            .and_then(|index| index.parse::<usize>().ok());
        if let Some(index) = printed
            && index != position
        {
            return Err(Error::DocTests(format!(
                "the merged doc tests of {} are not numbered in name order ({} is {index}), \
                 so they cannot be run one at a time",
                binary.display(),
                result.name
            )));
        }
        let run = match (result.verdict.as_str(), result.mode) {
            ("ignored", _) => DocRun::Ignored,
            (_, Mode::Compile) => DocRun::Rustdoc {
                passed: true,
                text: String::new(),
            },
            (_, mode) => DocRun::Merged {
                index: position,
                should_panic: mode == Mode::ShouldPanic,
            },
        };
        tests.push(DocTest {
            name: result.name.clone(),
            key: String::new(),
            run,
        });
    }
    Ok(tests)
}

/// A file name as rustdoc puts it in a doc test's function name: every character but ASCII
/// letters and digits made `_`.
fn mangled(file: &str) -> String {
    file.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// What a doc test binary is, from its symbols.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Compiled {
    /// rustdoc's merged binary (edition 2024): its `main` is `doctest_runner_<edition>`'s.
    Merged,
    /// One doc test in the function rustdoc wraps its code in
    /// (`rust_out::main::_doctest_main_src_lib_rs_42_0`): its file (mangled) and line.
    Wrapped { file: String, line: usize },
    /// One doc test with a `main` of its own (or whose wrapper was inlined away, or that no
    /// wrapper names uniquely).
    OwnMain,
}

impl Compiled {
    fn of(binary: &Path) -> Self {
        use object::{Object as _, ObjectSymbol as _};
        let Ok(data) = std::fs::read(binary) else {
            return Compiled::OwnMain;
        };
        let Ok(file) = object::File::parse(&*data) else {
            return Compiled::OwnMain;
        };
        let mut found: Option<(String, usize)> = None;
        for symbol in file.symbols() {
            let Ok(name) = symbol.name() else {
                continue;
            };
            if name.contains("doctest_runner_20") {
                return Compiled::Merged;
            }
            if !name.contains("_doctest_main_") {
                continue;
            }
            let demangled = format!("{:#}", rustc_demangle::demangle(name));
            let Some(id) = demangled.split("::_doctest_main_").nth(1) else {
                continue;
            };
            let id = id.split("::").next().unwrap_or(id);
            let mut parts = id.rsplitn(3, '_');
            let (Some(_number), Some(line), Some(file)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(line) = line.parse::<usize>() else {
                continue;
            };
            match &found {
                None => found = Some((file.to_owned(), line)),
                Some(seen) if *seen == (file.to_owned(), line) => {}
                Some(_) => return Compiled::OwnMain,
            }
        }
        match found {
            Some((file, line)) => Compiled::Wrapped { file, line },
            None => Compiled::OwnMain,
        }
    }
}

/// The package whose library is `krate`.
fn package_of<'a>(metadata: &'a Metadata, krate: &str) -> Option<&'a cargo_metadata::Package> {
    metadata.packages.iter().find(|package| {
        package.targets.iter().any(|target| {
            target.doctest && target.name.replace('-', "_") == krate.replace('-', "_")
        })
    })
}

/// How libtest marks a test's name: ` - compile` (`no_run`), ` - compile fail`, ` - should
/// panic`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Run,
    Compile,
    CompileFail,
    ShouldPanic,
}

fn split_mode(name: &str) -> (&str, Mode) {
    for (suffix, mode) in [
        (" - compile fail", Mode::CompileFail),
        (" - compile", Mode::Compile),
        (" - should panic", Mode::ShouldPanic),
    ] {
        if let Some(name) = name.strip_suffix(suffix) {
            return (name, mode);
        }
    }
    (name, Mode::Run)
}

/// A libtest result line: `test NAME[ - MODE] ... VERDICT`.
struct TestLine {
    name: String,
    mode: Mode,
    verdict: String,
}

impl TestLine {
    fn parse(line: &str) -> Option<Self> {
        let (name, verdict) = line.strip_prefix("test ")?.rsplit_once(" ... ")?;
        let (name, mode) = split_mode(name);
        let verdict = verdict.trim();
        (!verdict.is_empty()).then(|| Self {
            name: name.to_owned(),
            mode,
            verdict: verdict.to_owned(),
        })
    }
}

/// Each `Doc-tests CRATE` section's result lines.
fn sections(text: &str) -> Vec<(String, Vec<TestLine>)> {
    let mut sections: Vec<(String, Vec<TestLine>)> = Vec::new();
    for line in text.lines() {
        if let Some(krate) = line.trim_start().strip_prefix("Doc-tests ") {
            sections.push((krate.trim().to_owned(), Vec::new()));
        } else if let Some(result) = TestLine::parse(line)
            && let Some((_, results)) = sections.last_mut()
        {
            results.push(result);
        }
    }
    sections
}

/// What libtest printed under `---- NAME stdout ----`.
fn failure_text(text: &str, name: &str) -> String {
    let header = format!("---- {name} stdout ----");
    let Some(start) = text.find(&header) else {
        return String::new();
    };
    let body = &text[start + header.len()..];
    let end = ["\n---- ", "\nfailures:\n", "\nsuccesses:\n"]
        .iter()
        .filter_map(|marker| body.find(marker))
        .min()
        .unwrap_or(body.len());
    body[..end].trim().to_owned()
}

fn last_error(text: &str) -> String {
    text.lines()
        .find(|line| line.starts_with("error"))
        .map(|line| line.trim_start_matches("error: ").to_owned())
        .unwrap_or_else(|| "cargo test --doc failed".to_owned())
}

/// An output the collection cannot make sense of, with its tail.
fn unexpected(text: &str, what: &str) -> Error {
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Error::DocTests(format!(
        "{what}; cargo test --doc said:\n{}",
        tail.join("\n")
    ))
}

/// Puts the doc test's frames on the lines of its source. rustdoc compiles a doc test as a
/// program of its own, whose line numbers are the program's, not the documentation's: a doc
/// test on its own (edition 2021) has its source file's name with the program's lines; merged
/// ones (edition 2024) have the merged program's file, which [`collect`] kept. The program's
/// code is the doc test's, line for line, after a header; a frame's line is found in the
/// documentation by its text (the `n`-th line of that text in the doc test, as in the
/// program). A frame that cannot be placed keeps what the program said.
pub fn place_frames<'a>(
    frames: impl Iterator<Item = &'a mut crate::symbolize::Frame>,
    test: &DocTest,
    binary: &Path,
    package_dir: &Path,
) {
    let Some((file, fence)) = source_of(&test.name) else {
        return;
    };
    // rustdoc names the file as cargo gave it: from the package, or from the workspace.
    let Some((path, source)) = package_dir.ancestors().find_map(|dir| {
        let path = dir.join(file);
        std::fs::read_to_string(&path)
            .ok()
            .map(|source| (path, source))
    }) else {
        return;
    };
    let doc = doc_lines(&source, fence);
    let merged = match test.run {
        DocRun::Merged { index, .. } => merged_program(binary, index),
        _ => None,
    };
    let mut frames: Vec<&mut crate::symbolize::Frame> = frames.collect();
    // A doc test on its own: its wrapper (`rust_out::main`) calls it on the line after its
    // last, which gives where its first line is in the program.
    let wrapped = frames.iter().any(|frame| {
        frame
            .symbol
            .as_deref()
            .is_some_and(|symbol| symbol.starts_with("rust_out::main::_doctest_main_"))
    });
    let first = if merged.is_none() && wrapped {
        frames
            .iter()
            .find(|frame| frame.symbol.as_deref() == Some("rust_out::main"))
            .and_then(|frame| frame.line)
            .and_then(|call| (call as usize).checked_sub(doc.len()))
    } else {
        None
    };
    for frame in &mut frames {
        let (Some(symbol), Some(line)) = (frame.symbol.as_deref(), frame.line) else {
            continue;
        };
        let line = line as usize;
        let placed = match &merged {
            Some((path, program)) => frame
                .file
                .as_deref()
                .filter(|file| Path::new(file).file_name() == path.file_name())
                .and_then(|_| place_by_text(program, line, &doc)),
            None if symbol.starts_with("rust_out::main::")
                && frame
                    .file
                    .as_deref()
                    .is_some_and(|path| Path::new(path).ends_with(file)) =>
            {
                first
                    .and_then(|first| doc.get(line.checked_sub(first)?))
                    .map(|(number, _)| *number)
            }
            None => None,
        };
        // The wrapper's call, on a line of the program only: the doc test's fence.
        let placed = placed.or_else(|| (wrapped && symbol == "rust_out::main").then_some(fence));
        if let Some(renamed) = stable_symbol(symbol) {
            frame.symbol = Some(renamed);
        }
        if let Some(number) = placed {
            frame.file = Some(path.to_string_lossy().into_owned());
            frame.line = Some(number as u32);
        }
    }
}

/// The doc test's own functions under one name whatever its edition and place: rustdoc names
/// them after the doc test's line (`rust_out::main::_doctest_main_src_lib_rs_15_0`) or number
/// among the merged ones (`doctest_bundle_2024::__doctest_3::main`), which an edit elsewhere
/// changes; as `doctest::main`, a budget's stacks survive it.
fn stable_symbol(symbol: &str) -> Option<String> {
    if let Some(rest) = symbol.strip_prefix("rust_out::main::_doctest_main_") {
        let rest = rest.find("::").map_or("", |at| &rest[at..]);
        return Some(format!("doctest::main{rest}"));
    }
    for (prefix, name) in [
        ("doctest_bundle_20", "doctest"),
        ("doctest_runner_20", "doctest_runner"),
    ] {
        if let Some(rest) = symbol.strip_prefix(prefix)
            && let Some((_, rest)) = rest.split_once("::__doctest_")
        {
            let rest = rest.find("::").map_or("", |at| &rest[at..]);
            return Some(format!("{name}{rest}"));
        }
    }
    None
}

/// The key of a doc test's budget: its name with its place among its item's doc tests instead
/// of its line (`src/lib.rs - Bytes::slice (line 42)`, the second of `Bytes::slice`'s, is
/// `src/lib.rs - Bytes::slice (doc test 2)`), so that editing the file above it keeps it.
pub fn budget_keys(names: &[&str]) -> Vec<String> {
    let place = |name: &str| {
        let (item, line) = name.rsplit_once(" (line ")?;
        Some((
            item.to_owned(),
            line.strip_suffix(')')?.parse::<usize>().ok()?,
        ))
    };
    names
        .iter()
        .map(|name| {
            let Some((item, line)) = place(name) else {
                return (*name).to_owned();
            };
            let before = names
                .iter()
                .filter_map(|other| place(other))
                .filter(|(other, other_line)| *other == item && *other_line < line)
                .count();
            format!("{item} (doc test {})", before + 1)
        })
        .collect()
}

/// `src/lib.rs - Bytes::slice (line 42)`: the file and the fence's line.
fn source_of(name: &str) -> Option<(&str, usize)> {
    let (file, rest) = name.split_once(" - ")?;
    let line = rest.rsplit_once("(line ")?.1.strip_suffix(')')?;
    Some((file, line.parse().ok()?))
}

/// The doc test's code after the fence on line `fence`, as rustdoc takes it (`///`, `//!`
/// and a space removed, `# ` hidden lines shown), with each line's number, its blank first
/// and last lines left out as rustdoc trims them.
fn doc_lines(source: &str, fence: usize) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    for (index, line) in source.lines().enumerate().skip(fence) {
        let text = line.trim_start();
        let text = text
            .strip_prefix("///")
            .or_else(|| text.strip_prefix("//!"))
            .unwrap_or(text);
        let text = text.strip_prefix(' ').unwrap_or(text);
        if text.trim_start().starts_with("```") {
            break;
        }
        let text = match text.trim_start() {
            "#" => "",
            hidden if hidden.starts_with("# ") => &hidden[2..],
            _ => text,
        };
        lines.push((index + 1, text.to_owned()));
    }
    while lines.last().is_some_and(|(_, text)| text.trim().is_empty()) {
        lines.pop();
    }
    let blank = lines
        .iter()
        .take_while(|(_, text)| text.trim().is_empty())
        .count();
    lines.drain(..blank);
    lines
}

/// The merged program's file and its lines, for the doc test numbered `index`.
fn merged_program(binary: &Path, index: usize) -> Option<(PathBuf, Vec<(usize, String)>)> {
    let dir = binary.parent()?;
    let path = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("doctest_bundle_") && name.ends_with(".rs"))
        })?;
    let text = std::fs::read_to_string(&path).ok()?;
    let start = format!("pub mod __doctest_{index} {{");
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .skip_while(|(_, line)| line.trim() != start)
        .skip(1)
        .take_while(|(_, line)| !line.starts_with("pub mod __doctest_"))
        .map(|(number, line)| (number + 1, line.to_owned()))
        .collect();
    Some((path, lines))
}

/// The documentation's line for line `line` of the program: the same text, as many times
/// before it in the doc test as in the program.
fn place_by_text(
    program: &[(usize, String)],
    line: usize,
    doc: &[(usize, String)],
) -> Option<usize> {
    let position = program.iter().position(|(number, _)| *number == line)?;
    let text = program[position].1.trim();
    if text.is_empty() {
        return None;
    }
    let before = program[..position]
        .iter()
        .filter(|(_, other)| other.trim() == text)
        .count();
    doc.iter()
        .filter(|(_, other)| other.trim() == text)
        .nth(before)
        .map(|(number, _)| *number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines_give_name_mode_and_verdict() {
        let line = TestLine::parse("test src/lib.rs - add (line 8) - should panic ... ok").unwrap();
        assert_eq!(line.name, "src/lib.rs - add (line 8)");
        assert_eq!(line.mode, Mode::ShouldPanic);
        assert_eq!(line.verdict, "ok");
        let line =
            TestLine::parse("test src/lib.rs - add (line 16) - compile fail ... FAILED").unwrap();
        assert_eq!(line.mode, Mode::CompileFail);
        assert_eq!(line.verdict, "FAILED");
        assert!(TestLine::parse("test src/lib.rs - add (line 3) ... ").is_none());
        assert!(TestLine::parse("running 5 tests").is_none());
    }

    #[test]
    fn a_failure_text_ends_at_the_next_section() {
        let text = "failures:\n\n---- a (line 1) stdout ----\nTest executable failed.\n\nstdout:\nx\n\n\
                    ---- b (line 2) stdout ----\ny\n\nfailures:\n    a (line 1)\n";
        assert_eq!(
            failure_text(text, "a (line 1)"),
            "Test executable failed.\n\nstdout:\nx"
        );
        assert_eq!(failure_text(text, "b (line 2)"), "y");
        assert_eq!(failure_text(text, "c"), "");
    }

    #[test]
    fn a_doc_tests_lines_are_its_codes_with_their_numbers() {
        let source = "//! Crate.\n//!\n/// Adds.\n///\n/// ```\n///\n/// # use std::mem;\n/// let v = 1;\n/// #\n///\n/// ```\npub fn f() {}\n";
        assert_eq!(
            source_of("src/lib.rs - f (line 5)"),
            Some(("src/lib.rs", 5))
        );
        assert_eq!(
            source_of("src/lib.rs - (line 30)"),
            Some(("src/lib.rs", 30))
        );
        assert_eq!(
            doc_lines(source, 5),
            vec![
                (7, "use std::mem;".to_owned()),
                (8, "let v = 1;".to_owned()),
            ]
        );
        let doc = vec![
            (7, "a();".to_owned()),
            (8, "b();".to_owned()),
            (9, "a();".to_owned()),
        ];
        let program = vec![
            (12, "fn main()  {".to_owned()),
            (13, "a();".to_owned()),
            (14, "b();".to_owned()),
            (15, "a();".to_owned()),
        ];
        assert_eq!(place_by_text(&program, 13, &doc), Some(7));
        assert_eq!(place_by_text(&program, 15, &doc), Some(9));
        assert_eq!(place_by_text(&program, 12, &doc), None);
    }
}
