//! Log output: to stderr in the foreground, to a log file in the background. The log file
//! can be reopened (on SIGHUP), so that log rotation works.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;

/// A log file shared by every writer, which can be reopened at its path.
#[derive(Clone, Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    /// Opens (creating it and its directory) the log file at `path` for appending.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(open_append(path)?)),
        })
    }

    /// Switches to a freshly opened file at the same path (after a rotation).
    pub fn reopen(&self) -> io::Result<()> {
        let new = open_append(&self.path)?;
        *self.file.lock().expect("log lock") = new;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A descriptor of the current file, for the daemon's stderr.
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.lock().expect("log lock").try_clone()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::options().create(true).append(true).open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.lock().expect("log lock").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.lock().expect("log lock").flush()
    }
}

/// Installs the global subscriber. `level` is a tracing filter such as `info` or
/// `mirrorfs=debug`.
pub fn init(level: &str, file: Option<LogFile>) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match file {
        Some(f) => builder
            .with_writer(move || f.clone())
            .with_ansi(false)
            .init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}
