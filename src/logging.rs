//! Log output: to stderr in the foreground, to a log file in the background.

use std::fs::File;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a tracing filter such as `info` or
/// `mirrorfs=debug`. At the plain levels up to `info`, the FUSE library only reports
/// errors: its warnings are about its own unmount bookkeeping, which mirrorfs does itself.
pub fn init(level: &str, file: Option<File>) {
    let directive = match level {
        "error" | "warn" | "info" => format!("{level},fuser=error"),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match file {
        Some(f) => builder.with_writer(Mutex::new(f)).with_ansi(false).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}
