//! File contents through the mount: open flags, reads and writes, truncation, mmap,
//! fallocate, sparse seeks, copy_file_range, fsync and locks.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use crate::common::{Mirror, last_errno};

#[test]
fn write_read_append_and_truncate_reach_every_replica() {
    let m = Mirror::new(3);
    let p = m.path("file");
    fs::write(&p, b"hello world").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello world");

    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b", again").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello world, again");

    // O_TRUNC empties the file on every replica.
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"short").unwrap();
    drop(f);
    // ftruncate grows with zeros, truncate shrinks.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(8).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"short\0\0\0");
    m.assert_in_sync();
    for i in 0..3 {
        assert_eq!(fs::read(m.replica(i, "file")).unwrap(), b"short\0\0\0");
    }
}

#[test]
fn positional_writes_and_large_files_stay_identical() {
    let m = Mirror::new(2);
    let p = m.path("big");
    let f = File::create(&p).unwrap();
    let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for i in 0..8u64 {
        f.write_all_at(&block, i * (1 << 20)).unwrap();
    }
    f.write_all_at(b"patch", 3 * (1 << 20) + 17).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut back = Vec::new();
    File::open(&p).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 8 << 20);
    assert_eq!(&back[3 * (1 << 20) + 17..][..5], b"patch");
    m.assert_in_sync();
}

#[test]
fn create_exclusive_and_open_flags_behave_like_a_local_filesystem() {
    let m = Mirror::new(2);
    let p = m.path("x");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    // O_CREAT without O_EXCL opens the existing file.
    fs::write(&p, b"kept").unwrap();
    let mut s = String::new();
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "kept");
    // O_DIRECTORY on a file, O_NOFOLLOW on a symlink.
    let e = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(&p)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    std::os::unix::fs::symlink("x", m.path("link")).unwrap();
    let e = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(m.path("link"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    // O_APPEND writes land at the end even after a seek.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"+").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"kept+");
    m.assert_in_sync();
}

#[test]
fn mmap_writes_reach_every_replica() {
    let m = Mirror::new(3);
    let p = m.path("mapped");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let len = 3 * 4096 + 100;
    f.set_len(len as u64).unwrap();
    // SAFETY: a fresh shared mapping of a file we own, unmapped below.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        let bytes = std::slice::from_raw_parts_mut(addr as *mut u8, len);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i % 7) as u8 + b'a';
        }
        assert_eq!(libc::msync(addr, len, libc::MS_SYNC), 0);
        libc::munmap(addr, len);
    }
    drop(f);
    let expected: Vec<u8> = (0..len).map(|i| (i % 7) as u8 + b'a').collect();
    for i in 0..3 {
        assert_eq!(
            fs::read(m.replica(i, "mapped")).unwrap(),
            expected,
            "replica {i}"
        );
    }
    m.assert_in_sync();
}

#[test]
fn fallocate_punch_hole_and_sparse_seeks() {
    let m = Mirror::new(2);
    let p = m.path("sparse");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: fallocate and lseek on our open descriptor.
    unsafe {
        assert_eq!(
            libc::fallocate(fd, 0, 0, 1 << 20),
            0,
            "errno {}",
            last_errno()
        );
        f.write_all_at(&vec![7u8; 1 << 20], 0).unwrap();
        assert_eq!(
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                4096,
                65536
            ),
            0
        );
        assert_eq!(
            libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20),
            0
        );
        f.write_all_at(b"end", 8 << 20).unwrap();
        assert_eq!(libc::lseek(fd, 0, libc::SEEK_HOLE), 4096);
        assert_eq!(libc::lseek(fd, 4096, libc::SEEK_DATA), 4096 + 65536);
        let hole = libc::lseek(fd, 1 << 20, libc::SEEK_HOLE);
        assert!(hole >= 1 << 20, "hole at {hole}");
    }
    assert_eq!(f.metadata().unwrap().len(), (8 << 20) + 3);
    drop(f);
    let data = fs::read(&p).unwrap();
    assert!(data[4096..4096 + 65536].iter().all(|&b| b == 0));
    assert!(data[..4096].iter().all(|&b| b == 7));
    m.assert_in_sync();
}

#[test]
fn copy_file_range_copies_on_every_replica() {
    let m = Mirror::new(3);
    let src: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 256) as u8).collect();
    fs::write(m.path("src"), &src).unwrap();
    let a = File::open(m.path("src")).unwrap();
    let b = File::create(m.path("dst")).unwrap();
    let mut off_in: i64 = 1000;
    let mut off_out: i64 = 10;
    // SAFETY: copy_file_range between two open descriptors with local offsets.
    let n = unsafe {
        libc::copy_file_range(
            a.as_raw_fd(),
            &mut off_in,
            b.as_raw_fd(),
            &mut off_out,
            200_000,
            0,
        )
    };
    assert_eq!(n, 200_000, "errno {}", last_errno());
    drop((a, b));
    let dst = fs::read(m.path("dst")).unwrap();
    assert_eq!(&dst[10..], &src[1000..201_000]);
    assert_eq!(&dst[..10], &[0u8; 10]);
    m.assert_in_sync();
}

#[test]
fn fsync_fdatasync_and_fsyncdir_succeed() {
    let m = Mirror::new(2);
    let f = File::create(m.path("f")).unwrap();
    (&f).write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    File::open(m.mnt.clone()).unwrap().sync_all().unwrap();
    m.assert_in_sync();
}

#[test]
fn flock_and_posix_locks_behave_like_a_local_filesystem() {
    let m = Mirror::new(2);
    fs::write(m.path("lockme"), b"x").unwrap();
    let a = File::open(m.path("lockme")).unwrap();
    let b = File::open(m.path("lockme")).unwrap();
    // SAFETY: flock on open descriptors.
    unsafe {
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(
            libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
        assert_eq!(last_errno(), libc::EWOULDBLOCK);
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
    }
    // A POSIX lock held here blocks another process.
    let w = OpenOptions::new()
        .write(true)
        .open(m.path("lockme"))
        .unwrap();
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: fcntl with a valid flock struct.
    assert_eq!(
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETLK, &lock) },
        0
    );
    // Another process must not get it. The child only makes async-signal-safe calls.
    let path = crate::common::cstr(&m.path("lockme"));
    // SAFETY: fork; the child uses open, fcntl and _exit only.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe calls in the child.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            let r = libc::fcntl(fd, libc::F_SETLK, &lock);
            let busy = r == -1 && matches!(*libc::__errno_location(), libc::EAGAIN | libc::EACCES);
            libc::_exit(if busy { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: wait for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child got the lock"
    );
}

#[test]
fn copy_file_range_racing_writes_to_its_source_keeps_replicas_identical() {
    let m = std::sync::Arc::new(Mirror::new(3));
    fs::write(m.path("src"), vec![1u8; 256 * 1024]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = OpenOptions::new().write(true).open(m.path("src")).unwrap();
            let mut n = 0u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n = n.wrapping_add(1);
                f.write_all_at(&vec![n; 64 * 1024], (n as u64 % 4) * 64 * 1024)
                    .unwrap();
            }
        })
    };
    let src = File::open(m.path("src")).unwrap();
    let dst = File::create(m.path("dst")).unwrap();
    for _ in 0..200 {
        let (mut i, mut o) = (0i64, 0i64);
        // SAFETY: copy_file_range between open descriptors with local offsets.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut i,
                dst.as_raw_fd(),
                &mut o,
                256 * 1024,
                0,
            )
        };
        assert_eq!(n, 256 * 1024, "errno {}", last_errno());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    drop((src, dst));
    m.assert_in_sync();
}

#[test]
fn ftruncate_leaves_one_mtime_everywhere() {
    let m = Mirror::new(3);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("t"))
        .unwrap();
    f.write_all_at(&[5u8; 100_000], 0).unwrap();
    f.sync_all().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    f.set_len(1000).unwrap();
    drop(f);
    m.assert_in_sync();
}
