//! Seeded random operations applied both through the mount and to a plain reference
//! directory: every operation must give the same result on both, and at the end the mount,
//! the reference and every replica hold the same tree and bytes.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::{Mirror, tree};

/// xorshift64*: small and reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn path(rng: &mut Rng) -> String {
    let depth = rng.below(3);
    let mut parts: Vec<&str> = (0..depth).map(|_| rng.pick(&["d0", "d1", "d2"])).collect();
    parts.push(rng.pick(&["f0", "f1", "f2", "f3", "d0", "d1", "s0"]));
    parts.join("/")
}

fn outcome<T: std::fmt::Debug>(r: std::io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => {
            format!(
                "err {:?}",
                e.raw_os_error().map_or(e.kind(), |_| ErrorKind::Other)
            ) + &e.raw_os_error().map(|c| c.to_string()).unwrap_or_default()
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        p: String,
        off: u64,
        len: usize,
        byte: u8,
    },
    Append {
        p: String,
        len: usize,
    },
    Truncate {
        p: String,
        len: u64,
    },
    Read {
        p: String,
    },
    MmapWrite {
        p: String,
        off: u64,
        len: usize,
        byte: u8,
    },
    Unlink {
        p: String,
    },
    Mkdir {
        p: String,
    },
    Rmdir {
        p: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        p: String,
    },
    Chmod {
        p: String,
        mode: u32,
    },
    SetXattr {
        p: String,
        value: u8,
    },
    Stat {
        p: String,
    },
    List {
        p: String,
    },
}

fn random_op(rng: &mut Rng, mmap: bool) -> Op {
    let p = path(rng);
    match rng.below(if mmap { 16 } else { 15 }) {
        0 | 1 => Op::Write {
            p,
            off: rng.below(70_000),
            len: 1 + rng.below(20_000) as usize,
            byte: rng.below(256) as u8,
        },
        2 => Op::Append {
            p,
            len: 1 + rng.below(5000) as usize,
        },
        3 => Op::Truncate {
            p,
            len: rng.below(100_000),
        },
        4 => Op::Read { p },
        5 => Op::Unlink { p },
        6 => Op::Mkdir { p },
        7 => Op::Rmdir { p },
        8 | 9 => Op::Rename {
            from: p,
            to: path(rng),
        },
        10 => Op::Link {
            from: p,
            to: path(rng),
        },
        11 => Op::Symlink {
            target: path(rng),
            p,
        },
        12 => Op::Chmod {
            p,
            mode: [0o600, 0o644, 0o755, 0o700][rng.below(4) as usize],
        },
        13 => {
            if rng.below(2) == 0 {
                Op::SetXattr {
                    p,
                    value: rng.below(256) as u8,
                }
            } else {
                Op::Stat { p }
            }
        }
        14 => Op::List { p },
        _ => Op::MmapWrite {
            p,
            off: rng.below(60_000),
            len: 1 + rng.below(9000) as usize,
            byte: rng.below(256) as u8,
        },
    }
}

fn mmap_write(file: &fs::File, off: u64, len: usize, byte: u8) -> std::io::Result<()> {
    let size = file.metadata()?.len();
    if off + len as u64 > size {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    }
    let page = 4096u64;
    let start = off / page * page;
    let map_len = (off + len as u64 - start) as usize;
    // SAFETY: a shared mapping within the file's size, written then unmapped.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            start as i64,
        );
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let bytes = std::slice::from_raw_parts_mut(addr as *mut u8, map_len);
        bytes[(off - start) as usize..].fill(byte);
        libc::msync(addr, map_len, libc::MS_SYNC);
        libc::munmap(addr, map_len);
    }
    Ok(())
}

fn apply(root: &Path, op: &Op) -> String {
    let at = |p: &str| root.join(p);
    match op {
        Op::Write { p, off, len, byte } => outcome(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(at(p))
                .and_then(|f| f.write_all_at(&vec![*byte; *len], *off)),
        ),
        Op::Append { p, len } => outcome(
            OpenOptions::new()
                .append(true)
                .open(at(p))
                .and_then(|mut f| std::io::Write::write_all(&mut f, &vec![b'+'; *len])),
        ),
        Op::Truncate { p, len } => outcome(
            OpenOptions::new()
                .write(true)
                .open(at(p))
                .and_then(|f| f.set_len(*len)),
        ),
        Op::Read { p } => {
            outcome(fs::read(at(p)).map(|d| (d.len(), d.iter().map(|&b| b as u64).sum::<u64>())))
        }
        Op::MmapWrite { p, off, len, byte } => outcome(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(at(p))
                .and_then(|f| mmap_write(&f, *off, *len, *byte)),
        ),
        Op::Unlink { p } => outcome(fs::remove_file(at(p))),
        Op::Mkdir { p } => outcome(fs::create_dir(at(p))),
        Op::Rmdir { p } => outcome(fs::remove_dir(at(p))),
        Op::Rename { from, to } => outcome(fs::rename(at(from), at(to))),
        Op::Link { from, to } => outcome(fs::hard_link(at(from), at(to))),
        Op::Symlink { target, p } => outcome(std::os::unix::fs::symlink(target, at(p))),
        Op::Chmod { p, mode } => outcome(fs::set_permissions(
            at(p),
            fs::Permissions::from_mode(*mode),
        )),
        Op::SetXattr { p, value } => {
            let c = crate::common::cstr(&at(p));
            let name = std::ffi::CString::new("user.random").unwrap();
            // SAFETY: valid strings and a one-byte value.
            let r = unsafe {
                libc::lsetxattr(c.as_ptr(), name.as_ptr(), (value as *const u8).cast(), 1, 0)
            };
            outcome(if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            })
        }
        Op::Stat { p } => outcome(
            fs::symlink_metadata(at(p))
                .map(|m| (m.mode(), m.nlink(), if m.is_dir() { 0 } else { m.len() })),
        ),
        Op::List { p } => outcome(fs::read_dir(at(p)).map(|rd| {
            let mut names: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
            names.sort();
            names
        })),
    }
}

fn run(seed: u64, ops: usize, mmap: bool) {
    let m = Mirror::new(3);
    let reference = m.dir.path().join("reference");
    fs::create_dir(&reference).unwrap();
    let mut rng = Rng(seed);
    for i in 0..ops {
        let op = random_op(&mut rng, mmap);
        let want = apply(&reference, &op);
        let got = apply(&m.mnt, &op);
        assert_eq!(got, want, "seed {seed}, operation {i}: {op:?}");
    }
    let a = tree::snapshot(&reference, false);
    let mut b = tree::snapshot(&m.mnt, false);
    for (path, node) in b.iter_mut() {
        node.mtime = a.get(path).and_then(|n| n.mtime);
    }
    if let Some(diff) = tree::first_difference(&a, &b) {
        panic!("seed {seed}: mount differs from the reference: {diff}");
    }
    m.assert_in_sync();
}

#[test]
fn random_operations_match_a_local_directory() {
    run(0x5eed_0001, 3000, false);
}

#[test]
fn random_operations_with_mmap_match_a_local_directory() {
    run(0x5eed_0002, 3000, true);
}
