//! `mirrorfs health`: the state of a mount, in the monitoring-plugin format.
//!
//! The first line is `MIRRORFS <STATE> - <summary> | <perfdata>`; one line per replica
//! follows. The exit status is the Nagios/Icinga convention: 0 OK (every replica in
//! sync), 1 WARNING (a replica is degraded, every path still readable), 2 CRITICAL (some
//! path is readable from no replica, or the daemon is gone or not answering), 3 UNKNOWN
//! (not a mirrorfs mount, or the state cannot be read). It never waits more than a few
//! seconds. `--json` prints the same as one JSON object.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::cli::HealthArgs;
use crate::error::CliError;
use crate::status::MirrorStatus;
use crate::{control, mountinfo};

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
enum Level {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Level {
    fn code(self) -> i32 {
        match self {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Critical => 2,
            Level::Unknown => 3,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    status: Level,
    exit_code: i32,
    summary: String,
    daemon: Option<MirrorStatus>,
}

fn check(mount_point: &Path) -> Report {
    let report = |status: Level, summary: String, daemon| Report {
        status,
        exit_code: status.code(),
        summary,
        daemon,
    };
    match mountinfo::mounted_at(mount_point) {
        Ok(Some(m)) if m.fs_type == mountinfo::FS_TYPE => {}
        Ok(_) => {
            return report(
                Level::Unknown,
                format!("{} is not a mirrorfs mount", mount_point.display()),
                None,
            );
        }
        Err(e) => return report(Level::Unknown, format!("cannot read mounts: {e}"), None),
    }
    let status = match control::status(mount_point) {
        Ok(s) => s,
        Err(e) => {
            return report(
                Level::Critical,
                format!(
                    "the daemon of {} is not answering: {e}",
                    mount_point.display()
                ),
                None,
            );
        }
    };
    let total = status.replicas.len();
    let degraded = status.degraded();
    let (level, summary) = if !status.unavailable.is_empty() {
        (
            Level::Critical,
            format!(
                "{} paths readable from no replica, e.g. {}",
                status.unavailable.len(),
                status.unavailable[0]
            ),
        )
    } else if degraded > 0 {
        (
            Level::Warning,
            format!("{degraded}/{total} replicas degraded"),
        )
    } else {
        (Level::Ok, format!("{total}/{total} replicas in sync"))
    };
    report(level, summary, Some(status))
}

fn ago(time: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}s ago", now.saturating_sub(time))
}

fn print_text(r: &Report) {
    let name = serde_json::to_value(r.status).expect("serializable");
    let mut line = format!(
        "MIRRORFS {} - {}",
        name.as_str().unwrap_or("UNKNOWN"),
        r.summary
    );
    if let Some(d) = &r.daemon {
        let (total, degraded) = (d.replicas.len(), d.degraded());
        let paths: usize = d.replicas.iter().map(|x| x.out_of_sync_count).sum();
        line.push_str(&format!(
            " | 'degraded'={degraded};0;1;0;{total} 'out_of_sync_paths'={paths};;;0"
        ));
    }
    println!("{line}");
    if let Some(d) = &r.daemon {
        for rep in &d.replicas {
            let state = serde_json::to_value(rep.state).expect("serializable");
            let mut l = format!(
                "replica {} {}: {}, {} paths out of sync, {} errors",
                rep.index,
                rep.path.display(),
                state.as_str().unwrap_or("?"),
                rep.out_of_sync_count,
                rep.errors
            );
            if let Some(e) = &rep.last_error {
                l.push_str(&format!(
                    ", last: {} {}: {} ({})",
                    e.op,
                    e.path,
                    e.error,
                    ago(e.time)
                ));
            }
            println!("{l}");
        }
    }
}

/// Runs the check and returns the exit status (never an error: every outcome is a state).
pub fn run(args: HealthArgs) -> Result<i32, CliError> {
    let mount_point: PathBuf =
        std::path::absolute(&args.mount_point).unwrap_or(args.mount_point.clone());
    let mount_point = std::fs::canonicalize(&mount_point).unwrap_or(mount_point);
    let report = check(&mount_point);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializable")
        );
    } else {
        print_text(&report);
    }
    Ok(report.exit_code)
}
