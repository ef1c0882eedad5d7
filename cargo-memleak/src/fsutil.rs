//! Files cargo-memleak writes for the user (reports, baselines, JUnit XML), written so that a
//! reader never sees half of one.
//!
//! Invariants: a regular file is replaced whole, through a temporary file in its own directory,
//! or left as it was; anything else that exists (a device such as /dev/null, a FIFO) is written
//! in place, never renamed over. Under sudo a new file belongs to the invoking user
//! ([`crate::user`]), not root.

use std::{io::Write as _, path::PathBuf};

use crate::error::{Error, Result};

/// Writes a regular file through a temporary file in the same directory, so a reader never
/// sees half a file and a failed write leaves the old one. Anything else that exists (a
/// device such as /dev/null, a FIFO) is written in place: renaming over it would replace it.
pub fn write_atomically(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    let write_error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let special = std::fs::metadata(path).is_ok_and(|meta| !meta.is_file());
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
        .and_then(|()| crate::user::give(&temporary))
        .map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(|err| {
        let _ = std::fs::remove_file(&temporary);
        write_error(err)
    })
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
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
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
        write_atomically(&path, b"report").unwrap();
        assert_eq!(reader.join().unwrap(), "report");
        let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
        assert!(kind.is_fifo(), "still a FIFO: {kind:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
