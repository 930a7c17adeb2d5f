//! `mirrorfs health`: the state of a mount, in the monitoring-plugin format.
//!
//! The first line is `MIRRORFS <STATE> - <summary> | <perfdata>`; one line per replica
//! follows. The exit status is the Nagios/Icinga convention: 0 OK (every replica in
//! sync), 1 WARNING (a replica is degraded or failed, every path still readable), 2
//! CRITICAL (some path is readable from no replica, or the daemon is gone or not
//! answering), 3 UNKNOWN (not a mirrorfs mount, or the state cannot be read). It never
//! waits more than a few seconds. `--json` prints the same as one JSON object.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use clap::Args;

use crate::commands::error::CliError;
use crate::control::socket;
use crate::control::status::{MirrorStatus, ReplicaState, ReplicaStatus};
use crate::sys::mountinfo;

#[derive(Debug, Args)]
#[command(after_help = "\
Exit status: 0 OK (every replica in sync), 1 WARNING (a replica is degraded; every path is \
still readable), 2 CRITICAL (a path is readable from no replica, or the daemon is gone or \
not answering), 3 UNKNOWN (not a mirrorfs mount).")]
pub struct HealthArgs {
    /// The mount point of a mirrorfs mount.
    pub mount_point: PathBuf,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

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

    fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
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

fn report(status: Level, summary: String, daemon: Option<MirrorStatus>) -> Report {
    Report {
        status,
        exit_code: status.code(),
        summary,
        daemon,
    }
}

/// The level and summary a daemon's status deserves.
fn judge(s: &MirrorStatus) -> (Level, String) {
    let total = s.replicas.len();
    let failed = s.count(ReplicaState::Failed);
    let degraded = s.count(ReplicaState::Degraded);
    if failed == total {
        return (
            Level::Critical,
            format!("all {total} replicas failed; data is unavailable"),
        );
    }
    if !s.unavailable.is_empty() {
        return (
            Level::Critical,
            format!(
                "{} paths readable from no replica, e.g. {}",
                s.unavailable.len(),
                s.unavailable[0]
            ),
        );
    }
    if failed + degraded == 0 {
        return (Level::Ok, format!("{total}/{total} replicas in sync"));
    }
    let mut parts = Vec::new();
    if degraded > 0 {
        parts.push(format!("{degraded}/{total} replicas degraded"));
    }
    if failed > 0 {
        parts.push(format!("{failed}/{total} failed"));
    }
    for r in &s.replicas {
        if r.failure
            .as_ref()
            .is_some_and(|f| f.errno == libc::ETIMEDOUT)
        {
            parts.push(format!("{} not answering", r.path.display()));
        }
    }
    if s.repair.running {
        let eta = s.repair.eta_seconds.map_or("unknown".to_string(), duration);
        parts.push(format!("repair {:.0}% ETA {eta}", s.repair.percent));
    }
    (Level::Warning, parts.join(", "))
}

fn check(mount_point: &Path) -> Report {
    match mountinfo::mounted_at(mount_point) {
        Ok(Some(m)) if m.fs_type == mountinfo::FS_TYPE => {}
        Ok(_) => {
            return report(
                Level::Unknown,
                format!("{} is not a mirrorfs mount", mount_point.display()),
                None,
            );
        }
        Err(e) => {
            return report(
                Level::Unknown,
                format!("cannot read mounts: {}", crate::sys::describe(&e)),
                None,
            );
        }
    }
    match socket::status(mount_point) {
        Ok(s) => {
            let (level, summary) = judge(&s);
            report(level, summary, Some(s))
        }
        Err(e) => report(
            Level::Critical,
            format!(
                "the daemon of {} is not answering: {}",
                mount_point.display(),
                crate::sys::describe(&e)
            ),
            None,
        ),
    }
}

fn ago(time: u64) -> String {
    let now = crate::tree::attr::unix_seconds(SystemTime::now());
    format!("{}s ago", now.saturating_sub(time))
}

/// A duration for people: 45s, 3m, 2h10m.
fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s.div_ceil(60)),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn replica_line(r: &ReplicaStatus) -> String {
    let state = match r.state {
        ReplicaState::InSync => "in-sync".to_string(),
        ReplicaState::Degraded => "degraded".to_string(),
        ReplicaState::Failed => match &r.failure {
            Some(f) => format!("failed {} ({})", ago(f.since), f.reason),
            None => "failed".to_string(),
        },
    };
    let mut l = format!("replica {} {}: {state}", r.index, r.path.display());
    if r.needs_full {
        l.push_str(", needs a full comparison");
    }
    l.push_str(&format!(", {} paths out of sync", r.out_of_sync_count));
    if r.pending_files + r.pending_bytes > 0 {
        l.push_str(&format!(
            ", {} paths / {} pending repair",
            r.pending_files,
            bytes(r.pending_bytes)
        ));
    }
    if r.errors > 0 {
        let kinds: Vec<String> = r
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        l.push_str(&format!(", errors {}", kinds.join(" ")));
    }
    if let Some(e) = &r.last_error {
        l.push_str(&format!(
            ", last error: {} {}: {} ({})",
            e.op,
            e.path,
            e.error,
            ago(e.time)
        ));
    }
    if let Some(lag) = &r.lag {
        l.push_str(&format!(
            ", lag {} ops / {} / {:.1} s",
            lag.operations,
            bytes(lag.bytes),
            lag.oldest_seconds
        ));
        if lag.trips > 0 {
            l.push_str(&format!(" (max lag exceeded {} times)", lag.trips));
        }
    }
    if !r.lacks.is_empty() {
        l.push_str(&format!(", its filesystem lacks {}", r.lacks.join(", ")));
    }
    l.push_str(&format!(
        ", latency read {:.2} ms write {:.2} ms, {} free",
        r.read_latency_us / 1000.0,
        r.write_latency_us / 1000.0,
        bytes(r.free_bytes)
    ));
    l
}

fn print_text(r: &Report) {
    let mut line = format!("MIRRORFS {} - {}", r.status.name(), r.summary);
    if let Some(d) = &r.daemon {
        let total = d.replicas.len();
        let paths: usize = d.replicas.iter().map(|x| x.out_of_sync_count).sum();
        let pending: u64 = d.replicas.iter().map(|x| x.pending_bytes).sum();
        line.push_str(&format!(
            " | 'degraded'={};0;1;0;{total} 'failed'={};0;1;0;{total} \
             'out_of_sync_paths'={paths};;;0 'repair_pending_bytes'={pending}B;;;0 \
             'repaired_bytes'={}B;;;0",
            d.count(ReplicaState::Degraded),
            d.count(ReplicaState::Failed),
            d.repair.bytes_repaired,
        ));
    }
    println!("{line}");
    if let Some(d) = &r.daemon {
        for rep in &d.replicas {
            println!("{}", replica_line(rep));
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
