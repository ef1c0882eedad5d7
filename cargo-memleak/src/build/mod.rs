//! Builds the user's targets the way `cargo build` would, plus frame pointers (so every user
//! frame shows up in stacks) and line tables, into a target dir of its own (so the user's
//! normal build cache stays valid).
//!
//! Invariants: cargo's diagnostics go to the user's terminal untouched; the executables come
//! from cargo's JSON messages, never from guessing paths; each runs with the environment
//! cargo would give it ([`environment`]).

pub mod doctests;
mod environment;

use std::{
    ffi::OsString,
    io::BufReader,
    path::PathBuf,
    process::{Command, Stdio},
};

use cargo_metadata::{Message, Metadata, MetadataCommand, TargetKind};

use self::environment::Environment;
use crate::{
    error::{Error, Result},
    user::{self, RunAs},
};

/// How to build, shared by `run` and `test`: manifest, features, profile, target dir, lock
/// flags, as cargo takes them.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Path to Cargo.toml.
    pub manifest_path: Option<PathBuf>,
    /// Space or comma separated list of features to activate.
    pub features: Vec<String>,
    /// Activate all available features.
    pub all_features: bool,
    /// Do not activate the `default` feature.
    pub no_default_features: bool,
    /// Build artifacts in release mode, with optimizations.
    pub release: bool,
    /// Build artifacts with the specified profile.
    pub profile: Option<String>,
    /// Directory for all generated artifacts [default: <cargo's target dir>/memleak].
    pub target_dir: Option<PathBuf>,
    /// Assert that `Cargo.lock` will remain unchanged.
    pub locked: bool,
    /// Equivalent to specifying both --locked and --offline.
    pub frozen: bool,
    /// Run without accessing the network.
    pub offline: bool,
}

/// `cargo run`'s selection: one package, one bin or example.
#[derive(Clone, Debug, Default)]
pub struct RunSelection {
    /// Package with the target to run.
    pub package: Option<String>,
    /// Name of the bin target to run.
    pub bin: Option<String>,
    /// Name of the example target to run.
    pub example: Option<String>,
}

/// `cargo test`'s selection of packages and targets.
#[derive(Clone, Debug, Default)]
pub struct TestSelection {
    /// Package to test (repeatable).
    pub package: Vec<String>,
    /// Test all packages in the workspace.
    pub workspace: bool,
    /// `--all-targets`.
    pub all_targets: bool,
    /// Exclude packages from the test (with --workspace).
    pub exclude: Vec<String>,
    /// Test only this package's library.
    pub lib: bool,
    /// Test all binaries.
    pub bins: bool,
    /// Test only the specified binary.
    pub bin: Vec<String>,
    /// Test all integration test targets.
    pub tests: bool,
    /// Test only the specified integration test target.
    pub test: Vec<String>,
    /// Test all examples.
    pub examples: bool,
    /// Test only the specified example.
    pub example: Vec<String>,
    /// `--doc`: test only the libraries' documentation.
    pub doc: bool,
}

impl TestSelection {
    /// Whether doc tests run, as cargo decides it: with `--doc`, or when no target is named.
    pub fn doc_tests(&self) -> bool {
        self.doc
            || !(self.all_targets
                || self.lib
                || self.bins
                || self.tests
                || self.examples
                || !self.bin.is_empty()
                || !self.test.is_empty()
                || !self.example.is_empty())
    }

    /// `--package`, `--workspace` and `--exclude`, as given.
    fn packages(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.workspace {
            args.push("--workspace".to_owned());
        }
        for (name, values) in [("--package", &self.package), ("--exclude", &self.exclude)] {
            for value in values {
                args.extend([name.to_owned(), value.clone()]);
            }
        }
        args
    }
}

/// A built executable and what `cargo run` would tell it about its package.
#[derive(Clone, Debug)]
pub struct Executable {
    pub path: PathBuf,
    /// nextest's binary id: `pkg` (library), `pkg::name` (integration test),
    /// `pkg::bin/name`, `pkg::example/name`, `pkg::bench/name`.
    pub id: String,
    /// The package's directory (where `cargo test` runs the binary).
    pub package_dir: PathBuf,
    /// The environment cargo gives it (see [`environment`]).
    pub env: Vec<(OsString, OsString)>,
    /// Its package's binaries, for a test.
    pub bins: Vec<PathBuf>,
    /// How its tests are listed and run.
    pub harness: Harness,
}

/// How an executable's tests are listed and run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Harness {
    /// libtest's (or a custom harness keeping its contract): `--list`, `--exact NAME`.
    #[default]
    Libtest,
    /// Doc tests collected from rustdoc ([`doctests`]), listed by it.
    DocTests(Vec<doctests::DocTest>),
}

/// What cargo built, and where the workspace is.
#[derive(Debug)]
pub struct Built {
    pub executables: Vec<Executable>,
    pub workspace_root: PathBuf,
}

/// One artifact from cargo's JSON messages.
struct Artifact {
    package_id: cargo_metadata::PackageId,
    target: cargo_metadata::Target,
    test: bool,
    path: PathBuf,
}

impl BuildOptions {
    /// `--locked`, `--frozen`, `--offline`, as given.
    fn lock_flags(&self) -> Vec<String> {
        [
            ("--locked", self.locked),
            ("--frozen", self.frozen),
            ("--offline", self.offline),
        ]
        .into_iter()
        .filter(|&(_, on)| on)
        .map(|(flag, _)| flag.to_owned())
        .collect()
    }

    /// `cargo metadata`, run as `run_as` (see [`crate::user`]).
    pub fn metadata(&self, run_as: Option<&RunAs>) -> Result<Metadata> {
        let mut command = MetadataCommand::new();
        command.no_deps();
        if let Some(path) = &self.manifest_path {
            command.manifest_path(path);
        }
        command.other_options(self.lock_flags());
        command.cargo_path(user::cargo(run_as));
        let mut cargo = command.cargo_command();
        user::apply(&mut cargo, run_as);
        let output = cargo.output().map_err(|err| Error::Metadata {
            stderr: format!("running cargo metadata: {err}"),
        })?;
        if !output.status.success() {
            return Err(Error::Metadata {
                stderr: diagnostic(&String::from_utf8_lossy(&output.stderr)),
            });
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json = stdout
            .lines()
            .find(|line| line.starts_with('{'))
            .unwrap_or_default();
        MetadataCommand::parse(json).map_err(|err| Error::Metadata {
            stderr: err.to_string(),
        })
    }

    /// The target directory of cargo-memleak's builds: `--target-dir`, else `memleak` in
    /// cargo's.
    pub(crate) fn target_directory(&self, metadata: &Metadata) -> PathBuf {
        self.target_dir.clone().unwrap_or_else(|| {
            metadata
                .target_directory
                .join("memleak")
                .into_std_path_buf()
        })
    }

    /// `cargo <subcommand> <selection>` with this build's flags, target dir and frame
    /// pointers, as `run_as`; `json` asks for cargo's JSON messages on stdout.
    pub(crate) fn cargo_command(
        &self,
        metadata: &Metadata,
        subcommand: &[&str],
        selection: &[String],
        json: bool,
        run_as: Option<&RunAs>,
    ) -> Command {
        let mut command = Command::new(user::cargo(run_as));
        user::apply(&mut command, run_as);
        command.args(subcommand);
        if json {
            command.arg("--message-format=json-render-diagnostics");
        }
        if let Some(path) = &self.manifest_path {
            command.arg("--manifest-path").arg(path);
        }
        command.args(self.lock_flags());
        command
            .arg("--target-dir")
            .arg(self.target_directory(metadata));
        command.args(selection);
        if !self.features.is_empty() {
            command.args(["--features", &self.features.join(",")]);
        }
        if self.all_features {
            command.arg("--all-features");
        }
        if self.no_default_features {
            command.arg("--no-default-features");
        }
        if self.release {
            command.arg("--release");
        }
        if let Some(profile) = &self.profile {
            command.args(["--profile", profile]);
        }
        instrument(&mut command, self.optimized());
        command
    }

    /// Whether the profile is release (which has no line tables by default).
    fn optimized(&self) -> bool {
        self.release || self.profile.as_deref() == Some("release")
    }

    /// Runs `cargo <subcommand> <selection>` with frame pointers and returns the executables
    /// it reported.
    fn cargo(
        &self,
        metadata: &Metadata,
        subcommand: &[&str],
        selection: &[String],
        run_as: Option<&RunAs>,
    ) -> Result<(Vec<Artifact>, Environment)> {
        let mut command = self.cargo_command(metadata, subcommand, selection, true, run_as);
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());

        let mut child = command.spawn().map_err(|source| Error::Io {
            context: format!("running cargo {}", subcommand.join(" ")),
            source,
        })?;
        let mut artifacts = Vec::new();
        let mut environment = Environment::new(run_as);
        if let Some(stdout) = child.stdout.take() {
            for message in Message::parse_stream(BufReader::new(stdout)) {
                match message {
                    Ok(Message::CompilerArtifact(artifact)) => {
                        if let Some(path) = artifact.executable {
                            artifacts.push(Artifact {
                                package_id: artifact.package_id,
                                target: artifact.target,
                                test: artifact.profile.test,
                                path: path.into_std_path_buf(),
                            });
                        }
                    }
                    Ok(Message::BuildScriptExecuted(script)) => environment.script(script),
                    _ => {}
                }
            }
        }
        let status = child.wait().map_err(|source| Error::Io {
            context: format!("waiting for cargo {}", subcommand.join(" ")),
            source,
        })?;
        if !status.success() {
            return Err(Error::Build {
                detail: String::new(),
            });
        }
        Ok((artifacts, environment))
    }

    /// Builds the binary `cargo run` would run, with frame pointers, as `run_as`.
    pub fn build_binary(&self, selection: &RunSelection, run_as: Option<&RunAs>) -> Result<Built> {
        let metadata = self.metadata(run_as)?;
        let mut args = Vec::new();
        if let Some(package) = &selection.package {
            args.extend(["--package".to_owned(), package.clone()]);
        }
        if let Some(bin) = &selection.bin {
            args.extend(["--bin".to_owned(), bin.clone()]);
        }
        if let Some(example) = &selection.example {
            args.extend(["--example".to_owned(), example.clone()]);
        }
        let (artifacts, environment) = self.cargo(&metadata, &["build"], &args, run_as)?;
        let mut executables: Vec<Artifact> = artifacts
            .into_iter()
            .filter(|artifact| {
                artifact
                    .target
                    .kind
                    .iter()
                    .any(|kind| matches!(kind, TargetKind::Bin | TargetKind::Example))
            })
            .collect();
        let chosen = match executables.len() {
            0 => {
                return Err(Error::Selection(
                    "a bin target must be available for `cargo memleak run`".into(),
                ));
            }
            1 => executables.remove(0),
            _ => {
                let default_run = metadata
                    .packages
                    .iter()
                    .filter_map(|package| package.default_run.clone())
                    .collect::<Vec<_>>();
                match executables
                    .iter()
                    .position(|artifact| default_run.contains(&artifact.target.name))
                {
                    Some(index) => executables.remove(index),
                    None => {
                        let names: Vec<_> = executables
                            .iter()
                            .map(|artifact| artifact.target.name.as_str())
                            .collect();
                        return Err(Error::Selection(format!(
                            "`cargo memleak run` could not determine which binary to run; use \
                             --bin to pick one of: {}",
                            names.join(", ")
                        )));
                    }
                }
            }
        };
        Ok(Built {
            executables: vec![executable(&metadata, &environment, chosen, Vec::new())],
            workspace_root: metadata.workspace_root.clone().into_std_path_buf(),
        })
    }

    /// Builds test targets like `cargo test --no-run`, with frame pointers, as `run_as`, in the
    /// workspace `metadata` describes.
    pub fn build_tests(
        &self,
        metadata: &Metadata,
        selection: &TestSelection,
        run_as: Option<&RunAs>,
    ) -> Result<Built> {
        let mut args = Vec::new();
        let mut flag = |name: &str, on: bool| {
            if on {
                args.push(name.to_owned());
            }
        };
        flag("--workspace", selection.workspace);
        flag("--all-targets", selection.all_targets);
        flag("--lib", selection.lib);
        flag("--bins", selection.bins);
        flag("--tests", selection.tests);
        flag("--examples", selection.examples);
        for (name, values) in [
            ("--package", &selection.package),
            ("--exclude", &selection.exclude),
            ("--bin", &selection.bin),
            ("--test", &selection.test),
            ("--example", &selection.example),
        ] {
            for value in values {
                args.extend([name.to_owned(), value.clone()]);
            }
        }
        let (artifacts, environment) =
            self.cargo(metadata, &["test", "--no-run"], &args, run_as)?;
        // The package's binaries (its integration tests find them through CARGO_BIN_EXE_<name>,
        // set when they are compiled): a test's children that run one are followed.
        let bins: Vec<(cargo_metadata::PackageId, String, PathBuf)> = artifacts
            .iter()
            .filter(|artifact| !artifact.test && artifact.target.kind.contains(&TargetKind::Bin))
            .map(|artifact| {
                let target = artifact.target.name.clone();
                (artifact.package_id.clone(), target, artifact.path.clone())
            })
            .collect();
        let mut executables: Vec<Executable> = artifacts
            .into_iter()
            .filter(|artifact| artifact.test)
            .map(|artifact| {
                let package_bins: Vec<(&String, &PathBuf)> = bins
                    .iter()
                    .filter(|(package, _, _)| *package == artifact.package_id)
                    .map(|(_, name, path)| (name, path))
                    .collect();
                let paths = package_bins
                    .iter()
                    .map(|(_, path)| (*path).clone())
                    .collect();
                let mut executable = executable(metadata, &environment, artifact, paths);
                // cargo test sets CARGO_BIN_EXE_<name> when it runs a test too, not only when
                // it compiles one.
                for (name, path) in package_bins {
                    executable
                        .env
                        .push((format!("CARGO_BIN_EXE_{name}").into(), path.clone().into()));
                }
                executable
            })
            .collect();
        executables.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Built {
            executables,
            workspace_root: metadata.workspace_root.clone().into_std_path_buf(),
        })
    }
}

/// An artifact with its binary id and the environment cargo gives it.
fn executable(
    metadata: &Metadata,
    environment: &Environment,
    artifact: Artifact,
    bins: Vec<PathBuf>,
) -> Executable {
    let package = metadata
        .packages
        .iter()
        .find(|package| package.id == artifact.package_id);
    let package_name = package
        .map(|package| package.name.to_string())
        .unwrap_or_else(|| artifact.target.name.clone());
    let kind = &artifact.target.kind;
    let id = if kind.iter().any(|kind| {
        matches!(
            kind,
            TargetKind::Lib
                | TargetKind::ProcMacro
                | TargetKind::RLib
                | TargetKind::DyLib
                | TargetKind::CDyLib
                | TargetKind::StaticLib
        )
    }) {
        package_name.clone()
    } else if kind.contains(&TargetKind::Test) {
        format!("{package_name}::{}", artifact.target.name)
    } else if kind.contains(&TargetKind::Example) {
        format!("{package_name}::example/{}", artifact.target.name)
    } else if kind.contains(&TargetKind::Bench) {
        format!("{package_name}::bench/{}", artifact.target.name)
    } else {
        format!("{package_name}::bin/{}", artifact.target.name)
    };
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut package_dir = PathBuf::from(".");
    if let Some(package) = package {
        if let Some(dir) = package.manifest_path.parent() {
            package_dir = dir.to_path_buf().into_std_path_buf();
        }
        env = environment.of(package, &artifact.path);
    }
    Executable {
        path: artifact.path,
        id,
        package_dir,
        bins,
        env,
        harness: Harness::Libtest,
    }
}

/// What cargo (or rustup in front of it) said went wrong, on one line: from its first
/// `error:` line (without that word: ours precedes it) up to a backtrace, if one follows; the
/// whole text when there is no such line.
fn diagnostic(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.trim().lines().collect();
    let first = lines
        .iter()
        .position(|line| line.starts_with("error"))
        .unwrap_or(0);
    let text = lines[first..]
        .iter()
        .take_while(|line| !line.starts_with("Stack backtrace:"))
        .map(|line| line.trim_end())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    text.strip_prefix("error: ")
        .map(str::to_owned)
        .unwrap_or(text)
}

/// Adds frame pointers to whatever rustflags the user already has, and line tables to release
/// builds (which have none by default) so frames carry file:line.
fn instrument(command: &mut Command, release: bool) {
    const SEPARATOR: char = '\x1f';
    let mut flags = match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(encoded) if !encoded.is_empty() => encoded.split(SEPARATOR).map(str::to_owned).collect(),
        _ => std::env::var("RUSTFLAGS")
            .map(|flags| flags.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_else(|_| Vec::<String>::new()),
    };
    flags.push("-Cforce-frame-pointers=yes".into());
    command.env(
        "CARGO_ENCODED_RUSTFLAGS",
        flags.join(&SEPARATOR.to_string()),
    );
    command.env_remove("RUSTFLAGS");
    if release && std::env::var_os("CARGO_PROFILE_RELEASE_DEBUG").is_none() {
        command.env("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only");
    }
}

#[cfg(test)]
mod tests {
    use super::diagnostic;

    #[test]
    fn a_diagnostic_is_cargos_error_without_the_backtrace() {
        let stderr = "error: toolchain '1.85-x86_64-unknown-linux-gnu' is not installed\n\
                      help: run `rustup toolchain install` to install it\n\n\
                      Stack backtrace:\n   0: anyhow::error::from\n  12: <unknown>\n";
        assert_eq!(
            diagnostic(stderr),
            "toolchain '1.85-x86_64-unknown-linux-gnu' is not installed; help: run \
             `rustup toolchain install` to install it"
        );
        assert_eq!(diagnostic("warning: x\nerror: y\n"), "y");
        assert_eq!(diagnostic("something odd"), "something odd");
    }
}
