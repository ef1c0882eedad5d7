//! Privileges, for real: an unprivileged uid with exactly the capabilities cargo-memleak
//! prints traces a program, and with any one of them missing gets exit 77 and the same line;
//! under a simulated `sudo cargo memleak test` the crate is built and tested as the invoking
//! user and nothing under it ends up owned by root.
//!
//! Both need root to set up (file capabilities, chown, a second uid): under CI=true they fail
//! rather than skip without it. The unprivileged uid is 65534 (`nobody`).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use memleak_tests::{c_fixture, cargo_memleak, privileged, workspace_root};

const NOBODY: u32 = 65534;

/// A directory under /tmp that uid 65534 can enter, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("memleak-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory can be created");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("{command:?} runs: {err}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `cargo-memleak exec -- leaky malloc` as uid 65534 (no groups), with `caps` on the binary.
fn exec_as_nobody(binary: &Path, fixture: &Path, caps: Option<&str>) -> Output {
    match caps {
        Some(caps) => {
            let set = run(Command::new("setcap").arg(caps).arg(binary));
            assert!(set.status.success(), "setcap {caps}: {}", text(&set.stderr));
        }
        None => {
            // Removing capabilities that are not there fails; that is fine.
            let _ = run(Command::new("setcap").arg("-r").arg(binary));
        }
    }
    run(Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
        ])
        .arg("--clear-groups")
        .arg(binary)
        .args(["memleak", "exec", "--"])
        .arg(fixture)
        .arg("malloc"))
}

#[test]
fn the_printed_capabilities_trace_and_one_fewer_is_refused() {
    if !privileged("the_printed_capabilities_trace_and_one_fewer_is_refused") {
        return;
    }
    let scratch = Scratch::new("caps");
    let binary = scratch.0.join("cargo-memleak");
    let fixture = scratch.0.join("leaky");
    std::fs::copy(cargo_memleak(), &binary).unwrap();
    std::fs::copy(c_fixture(), &fixture).unwrap();
    for file in [&binary, &fixture] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // No capabilities: exit 77, and the line to fix it.
    let refused = exec_as_nobody(&binary, &fixture, None);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(77), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let setcap = stderr
        .split('`')
        .find(|part| part.starts_with("setcap "))
        .unwrap_or_else(|| panic!("the message names a setcap line: {stderr}"));
    let words: Vec<&str> = setcap.split_whitespace().collect();
    assert_eq!(words.len(), 3, "setcap CAPS FILE: {setcap}");
    assert_eq!(Path::new(words[2]), binary, "the line names this binary");
    let caps = words[1];
    assert_eq!(
        caps, "cap_bpf,cap_perfmon,cap_sys_ptrace+ep",
        "multi links on this kernel"
    );

    // Exactly those: it traces.
    let traced = exec_as_nobody(&binary, &fixture, Some(caps));
    let stderr = text(&traced.stderr);
    assert_eq!(traced.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains("definitely lost: 30000 bytes in 1 blocks"),
        "the 30000-byte leak is found: {stderr}"
    );

    // One fewer, each in turn: exit 77, naming the one missing, and the same line.
    let set: Vec<&str> = caps.trim_end_matches("+ep").split(',').collect();
    for left_out in &set {
        let fewer: Vec<&str> = set.iter().copied().filter(|cap| cap != left_out).collect();
        let fewer = format!("{}+ep", fewer.join(","));
        let refused = exec_as_nobody(&binary, &fixture, Some(&fewer));
        let stderr = text(&refused.stderr);
        assert_eq!(
            refused.status.code(),
            Some(77),
            "without {left_out}: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "missing capabilities: {};",
                left_out.to_uppercase()
            )),
            "names {left_out}: {stderr}"
        );
        assert!(stderr.contains(setcap), "prints the same line: {stderr}");
    }
}

/// Copies the toolchain this test runs with, rustup, and fixtures/user into `home`, all owned
/// by 65534, with rustup's settings naming that toolchain.
fn give_nobody_a_toolchain(home: &Path) -> PathBuf {
    let sysroot = run(Command::new("rustc").args(["--print", "sysroot"]));
    let sysroot = PathBuf::from(text(&sysroot.stdout).trim());
    let toolchain = sysroot.file_name().unwrap().to_str().unwrap().to_owned();
    let toolchains = home.join(".rustup/toolchains");
    let bin = home.join(".cargo/bin");
    std::fs::create_dir_all(&toolchains).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let copied = run(Command::new("cp").arg("-a").arg(&sysroot).arg(&toolchains));
    assert!(
        copied.status.success(),
        "copying the toolchain: {}",
        text(&copied.stderr)
    );
    let rustup = which::which("rustup").expect("rustup is on PATH");
    std::fs::copy(rustup, bin.join("rustup")).unwrap();
    for proxy in ["cargo", "rustc"] {
        std::os::unix::fs::symlink("rustup", bin.join(proxy)).unwrap();
    }
    std::fs::write(
        home.join(".rustup/settings.toml"),
        format!("version = \"12\"\ndefault_toolchain = \"{toolchain}\"\nprofile = \"minimal\"\n"),
    )
    .unwrap();
    let crate_dir = home.join("crate");
    let copied = run(Command::new("cp")
        .arg("-r")
        .arg(workspace_root().join("fixtures/user"))
        .arg(&crate_dir));
    assert!(copied.status.success());
    let _ = std::fs::remove_dir_all(crate_dir.join("target"));
    let owned = run(Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(home));
    assert!(owned.status.success(), "chown: {}", text(&owned.stderr));
    crate_dir
}

/// Every path under `dir` owned by root.
fn owned_by_root(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.uid() == 0 {
            found.push(path.clone());
        }
        if meta.is_dir() {
            pending.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .map(|entry| entry.unwrap().path()),
            );
        }
    }
    found
}

#[test]
fn under_sudo_the_crate_is_built_and_tested_as_the_user() {
    if !privileged("under_sudo_the_crate_is_built_and_tested_as_the_user") {
        return;
    }
    let scratch = Scratch::new("sudo");
    let home = scratch.0.join("home");
    let crate_dir = give_nobody_a_toolchain(&home);
    let manifest = crate_dir.join("Cargo.toml");
    // What sudo leaves: root's HOME, the invoking user's ids.
    let memleak = |extra: &[&str]| {
        run(Command::new(cargo_memleak())
            .args(["memleak", "test", "--manifest-path"])
            .arg(&manifest)
            .args(extra)
            .current_dir(&crate_dir)
            .env("HOME", "/root")
            .env_remove("CARGO")
            .env("SUDO_UID", NOBODY.to_string())
            .env("SUDO_GID", NOBODY.to_string())
            .env("SUDO_USER", "nobody")
            // nobody's home in the user database is /nonexistent: name the toolchain's.
            .env("CARGO_HOME", home.join(".cargo"))
            .env("RUSTUP_HOME", home.join(".rustup")))
    };

    let tested = memleak(&["--message-format", "json"]);
    assert_eq!(
        tested.status.code(),
        Some(100),
        "the leak fails: {}",
        text(&tested.stderr)
    );
    let finished: std::collections::BTreeMap<String, serde_json::Value> = text(&tested.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["event"] == "test-finished")
        .map(|event| (event["test"].as_str().unwrap_or_default().to_owned(), event))
        .collect();
    let as_user = &finished["runs_as_the_invoking_user"];
    assert_eq!(as_user["result"], "ok", "its uid is not 0: {as_user:#}");
    let leak = &finished["leaks_a_buffer"];
    assert_eq!(leak["result"], "failed", "{leak:#}");
    assert_eq!(
        (&leak["lost"]["bytes"], &leak["lost"]["blocks"]),
        (&4096.into(), &1.into())
    );

    let junit = crate_dir.join("junit.xml");
    let blessed = memleak(&["--bless", "--junit", junit.to_str().unwrap()]);
    assert_eq!(blessed.status.code(), Some(0), "{}", text(&blessed.stderr));
    let baseline = crate_dir.join("memleak-baseline.json");
    for written in [&baseline, &junit] {
        let meta = std::fs::metadata(written).expect("written");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (NOBODY, NOBODY),
            "{} is the user's",
            written.display()
        );
    }
    assert_eq!(
        owned_by_root(&crate_dir),
        Vec::<PathBuf>::new(),
        "nothing root-owned"
    );
    assert!(
        crate_dir.join("target").is_dir(),
        "the build happened in the crate"
    );

    // exec's program runs as the user too, and `--user root` keeps root.
    let id = |extra: &[&str]| {
        let ran = run(Command::new(cargo_memleak())
            .args(["memleak", "exec", "--output", "/dev/null"])
            .args(extra)
            .args(["--", "id", "-u"])
            .env("SUDO_UID", NOBODY.to_string())
            .env("SUDO_GID", NOBODY.to_string()));
        assert_eq!(ran.status.code(), Some(0), "{}", text(&ran.stderr));
        text(&ran.stdout).trim().to_owned()
    };
    assert_eq!(id(&[]), NOBODY.to_string());
    assert_eq!(id(&["--user", "root"]), "0");

    // The control: run as root, the fixture's build script refuses to build.
    let as_root = run(Command::new(cargo_memleak())
        .args(["memleak", "test", "--user", "root", "--target-dir"])
        .arg(scratch.0.join("root-target"))
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_HOME", home.join(".cargo"))
        .env("RUSTUP_HOME", home.join(".rustup")));
    assert_eq!(as_root.status.code(), Some(101), "as root the build fails");
    assert!(
        text(&as_root.stderr).contains("the build script runs as root"),
        "{}",
        text(&as_root.stderr)
    );
}
