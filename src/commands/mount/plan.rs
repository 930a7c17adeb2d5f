//! Checking what `mirrorfs mount` was given, before anything is created or changed.
//!
//! Refused, each with a one-line reason: no replica; a replica that does not exist, is not
//! a directory or cannot be reached; the same directory twice; one replica inside another;
//! a mount point that does not exist, is not a directory or is already mounted; a mount
//! point inside a replica; a replica inside the mount point.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::cli_error;
use crate::commands::error::CliError;
use crate::sys::{self, mountinfo};

/// The most replicas one mirror may have.
pub const MAX_REPLICAS: usize = 32;

/// A checked request: absolute, symlink-free paths, and each replica's root opened once,
/// so that the directory checked is the directory served.
#[derive(Debug)]
pub struct MountPlan {
    pub replicas: Vec<PathBuf>,
    pub roots: Vec<OwnedFd>,
    pub mount_point: PathBuf,
}

fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "does not exist".into(),
        Some(libc::ENOTCONN) => {
            "is on a disconnected FUSE mount (its daemon is gone); unmount that first".into()
        }
        _ => format!("cannot be accessed: {e}"),
    }
}

/// Splits the arguments into replicas and mount point, expanding a single `a:b:c`.
fn split(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, PathBuf), CliError> {
    let Some((mount_point, replicas)) = paths.split_last() else {
        return Err(cli_error!("no mount point given"));
    };
    if replicas.is_empty() {
        return Err(cli_error!(
            "no replica directory given (usage: mirrorfs mount REPLICA... MOUNTPOINT)"
        ));
    }
    let mut out = replicas.to_vec();
    if let [single] = replicas {
        let text = single.to_string_lossy();
        if text.contains(':') && !single.exists() {
            out = text.split(':').map(PathBuf::from).collect();
            if out.iter().any(|p| p.as_os_str().is_empty()) {
                return Err(cli_error!("replica list {text:?} has an empty entry"));
            }
        }
    }
    Ok((out, mount_point.clone()))
}

/// Opens directory `path` (`O_PATH`), returning its descriptor, its canonical path (what
/// the descriptor names) and its (device, inode).
fn directory(role: &str, path: &Path) -> Result<(OwnedFd, PathBuf, (u64, u64)), CliError> {
    let fail = |e: io::Error| cli_error!("{role} {}: {}", path.display(), describe(&e));
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| cli_error!("{role} {}: the path has a NUL byte", path.display()))?;
    let fd = sys::open_path(&c, libc::O_PATH).map_err(fail)?;
    let st = sys::fstat(fd.as_fd()).map_err(fail)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(cli_error!("{role} {}: not a directory", path.display()));
    }
    let canonical =
        std::fs::read_link(sys::proc_fd_path(fd.as_fd()).to_str().expect("ASCII")).map_err(fail)?;
    Ok((fd, canonical, (st.st_dev, st.st_ino)))
}

/// Opens replica directories: each must exist, be a directory, be given once, and not lie
/// inside another. Returns their canonical paths and root descriptors.
pub fn open_replicas(given: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<OwnedFd>), CliError> {
    if given.len() > MAX_REPLICAS {
        return Err(cli_error!(
            "{} replicas given; a mirror has at most {MAX_REPLICAS}",
            given.len()
        ));
    }
    let mut replicas: Vec<(PathBuf, (u64, u64))> = Vec::new();
    let mut roots = Vec::new();
    for path in given {
        let (fd, canonical, id) = directory("replica", path)?;
        if let Some((other, _)) = replicas.iter().find(|(p, i)| *p == canonical || *i == id) {
            return Err(cli_error!(
                "replica {} is given twice (it is the same directory as {})",
                path.display(),
                other.display()
            ));
        }
        replicas.push((canonical, id));
        roots.push(fd);
    }
    for (a, _) in &replicas {
        for (b, _) in &replicas {
            if a != b && a.starts_with(b) {
                return Err(cli_error!(
                    "replica {} is inside replica {}",
                    a.display(),
                    b.display()
                ));
            }
        }
    }
    Ok((replicas.into_iter().map(|(p, _)| p).collect(), roots))
}

pub fn plan(paths: &[PathBuf]) -> Result<MountPlan, CliError> {
    let (given, mount_point) = split(paths)?;
    let (replicas, roots) = open_replicas(&given)?;
    let (_, mount_point, _) = directory("mount point", &mount_point)?;
    let mounted = mountinfo::mounted_at(&mount_point)
        .map_err(|e| cli_error!("cannot read the mount table: {}", crate::sys::describe(&e)))?;
    if let Some(m) = mounted {
        return Err(cli_error!(
            "mount point {} is already mounted ({} from {}); unmount it first",
            mount_point.display(),
            m.fs_type,
            m.source
        ));
    }
    for r in &replicas {
        if mount_point.starts_with(r) {
            return Err(cli_error!(
                "mount point {} is inside replica {}",
                mount_point.display(),
                r.display()
            ));
        }
        if r.starts_with(&mount_point) {
            return Err(cli_error!(
                "replica {} is inside the mount point {}",
                r.display(),
                mount_point.display()
            ));
        }
    }
    Ok(MountPlan {
        replicas,
        roots,
        mount_point,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&Path]) -> Vec<PathBuf> {
        list.iter().map(|p| p.to_path_buf()).collect()
    }

    #[test]
    fn accepts_separate_directories_and_a_colon_list() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, m) = (t.path().join("a"), t.path().join("b"), t.path().join("m"));
        for d in [&a, &b, &m] {
            std::fs::create_dir(d).unwrap();
        }
        let p = plan(&paths(&[&a, &b, &m])).unwrap();
        assert_eq!(p.replicas.len(), 2);
        let colon = PathBuf::from(format!("{}:{}", a.display(), b.display()));
        let q = plan(&paths(&[&colon, &m])).unwrap();
        assert_eq!(q.replicas, p.replicas);
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let t = tempfile::tempdir().unwrap();
        let (a, m) = (t.path().join("a"), t.path().join("m"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&m).unwrap();
        let file = t.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let inner = a.join("inner");
        std::fs::create_dir(&inner).unwrap();
        let cases: Vec<(Vec<PathBuf>, &str)> = vec![
            (paths(&[&m]), "no replica directory given"),
            (paths(&[&t.path().join("nope"), &m]), "does not exist"),
            (paths(&[&file, &m]), "not a directory"),
            (paths(&[&a, &a, &m]), "given twice"),
            (paths(&[&a, &inner, &m]), "is inside replica"),
            (paths(&[&a, &inner]), "is inside replica"),
            (paths(&[&m, t.path()]), "inside the mount point"),
        ];
        for (args, expected) in cases {
            let err = plan(&args).unwrap_err().message;
            assert!(err.contains(expected), "{args:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }
}
