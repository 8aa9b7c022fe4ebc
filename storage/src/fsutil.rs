//! Directory operations without blocking the executor: listing and metadata
//! run on glommio's blocking thread, renames, removals and syncs go through
//! glommio's own file API.

use std::io;
use std::path::{Path, PathBuf};

/// Names of the entries of `dir` (files only), sorted.
pub(crate) async fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let dir = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || -> io::Result<Vec<String>> {
            let mut names = Vec::new();
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                names.push(e.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        })
        .await
}

/// Creates `dir` and its parents if missing.
pub(crate) async fn create_dir_all(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || std::fs::create_dir_all(&dir))
        .await
}

/// Length of the file at `path`, or `None` if it does not exist.
pub(crate) async fn file_len(path: &Path) -> io::Result<Option<u64>> {
    let path = path.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
}

/// `path` resolved against the working directory (no I/O beyond reading the
/// cwd). glommio 0.9 opens a directory with `openat(-1, path)`, which fails
/// with EBADF for a relative path, so every public entry point of this crate
/// that takes a path resolves it first.
pub(crate) fn absolute(path: &Path) -> io::Result<std::path::PathBuf> {
    std::path::absolute(path)
}

/// fsyncs a directory so that creations, renames and removals in it are durable.
pub(crate) async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = absolute(dir)?;
    let d = glommio::io::Directory::open(&dir).await?;
    let r = d.sync().await;
    d.close().await?;
    r.map_err(Into::into)
}

/// Renames a file.
pub(crate) async fn rename(from: &Path, to: &Path) -> io::Result<()> {
    glommio::io::rename(from, to).await.map_err(Into::into)
}

/// Removes a file.
pub(crate) async fn remove(path: &Path) -> io::Result<()> {
    glommio::io::remove(path).await.map_err(Into::into)
}

/// `dir/name`.
pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
