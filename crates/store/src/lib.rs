//! Crash-safe persistence for card state.
//!
//! A state file is replaced, never edited: the new bytes go to a temporary
//! file in the same directory, which is fsynced and renamed over the old one,
//! and the directory is fsynced so the rename itself survives a power cut.
//! After a crash at any moment the path holds either the old or the new
//! contents, never a mix. Files are created owner-only (0600) and directories
//! 0700, because they hold PINs and keys.
#![forbid(unsafe_code)]

mod persisted;
pub use persisted::Persisted;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// A failure to read or write persistent state, naming the file.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Distinguishes the temporary files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The directory holding `path` and its file name.
fn split_path(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    Ok((dir, name))
}

/// `.NAME.tmp`: what the temporary files of `NAME` start with.
fn temp_prefix(name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".tmp");
    prefix
}

/// Creates a temporary file no other save uses: `.NAME.tmpPID.N`, with `N`
/// from a process-wide counter, opened with `create_new` so that even a
/// leftover of an earlier process with the same pid is never reused.
fn create_temp(dir: &Path, name: &OsStr) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..16 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = temp_prefix(name);
        tmp_name.push(format!("{pid}.{n}"));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary file name")))
}

/// Replaces `path` with `bytes` atomically and durably, mode 0600.
///
/// Each call writes its own uniquely named temporary file, so concurrent
/// saves of the same path (from threads or processes) never disturb each
/// other's temporary files; the last rename wins. Temporary files left by a
/// crash are not removed here but by [`remove_stale_temps`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let (dir, name) = split_path(path).map_err(err)?;
    let (tmp, mut f) = create_temp(dir, name).map_err(err)?;
    let result = (|| {
        // Creation applied the umask; make the mode exactly 0600.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Removes the temporary files of `path` that a process left when it died
/// between creating and renaming them; they hold nothing the state file lacks.
///
/// This lists the directory, so call it once when taking charge of a file
/// (as [`Persisted::new`] does), not per save: a temporary file that appears
/// later may belong to a save still in progress. Failures are ignored.
pub fn remove_stale_temps(path: &Path) {
    let Ok((dir, name)) = split_path(path) else {
        return;
    };
    let prefix = temp_prefix(name);
    let prefix = prefix.as_encoded_bytes();
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name.as_encoded_bytes().strip_prefix(prefix) else {
            continue;
        };
        // `PID` (older builds) or `PID.N`; anything else is not ours, e.g. a
        // temporary file of a sibling whose name extends this one.
        let ours = !rest.is_empty()
            && rest.split(|b| *b == b'.').count() <= 2
            && rest
                .split(|b| *b == b'.')
                .all(|part| !part.is_empty() && part.iter().all(u8::is_ascii_digit));
        if ours {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Reads a whole file; `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_keeps_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert_eq!(read_optional(&d.path().join("none")).unwrap(), None);
        // A temp file a killed process left behind goes when the file is
        // next taken charge of (not by a plain save, which would race with
        // other writers).
        fs::write(d.path().join(".state.json.tmp4242"), b"half").unwrap();
        remove_stale_temps(&p);
        write_atomic(&p, b"three").unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn saves_leave_other_temps_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        // Another writer's save in progress, and a sibling file's temp.
        let other = d.path().join(".state.tmp4242.7");
        let sibling = d.path().join(".state.tmp.tmp1.0");
        fs::write(&other, b"in flight").unwrap();
        fs::write(&sibling, b"x").unwrap();
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&other).unwrap(), b"in flight");
        assert_eq!(fs::read(&p).unwrap(), b"two");
        remove_stale_temps(&p);
        assert!(!other.exists());
        assert!(sibling.exists(), "not a temp file of this path");
    }

    #[test]
    fn failure_names_the_file_and_keeps_old_state() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("state.json");
        let e = write_atomic(&p, b"x").unwrap_err();
        assert!(e.to_string().contains("missing-dir"), "{e}");
    }

    #[test]
    fn private_dir_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b");
        create_private_dir(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
