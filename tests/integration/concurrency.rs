//! Several threads writing, renaming and deleting in one tree at once: no error a local
//! filesystem would not give, no hang, and identical replicas at the end.

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::Mirror;

#[test]
fn concurrent_writers_renamers_and_deleters_leave_identical_replicas() {
    let m = Arc::new(Mirror::new(3));
    for d in 0..4 {
        fs::create_dir(m.path(&format!("d{d}"))).unwrap();
    }
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for _ in 0..400 {
                    let a = m.path(&format!("d{}/f{}", next() % 4, next() % 8));
                    let b = m.path(&format!("d{}/f{}", next() % 4, next() % 8));
                    let sub = m.path(&format!("d{}/sub{}", next() % 4, next() % 3));
                    let r = match next() % 7 {
                        0 | 1 => fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(&a)
                            .and_then(|f| f.write_all_at(&[t as u8; 3000], next() % 20_000)),
                        2 => fs::rename(&a, &b),
                        3 => fs::remove_file(&a),
                        4 => fs::read(&a).map(drop),
                        5 => fs::create_dir(&sub),
                        _ => fs::remove_dir(&sub),
                    };
                    if let Err(e) = r {
                        let errno = e.raw_os_error().unwrap_or(0);
                        assert!(
                            matches!(
                                errno,
                                libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::EISDIR
                            ),
                            "thread {t}: unexpected {e}"
                        );
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for th in threads {
        while !th.is_finished() {
            assert!(
                Instant::now() < deadline,
                "threads did not finish: deadlock?"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        th.join().unwrap();
    }
    m.assert_in_sync();
    let status = m.status();
    for r in status["daemon"]["replicas"].as_array().unwrap() {
        assert_eq!(r["state"], "in-sync", "{r}");
    }
}
