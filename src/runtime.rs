//! Where a running mount's daemon can be found by other commands: one small JSON file per
//! mount point under `/run/mirrorfs`, and the default log file under `/var/log/mirrorfs`.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const RUNTIME_DIR: &str = "/run/mirrorfs";
const LOG_DIR: &str = "/var/log/mirrorfs";

/// What a daemon records about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub pid: u32,
    pub mount_point: PathBuf,
    pub replicas: Vec<PathBuf>,
    pub log_file: Option<PathBuf>,
}

/// A file name that identifies a mount point: its path with `/` turned into `-` and any
/// byte other than letters, digits, `_` and `.` written as `%XX`; very long ones end with
/// a hash so the name stays within limits.
pub fn key(mount_point: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = mount_point.as_os_str().as_bytes();
    let trimmed = bytes.strip_prefix(b"/").unwrap_or(bytes);
    let mut out = String::new();
    for &b in trimmed {
        match b {
            b'/' => out.push('-'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    if out.len() > 180 {
        // FNV-1a over the whole path keeps distinct long paths apart.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        out.truncate(160);
        out.push_str(&format!("~{hash:016x}"));
    }
    out
}

fn info_path(mount_point: &Path) -> PathBuf {
    Path::new(RUNTIME_DIR).join(format!("{}.json", key(mount_point)))
}

/// The log file a background daemon writes to unless told otherwise.
pub fn default_log_file(mount_point: &Path) -> PathBuf {
    Path::new(LOG_DIR).join(format!("{}.log", key(mount_point)))
}

pub fn write(info: &RuntimeInfo) -> io::Result<()> {
    std::fs::create_dir_all(RUNTIME_DIR)?;
    let path = info_path(&info.mount_point);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)?;
    std::fs::rename(tmp, path)
}

/// The record of the daemon serving `mount_point`, if there is one.
pub fn read(mount_point: &Path) -> io::Result<Option<RuntimeInfo>> {
    match std::fs::read(info_path(mount_point)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the record if it still names this process.
pub fn remove(mount_point: &Path) {
    if let Ok(Some(info)) = read(mount_point)
        && info.pid == std::process::id()
    {
        let _ = std::fs::remove_file(info_path(mount_point));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_readable_and_distinct() {
        assert_eq!(key(Path::new("/mnt/data")), "mnt-data");
        assert_eq!(key(Path::new("/mnt/my data-1")), "mnt-my%20data%2D1");
        assert_ne!(key(Path::new("/a/b")), key(Path::new("/a-b")));
        let long_a = PathBuf::from(format!("/{}/a", "x".repeat(300)));
        let long_b = PathBuf::from(format!("/{}/b", "x".repeat(300)));
        assert!(key(&long_a).len() < 200);
        assert_ne!(key(&long_a), key(&long_b));
    }
}
