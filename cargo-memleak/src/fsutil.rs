//! Files cargo-memleak writes for the user (reports, baselines, JUnit XML), written so that a
//! reader never sees half of one.
//!
//! Invariants: a regular file is replaced whole, through a temporary file in its own directory,
//! or left as it was, and keeps its permissions; a symlink stays a symlink (its target is
//! replaced); anything else that exists (a device such as /dev/null, a FIFO) is written in
//! place, never renamed over. Under sudo a new file belongs to the invoking user (the `owner`
//! the command's options carry, see [`crate::user`]), not root.

use std::{io::Write as _, path::PathBuf};

use crate::{
    error::{Error, Result},
    user::{self, RunAs},
};

/// Writes a regular file through a temporary file in the same directory, so a reader never
/// sees half a file and a failed write leaves the old one. Anything else that exists (a
/// device such as /dev/null, a FIFO) is written in place: renaming over it would replace it.
/// A new file is given to `owner`.
pub fn write_atomically(
    path: &std::path::Path,
    contents: &[u8],
    owner: Option<&RunAs>,
) -> Result<()> {
    let write_error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    // A symlink (a baseline kept elsewhere) stays one: its target is what is replaced.
    let resolved;
    let path = if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink()) {
        resolved = std::fs::canonicalize(path).map_err(write_error)?;
        resolved.as_path()
    } else {
        path
    };
    let write_error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let existing = std::fs::metadata(path).ok();
    let special = existing.as_ref().is_some_and(|meta| !meta.is_file());
    if special {
        return std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut file| file.write_all(contents))
            .map_err(write_error);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut file_name = path.file_name().unwrap_or_default().to_owned();
    file_name.push(format!(".tmp{}", std::process::id()));
    let temporary = dir.join(file_name);
    std::fs::write(&temporary, contents)
        .and_then(|()| user::give(&temporary, owner))
        .map_err(write_error)?;
    if let Some(meta) = &existing {
        std::fs::set_permissions(&temporary, meta.permissions()).map_err(write_error)?;
    }
    std::fs::rename(&temporary, path).map_err(|err| {
        let _ = std::fs::remove_file(&temporary);
        write_error(err)
    })
}

/// Checks, before any work, that `path` can be written: its directory exists and is writable,
/// and the path itself, if it exists, is not a directory and is writable.
pub fn check_writable(path: &std::path::Path, what: &str) -> Result<()> {
    let fail = |reason: &str| {
        Err(Error::Selection(format!(
            "{what} {}: {reason}",
            path.display()
        )))
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return fail("is a directory; give a file name"),
        Ok(_) => {
            if nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_err() {
                return fail("cannot be written (permission denied)");
            }
            return Ok(());
        }
        Err(_) => {}
    }
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => {
            if nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_err() {
                return fail("its directory cannot be written (permission denied)");
            }
            Ok(())
        }
        Ok(_) => fail("its parent is not a directory"),
        Err(_) => fail("its directory does not exist; create it first"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt as _;

    use super::write_atomically;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("memleak-fsutil-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_regular_file_is_replaced_whole() {
        let dir = scratch("regular");
        let path = dir.join("report.json");
        std::fs::write(&path, "old and longer").unwrap();
        write_atomically(&path, b"new", None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Regression: `--bless` replaced a symlinked baseline by a regular file and reset its
    /// mode.
    #[test]
    fn a_symlink_keeps_pointing_at_its_target_and_the_mode_is_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("symlink");
        let target = dir.join("real.json");
        std::fs::write(&target, "old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.join("memleak-baseline.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new", None).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Regression: `--output /dev/null` once renamed a regular file over the device.
    #[test]
    fn a_fifo_is_written_in_place_not_replaced() {
        let dir = scratch("fifo");
        let path = dir.join("pipe");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || std::fs::read_to_string(path).unwrap())
        };
        write_atomically(&path, b"report", None).unwrap();
        assert_eq!(reader.join().unwrap(), "report");
        let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
        assert!(kind.is_fifo(), "still a FIFO: {kind:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
