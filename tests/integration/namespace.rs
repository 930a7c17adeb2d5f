//! Names through the mount: directories, renames of every kind, hard links, symlinks,
//! special files, listings, and the hidden metadata directory.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};

use crate::common::{Mirror, cstr, last_errno, renameat2};

#[test]
fn directories_are_created_and_removed_everywhere() {
    let m = Mirror::new(3);
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    fs::write(m.path("a/b/c/f"), b"1").unwrap();
    m.assert_in_sync();
    fs::remove_file(m.path("a/b/c/f")).unwrap();
    fs::remove_dir(m.path("a/b/c")).unwrap();
    m.assert_in_sync();
    fs::remove_dir_all(m.path("a")).unwrap();
    for i in 0..3 {
        assert!(!m.replica(i, "a").exists());
    }
    m.assert_in_sync();
}

#[test]
fn renames_of_files_and_directories_including_over_existing_ones() {
    let m = Mirror::new(3);
    fs::create_dir_all(m.path("d1/sub")).unwrap();
    fs::create_dir(m.path("d2")).unwrap();
    fs::write(m.path("d1/f"), b"f").unwrap();
    fs::write(m.path("d1/sub/g"), b"g").unwrap();
    fs::write(m.path("d2/victim"), b"v").unwrap();
    // A file over an existing file, across directories.
    fs::rename(m.path("d1/f"), m.path("d2/victim")).unwrap();
    assert_eq!(fs::read(m.path("d2/victim")).unwrap(), b"f");
    // A directory over an empty directory, and into another directory.
    fs::create_dir(m.path("d2/empty")).unwrap();
    fs::rename(m.path("d1/sub"), m.path("d2/empty")).unwrap();
    assert_eq!(fs::read(m.path("d2/empty/g")).unwrap(), b"g");
    // Files inside a renamed directory stay reachable and writable.
    fs::rename(m.path("d2"), m.path("d3")).unwrap();
    fs::write(m.path("d3/empty/g"), b"g2").unwrap();
    m.assert_in_sync();
    // Over a non-empty directory fails like on ext4.
    fs::create_dir(m.path("full")).unwrap();
    fs::write(m.path("full/x"), b"").unwrap();
    let e = fs::rename(m.path("d3/empty"), m.path("full")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    m.assert_in_sync();
}

#[test]
fn rename_noreplace_and_exchange() {
    let m = Mirror::new(2);
    fs::write(m.path("a"), b"A").unwrap();
    fs::write(m.path("b"), b"B").unwrap();
    assert_eq!(
        renameat2(&m, "a", "b", libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(renameat2(&m, "a", "c", libc::RENAME_NOREPLACE), 0);
    assert_eq!(renameat2(&m, "c", "b", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.path("b")).unwrap(), b"A");
    assert_eq!(fs::read(m.path("c")).unwrap(), b"B");
    // Exchange a file with a directory.
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/inside"), b"i").unwrap();
    assert_eq!(renameat2(&m, "dir", "b", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.path("b/inside")).unwrap(), b"i");
    assert_eq!(fs::read(m.path("dir")).unwrap(), b"A");
    assert_eq!(
        renameat2(&m, "missing", "x", libc::RENAME_EXCHANGE),
        libc::ENOENT
    );
    m.assert_in_sync();
}

#[test]
fn hard_links_share_an_inode_and_contents() {
    let m = Mirror::new(3);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("one"), b"first").unwrap();
    fs::hard_link(m.path("one"), m.path("d/two")).unwrap();
    let (a, b) = (
        fs::metadata(m.path("one")).unwrap(),
        fs::metadata(m.path("d/two")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    fs::write(m.path("d/two"), b"second").unwrap();
    assert_eq!(fs::read(m.path("one")).unwrap(), b"second");
    m.assert_in_sync();
    fs::remove_file(m.path("one")).unwrap();
    assert_eq!(fs::metadata(m.path("d/two")).unwrap().nlink(), 1);
    m.assert_in_sync();
}

#[test]
fn hard_links_made_before_the_mount_keep_one_inode_number() {
    let mut m = Mirror::new(2);
    m.unmount();
    for i in 0..2 {
        fs::write(m.replica(i, "a"), b"x").unwrap();
        fs::hard_link(m.replica(i, "a"), m.replica(i, "b")).unwrap();
    }
    m.mount();
    let a = fs::metadata(m.path("a")).unwrap();
    let b = fs::metadata(m.path("b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
}

#[test]
fn symlinks_keep_their_target_verbatim() {
    let m = Mirror::new(3);
    for (name, target) in [
        ("rel", "some/where"),
        ("abs", "/etc/passwd"),
        ("dangling", "../../nope"),
    ] {
        std::os::unix::fs::symlink(target, m.path(name)).unwrap();
        assert_eq!(
            fs::read_link(m.path(name)).unwrap().to_str().unwrap(),
            target
        );
        for i in 0..3 {
            assert_eq!(
                fs::read_link(m.replica(i, name)).unwrap().to_str().unwrap(),
                target
            );
        }
    }
    fs::write(m.path("real"), b"r").unwrap();
    std::os::unix::fs::symlink("real", m.path("to_real")).unwrap();
    assert_eq!(fs::read(m.path("to_real")).unwrap(), b"r");
    m.assert_in_sync();
}

#[test]
fn fifos_sockets_and_device_nodes() {
    let m = Mirror::new(2);
    let mk = |name: &str, mode: u32, dev: u64| {
        let p = cstr(&m.path(name));
        // SAFETY: valid path.
        let r = unsafe { libc::mknod(p.as_ptr(), mode, dev) };
        assert_eq!(r, 0, "mknod {name}: errno {}", last_errno());
    };
    mk("fifo", libc::S_IFIFO | 0o640, 0);
    mk("sock", libc::S_IFSOCK | 0o600, 0);
    mk("null", libc::S_IFCHR | 0o666, libc::makedev(1, 3));
    mk("blk", libc::S_IFBLK | 0o600, libc::makedev(7, 0));
    assert!(
        fs::symlink_metadata(m.path("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::symlink_metadata(m.path("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    let null = fs::symlink_metadata(m.path("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    m.assert_in_sync();
}

#[test]
fn large_directories_list_completely_and_stably() {
    let m = Mirror::new(2);
    fs::create_dir(m.path("many")).unwrap();
    let names: Vec<String> = (0..3000)
        .map(|i| format!("entry-with-a-long-name-{i:05}"))
        .collect();
    for n in &names {
        File::create(m.path(&format!("many/{n}"))).unwrap();
    }
    let mut listed: Vec<String> = fs::read_dir(m.path("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, names);
    // Removing while listing neither skips nor repeats the entries that remain.
    let mut seen = 0;
    for e in fs::read_dir(m.path("many")).unwrap() {
        let e = e.unwrap();
        fs::remove_file(e.path()).unwrap();
        seen += 1;
    }
    assert_eq!(seen, 3000);
    assert_eq!(fs::read_dir(m.path("many")).unwrap().count(), 0);
    m.assert_in_sync();
}

#[test]
fn readdir_reports_the_inode_numbers_stat_reports() {
    let m = Mirror::new(2);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"").unwrap();
    for e in fs::read_dir(m.path("d")).unwrap() {
        let e = e.unwrap();
        assert_eq!(e.ino(), fs::symlink_metadata(e.path()).unwrap().ino());
    }
}

#[test]
fn the_metadata_directory_is_invisible_and_unreachable() {
    let m = Mirror::new(2);
    for i in 0..2 {
        assert!(m.replica(i, ".mirrorfs").is_dir());
    }
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.is_empty(), "{names:?}");
    let e = fs::metadata(m.path(".mirrorfs")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    assert!(fs::read(m.path(".mirrorfs/lock")).is_err());
    let e = fs::create_dir(m.path(".mirrorfs")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    let e = File::create(m.path(".mirrorfs")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    fs::write(m.path("x"), b"").unwrap();
    let e = fs::rename(m.path("x"), m.path(".mirrorfs")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    // Inside subdirectories the name is an ordinary one.
    fs::create_dir(m.path("sub")).unwrap();
    fs::create_dir(m.path("sub/.mirrorfs")).unwrap();
    let mut f = File::create(m.path("sub/.mirrorfs/ok")).unwrap();
    f.write_all(b"fine").unwrap();
    m.assert_in_sync();
}

#[test]
fn an_open_file_keeps_its_inode_number_through_a_name_not_yet_looked_up() {
    let mut m = Mirror::new(2);
    m.unmount();
    for i in 0..2 {
        fs::write(m.replica(i, "a"), b"shared").unwrap();
        fs::hard_link(m.replica(i, "a"), m.replica(i, "b")).unwrap();
    }
    m.mount();
    let open = File::options()
        .read(true)
        .write(true)
        .open(m.path("a"))
        .unwrap();
    fs::remove_file(m.path("a")).unwrap();
    // "b" was never looked up; it is the same file as the open one.
    let b = fs::metadata(m.path("b")).unwrap();
    assert_eq!(b.ino(), open.metadata().unwrap().ino());
    (&open).write_all(b"SHARED").unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"SHARED");
    drop(open);
    m.assert_in_sync();
}

#[test]
fn a_removed_directory_that_is_still_open_can_be_stat_and_listed() {
    let m = Mirror::new(2);
    fs::create_dir(m.path("gone")).unwrap();
    let dir = File::open(m.path("gone")).unwrap();
    fs::remove_dir(m.path("gone")).unwrap();
    let md = dir.metadata().unwrap();
    assert!(md.is_dir());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
    // SAFETY: fdopendir takes a duplicate we own; readdir on an empty, removed directory.
    unsafe {
        let d = libc::fdopendir(libc::dup(fd));
        assert!(!d.is_null(), "errno {}", last_errno());
        let mut names = Vec::new();
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            names.push(std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_owned());
        }
        libc::closedir(d);
        assert!(
            names
                .iter()
                .all(|n| n.as_bytes() == b"." || n.as_bytes() == b"..")
        );
    }
}
