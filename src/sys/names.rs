//! Validation of the single path components that arrive from the kernel.
//!
//! Every replica operation takes one name relative to a directory descriptor; a name that
//! is empty, contains `/`, or is `.` or `..` could step outside that directory, so it is
//! refused before any system call.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

/// Name of the per-replica metadata directory at each replica root. It is invisible and
/// unreachable through the mount.
pub const META_DIR: &str = ".mirrorfs";

/// Checks that `name` is one plain path component.
pub fn validate(name: &OsStr) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// Whether `name` in the root directory is the reserved metadata directory.
pub fn is_reserved(parent_is_root: bool, name: &OsStr) -> bool {
    parent_is_root && name.as_bytes() == META_DIR.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_components_that_leave_the_directory() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(validate(OsStr::new(bad)).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "...", ".hidden", "x y", "ü"] {
            assert!(validate(OsStr::new(good)).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn only_the_root_reserves_the_metadata_name() {
        assert!(is_reserved(true, OsStr::new(META_DIR)));
        assert!(!is_reserved(false, OsStr::new(META_DIR)));
        assert!(!is_reserved(true, OsStr::new("mirrorfs")));
    }
}
