//! Reading `/proc/self/mountinfo`: what is mounted where.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The device of the filesystem mounted, `major:minor`: one FUSE connection.
    pub device: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// The filesystem type of mirrorfs mounts.
pub const FS_TYPE: &str = "fuse.mirrorfs";

/// Decodes the octal escapes (`\040` for a space, ...) mountinfo uses in paths.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn parse_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let device = left.split(' ').nth(2)?.to_string();
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fs_type = right.next()?.to_string();
    let source = String::from_utf8_lossy(&unescape(right.next()?)).into_owned();
    Some(Mount {
        device,
        mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
        fs_type,
        source,
    })
}

/// Every mount visible to this process, in mount order.
pub fn mounts() -> io::Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// The topmost mount whose mount point is exactly `path`.
pub fn mounted_at(path: &Path) -> io::Result<Option<Mount>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fuse_mount_with_escaped_spaces() {
        let line = "61 25 0:52 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:30 - fuse.mirrorfs \
                    /r1:/r2 rw,user_id=0,group_id=0,default_permissions";
        let m = parse_line(line).unwrap();
        assert_eq!(m.device, "0:52");
        assert_eq!(m.mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m.fs_type, FS_TYPE);
        assert_eq!(m.source, "/r1:/r2");
    }

    #[test]
    fn finds_the_root_mount() {
        assert!(mounted_at(Path::new("/")).unwrap().is_some());
    }
}
