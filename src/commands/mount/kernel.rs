//! The mount itself: opening /dev/fuse and calling mount(2) with the FUSE options, so that
//! mirrorfs alone decides when its mount point is unmounted (a daemon that exits never
//! unmounts whatever is mounted at its path by then). Needs root.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuser::SessionACL;

use crate::commands::mount::options::MountOptions;
use crate::sys::{self, mountinfo};

/// Mounts a FUSE filesystem named `fsname` at `mount_point` and returns the /dev/fuse
/// descriptor that serves it. The kernel sends its first request (INIT) right away.
pub fn mount(mount_point: &Path, fsname: &str, opts: &MountOptions) -> io::Result<OwnedFd> {
    let dev = sys::open_path(c"/dev/fuse", libc::O_RDWR)?;
    let root_mode =
        sys::fstat(sys::open_path(&cpath(mount_point)?, libc::O_PATH)?.as_fd())?.st_mode;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd(),
        root_mode & libc::S_IFMT
    );
    if opts.acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    let source = CString::new(fsname).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fstype = CString::new(mountinfo::FS_TYPE).expect("no NUL");
    let data = CString::new(data).expect("no NUL");
    let target = cpath(mount_point)?;
    // SAFETY: NUL-terminated strings; data is the option string mount(2) expects.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            opts.flags,
            data.as_ptr().cast(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dev)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}
