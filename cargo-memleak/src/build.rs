//! Builds the user's targets the way `cargo build` would, plus frame pointers (so every user
//! frame shows up in stacks) and line tables, into a target dir of its own (so the user's
//! normal build cache stays valid).
//!
//! Invariants: cargo's diagnostics go to the user's terminal untouched; the executables come
//! from cargo's JSON messages, never from guessing paths.

use std::{
    ffi::OsString,
    io::BufReader,
    path::PathBuf,
    process::{Command, Stdio},
};

use cargo_metadata::{Message, Metadata, MetadataCommand, TargetKind};

use crate::error::{Error, Result};

/// Cargo's package and target selection, as `cargo run`/`cargo build` take it.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CargoOptions {
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH", help_heading = "Package selection")]
    pub manifest_path: Option<PathBuf>,
    /// Package to build.
    #[arg(short, long, value_name = "SPEC", help_heading = "Package selection")]
    pub package: Option<String>,
    /// Name of the bin target to run.
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Target selection",
        conflicts_with = "example"
    )]
    pub bin: Option<String>,
    /// Name of the example target to run.
    #[arg(long, value_name = "NAME", help_heading = "Target selection")]
    pub example: Option<String>,
    /// Space or comma separated list of features to activate.
    #[arg(
        short = 'F',
        long,
        value_name = "FEATURES",
        help_heading = "Feature selection"
    )]
    pub features: Vec<String>,
    /// Activate all available features.
    #[arg(long, help_heading = "Feature selection")]
    pub all_features: bool,
    /// Do not activate the `default` feature.
    #[arg(long, help_heading = "Feature selection")]
    pub no_default_features: bool,
    /// Build artifacts in release mode, with optimizations.
    #[arg(
        short,
        long,
        help_heading = "Compilation options",
        conflicts_with = "profile"
    )]
    pub release: bool,
    /// Build artifacts with the specified profile.
    #[arg(long, value_name = "NAME", help_heading = "Compilation options")]
    pub profile: Option<String>,
    /// Directory for all generated artifacts [default: <cargo's target dir>/memleak].
    #[arg(long, value_name = "DIR", help_heading = "Compilation options")]
    pub target_dir: Option<PathBuf>,
    /// Assert that `Cargo.lock` will remain unchanged.
    #[arg(long, help_heading = "Manifest options")]
    pub locked: bool,
    /// Equivalent to specifying both --locked and --offline.
    #[arg(long, help_heading = "Manifest options")]
    pub frozen: bool,
    /// Run without accessing the network.
    #[arg(long, help_heading = "Manifest options")]
    pub offline: bool,
}

/// A built executable and what `cargo run` would tell it about its package.
#[derive(Clone, Debug)]
pub struct Executable {
    pub path: PathBuf,
    /// Environment `cargo run` sets (CARGO_MANIFEST_DIR, CARGO_PKG_*).
    pub env: Vec<(OsString, OsString)>,
}

impl CargoOptions {
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

    fn metadata(&self) -> Result<Metadata> {
        let mut command = MetadataCommand::new();
        command.no_deps();
        if let Some(path) = &self.manifest_path {
            command.manifest_path(path);
        }
        command.other_options(self.lock_flags());
        command.exec().map_err(|err| Error::Metadata {
            stderr: match err {
                cargo_metadata::Error::CargoMetadata { stderr } => {
                    stderr.trim().lines().last().unwrap_or_default().to_string()
                }
                other => other.to_string(),
            },
        })
    }

    /// Builds the binary `cargo run` would run, with frame pointers.
    pub fn build_binary(&self) -> Result<Executable> {
        let metadata = self.metadata()?;
        let target_dir = self.target_dir.clone().unwrap_or_else(|| {
            metadata
                .target_directory
                .join("memleak")
                .into_std_path_buf()
        });

        let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        command.args(["build", "--message-format=json-render-diagnostics"]);
        if let Some(path) = &self.manifest_path {
            command.arg("--manifest-path").arg(path);
        }
        command.args(self.lock_flags());
        command.arg("--target-dir").arg(&target_dir);
        if let Some(package) = &self.package {
            command.args(["--package", package]);
        }
        if let Some(bin) = &self.bin {
            command.args(["--bin", bin]);
        }
        if let Some(example) = &self.example {
            command.args(["--example", example]);
        }
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
        instrument(
            &mut command,
            self.release || self.profile.as_deref() == Some("release"),
        );
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());

        let mut child = command.spawn().map_err(|source| Error::Io {
            context: "running cargo build".into(),
            source,
        })?;
        let mut executables = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            for message in Message::parse_stream(BufReader::new(stdout)) {
                let Ok(Message::CompilerArtifact(artifact)) = message else {
                    continue;
                };
                let runnable = artifact
                    .target
                    .kind
                    .iter()
                    .any(|kind| matches!(kind, TargetKind::Bin | TargetKind::Example));
                if let (true, Some(path)) = (runnable, artifact.executable) {
                    executables.push((artifact.package_id, artifact.target.name, path));
                }
            }
        }
        let status = child.wait().map_err(|source| Error::Io {
            context: "waiting for cargo build".into(),
            source,
        })?;
        if !status.success() {
            return Err(Error::Build {
                detail: String::new(),
            });
        }

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
                    .position(|(_, name, _)| default_run.contains(name))
                {
                    Some(index) => executables.remove(index),
                    None => {
                        let names: Vec<_> = executables
                            .iter()
                            .map(|(_, name, _)| name.as_str())
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
        let (package_id, _, path) = chosen;
        let mut env = Vec::new();
        if let Some(package) = metadata.packages.iter().find(|p| p.id == package_id) {
            let dir = package
                .manifest_path
                .parent()
                .map(|dir| dir.to_string())
                .unwrap_or_default();
            env.push(("CARGO_MANIFEST_DIR".into(), dir.into()));
            env.push(("CARGO_PKG_NAME".into(), package.name.to_string().into()));
            env.push((
                "CARGO_PKG_VERSION".into(),
                package.version.to_string().into(),
            ));
        }
        Ok(Executable {
            path: path.into_std_path_buf(),
            env,
        })
    }
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
