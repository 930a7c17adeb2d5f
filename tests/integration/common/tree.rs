//! A snapshot of a directory tree, for comparing the mount with each replica: names,
//! types, contents, mode, owner, group, size, symlink targets, xattrs, which names are
//! hard links of one file, and the mtime of everything but directories.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    /// File contents or symlink target.
    pub data: Vec<u8>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Other names of the same file, for hard links.
    pub links: Vec<PathBuf>,
    /// (seconds, nanoseconds), for everything but directories.
    pub mtime: Option<(i64, i64)>,
}

pub type Snapshot = BTreeMap<PathBuf, Node>;

fn xattrs(path: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let c = super::cstr(path);
    let mut names = vec![0u8; 65536];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    // xfs lists its ACLs to root a second time, under these names; the mirror does not
    // carry them (see `is_backing_internal`).
    let internal = |n: &[u8]| n == b"trusted.SGI_ACL_FILE" || n == b"trusted.SGI_ACL_DEFAULT";
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty() && !internal(n))
    {
        let cname = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: valid strings and buffer.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.insert(OsString::from(std::ffi::OsStr::from_bytes(name)), value);
        }
    }
    out
}

/// Walks `root`; `replica` leaves out the metadata directory at the top.
pub fn snapshot(root: &Path, replica: bool) -> Snapshot {
    let mut out = Snapshot::new();
    let mut by_inode: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        for name in entries {
            if replica && rel.as_os_str().is_empty() && name == ".mirrorfs" {
                continue;
            }
            let rel_child = rel.join(&name);
            let path = root.join(&rel_child);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            use std::os::unix::fs::FileTypeExt;
            let (kind, data) = if ft.is_dir() {
                stack.push(rel_child.clone());
                ("dir", Vec::new())
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                ("symlink", t.as_os_str().as_bytes().to_vec())
            } else if ft.is_file() {
                (
                    "file",
                    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
                )
            } else if ft.is_fifo() {
                ("fifo", Vec::new())
            } else if ft.is_socket() {
                ("socket", Vec::new())
            } else if ft.is_char_device() {
                ("chardev", Vec::new())
            } else {
                ("blockdev", Vec::new())
            };
            if !ft.is_dir() && meta.nlink() > 1 {
                by_inode
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(rel_child.clone());
            }
            out.insert(
                rel_child,
                Node {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size: if ft.is_dir() { 0 } else { meta.size() },
                    rdev: meta.rdev(),
                    data,
                    xattrs: xattrs(&path),
                    links: Vec::new(),
                    mtime: (!ft.is_dir()).then(|| (meta.mtime(), meta.mtime_nsec())),
                },
            );
        }
    }
    for group in by_inode.values() {
        for p in group {
            let mut others: Vec<PathBuf> = group.iter().filter(|o| *o != p).cloned().collect();
            others.sort();
            out.get_mut(p).unwrap().links = others;
        }
    }
    out
}

/// The first difference between two snapshots, described for a failure message.
pub fn first_difference(a: &Snapshot, b: &Snapshot) -> Option<String> {
    for (path, na) in a {
        match b.get(path) {
            None => return Some(format!("{} is missing", path.display())),
            Some(nb) if nb != na => {
                let field = if na.kind != nb.kind {
                    format!("type {} vs {}", na.kind, nb.kind)
                } else if na.data != nb.data {
                    format!(
                        "contents differ ({} vs {} bytes)",
                        na.data.len(),
                        nb.data.len()
                    )
                } else if na.mode != nb.mode {
                    format!("mode {:o} vs {:o}", na.mode, nb.mode)
                } else if (na.uid, na.gid) != (nb.uid, nb.gid) {
                    format!("owner {}:{} vs {}:{}", na.uid, na.gid, nb.uid, nb.gid)
                } else if na.xattrs != nb.xattrs {
                    format!("xattrs {:?} vs {:?}", na.xattrs, nb.xattrs)
                } else if na.links != nb.links {
                    format!("hard links {:?} vs {:?}", na.links, nb.links)
                } else {
                    format!("{na:?} vs {nb:?}")
                };
                return Some(format!("{}: {field}", path.display()));
            }
            _ => {}
        }
    }
    b.keys()
        .find(|p| !a.contains_key(*p))
        .map(|p| format!("{} is extra", p.display()))
}
