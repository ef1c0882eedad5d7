//! The environment `cargo test` and `cargo run` give the processes they start, so that a
//! traced test sees what it sees under cargo: cargo's `Compilation::fill_env` (the dynamic
//! library path, `CARGO`, the package's `CARGO_*` variables, its build script's `OUT_DIR` and
//! `cargo:rustc-env`), then the `[env]` table of cargo's configuration. What cargo inherits
//! from its own parent (rustup's `RUSTUP_TOOLCHAIN`, `RUSTUP_HOME`, `CARGO_HOME`, ...) the
//! test inherits from cargo-memleak, which cargo started the same way.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use cargo_metadata::{BuildScript, Package, PackageId};

use crate::user::{self, RunAs};

/// What holds for every process of one build.
#[derive(Debug, Default)]
pub(super) struct Environment {
    /// `CARGO`: the cargo that cargo would name (its own executable).
    cargo: OsString,
    /// The toolchain's libraries for the target (`rustc --print target-libdir`), last on the
    /// dynamic library path.
    sysroot_libdir: Option<PathBuf>,
    /// Build scripts' output, by package.
    scripts: HashMap<PackageId, BuildScript>,
    /// `[env]` of cargo's configuration, seen from the directory cargo runs in.
    config: Vec<(String, OsString, bool)>,
}

impl Environment {
    /// Everything but the build scripts' output, which [`Environment::script`] adds.
    pub(super) fn new(run_as: Option<&RunAs>) -> Self {
        let cargo = std::env::var_os("CARGO")
            .or_else(|| run_as.map(|run_as| user::cargo(Some(run_as))))
            .or_else(|| rustup_which_cargo(run_as))
            .unwrap_or_else(|| "cargo".into());
        let config = std::env::current_dir()
            .ok()
            .and_then(|cwd| cargo_config2::Config::load_with_cwd(cwd).ok())
            .map(|config| {
                config
                    .env
                    .into_iter()
                    .map(|(name, value)| (name, value.value, value.force))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            cargo,
            sysroot_libdir: sysroot_libdir(run_as),
            scripts: HashMap::new(),
            config,
        }
    }

    /// A build script's output, from cargo's `build-script-executed` message.
    pub(super) fn script(&mut self, script: BuildScript) {
        self.scripts.insert(script.package_id.clone(), script);
    }

    /// What cargo sets for `package`'s executable at `path`, in cargo's order (a later value
    /// wins).
    pub(super) fn of(&self, package: &Package, path: &Path) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        let mut set = |name: &str, value: OsString| env.push((name.into(), value));
        set("LD_LIBRARY_PATH", self.library_path(path));
        if let Some(script) = self.scripts.get(&package.id) {
            set("OUT_DIR", script.out_dir.clone().into_string().into());
            for (name, value) in &script.env {
                set(name, value.into());
            }
        }
        set("CARGO", self.cargo.clone());
        let package_dir = package
            .manifest_path
            .parent()
            .map(|dir| dir.to_string())
            .unwrap_or_default();
        let version = &package.version;
        let text = |value: Option<&String>| OsString::from(value.cloned().unwrap_or_default());
        set("CARGO_MANIFEST_DIR", package_dir.into());
        set(
            "CARGO_MANIFEST_PATH",
            package.manifest_path.to_string().into(),
        );
        set("CARGO_PKG_VERSION_MAJOR", version.major.to_string().into());
        set("CARGO_PKG_VERSION_MINOR", version.minor.to_string().into());
        set("CARGO_PKG_VERSION_PATCH", version.patch.to_string().into());
        set("CARGO_PKG_VERSION_PRE", version.pre.to_string().into());
        set("CARGO_PKG_VERSION", version.to_string().into());
        set("CARGO_PKG_NAME", package.name.to_string().into());
        set("CARGO_PKG_DESCRIPTION", text(package.description.as_ref()));
        set("CARGO_PKG_HOMEPAGE", text(package.homepage.as_ref()));
        set("CARGO_PKG_REPOSITORY", text(package.repository.as_ref()));
        set("CARGO_PKG_LICENSE", text(package.license.as_ref()));
        set(
            "CARGO_PKG_LICENSE_FILE",
            package
                .license_file
                .as_ref()
                .map(|file| file.to_string())
                .unwrap_or_default()
                .into(),
        );
        set("CARGO_PKG_AUTHORS", package.authors.join(":").into());
        set(
            "CARGO_PKG_RUST_VERSION",
            package
                .rust_version
                .as_ref()
                .map(as_written)
                .unwrap_or_default()
                .into(),
        );
        set(
            "CARGO_PKG_README",
            package
                .readme
                .as_ref()
                .map(|readme| readme.to_string())
                .unwrap_or_default()
                .into(),
        );
        // `[env]`: a variable cargo itself was given stays as given, unless forced.
        for (name, value, force) in &self.config {
            if *force || std::env::var_os(name).is_none() {
                set(name, value.clone());
            }
        }
        env
    }

    /// cargo's dynamic library path for an executable at `path`: the build scripts' link
    /// directories inside the profile's directory, that directory and its `deps`, the
    /// toolchain's target libraries, then the inherited path (as cargo 1.99 orders them).
    fn library_path(&self, path: &Path) -> OsString {
        let parent = path.parent().unwrap_or(Path::new("."));
        let root = match parent.file_name().and_then(|name| name.to_str()) {
            Some("deps" | "examples") => parent.parent().unwrap_or(parent),
            _ => parent,
        };
        let native: BTreeSet<PathBuf> = self
            .scripts
            .values()
            .flat_map(|script| &script.linked_paths)
            .map(|dir| {
                let dir = dir.as_str();
                match dir.split_once('=') {
                    Some(("native" | "crate" | "dependency" | "all", path)) => PathBuf::from(path),
                    _ => PathBuf::from(dir),
                }
            })
            .filter(|dir| dir.starts_with(root))
            .collect();
        let mut dirs: Vec<PathBuf> = native.into_iter().collect();
        dirs.push(root.to_path_buf());
        dirs.push(root.join("deps"));
        dirs.extend(self.sysroot_libdir.clone());
        if let Some(inherited) = std::env::var_os("LD_LIBRARY_PATH") {
            dirs.extend(std::env::split_paths(&inherited));
        }
        std::env::join_paths(dirs).unwrap_or_default()
    }
}

/// The toolchain's cargo, as rustup resolves it (cargo names its own executable, not
/// rustup's proxy in front of it).
fn rustup_which_cargo(run_as: Option<&RunAs>) -> Option<OsString> {
    let mut command = Command::new("rustup");
    command.args(["which", "cargo"]);
    first_line(command, run_as).map(OsString::from)
}

/// `rustc --print target-libdir`, with the rustc cargo would use.
fn sysroot_libdir(run_as: Option<&RunAs>) -> Option<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut command = Command::new(rustc);
    command.args(["--print", "target-libdir"]);
    first_line(command, run_as).map(PathBuf::from)
}

fn first_line(mut command: Command, run_as: Option<&RunAs>) -> Option<String> {
    user::apply(&mut command, run_as);
    let output = command.stderr(std::process::Stdio::null()).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let line = String::from_utf8(output.stdout)
        .ok()?
        .lines()
        .next()?
        .trim()
        .to_owned();
    (!line.is_empty()).then_some(line)
}

/// `rust-version` as a manifest usually writes it: cargo passes on what was written ("1.85"),
/// which cargo_metadata reads as a full version (1.85.0); a written "1.85.0" comes out as
/// "1.85" here, the one case that differs.
fn as_written(version: &cargo_metadata::semver::Version) -> String {
    if version.patch == 0 && version.pre.is_empty() {
        format!("{}.{}", version.major, version.minor)
    } else {
        version.to_string()
    }
}
