//! Going to the background: the mount command forks, the child becomes the daemon, and
//! the parent waits until the child reports that the mount is ready (exit 0) or why it
//! failed (the message, exit 1).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::cli_error;
use crate::commands::error::CliError;

/// The daemon's end of the readiness pipe.
#[derive(Debug)]
pub struct Ready {
    pipe: Option<File>,
}

impl Ready {
    /// Tells the waiting parent that the mount is ready.
    pub fn ok(&mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(b"ok\n");
        }
    }

    /// Tells the waiting parent why the mount failed.
    pub fn fail(&mut self, message: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(message.as_bytes());
        }
    }
}

fn redirect(from: &impl AsRawFd, to: i32) -> Result<(), CliError> {
    // SAFETY: both are open descriptors.
    if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
        return Err(cli_error!(
            "cannot redirect output: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Forks. Returns only in the child, with stdin and stdout on /dev/null and stderr on
/// `log`; the parent exits once the child reports.
pub fn detach(log: &File) -> Result<Ready, CliError> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(cli_error!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new descriptors that we now own.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet, so the child starts in a consistent state.
    match unsafe { libc::fork() } {
        -1 => Err(cli_error!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(read_end);
            // SAFETY: plain system calls in the new child.
            unsafe { libc::setsid() };
            // Do not keep the caller's working directory (and its filesystem) busy.
            std::env::set_current_dir("/")
                .map_err(|e| cli_error!("chdir /: {}", crate::sys::describe(&e)))?;
            let null = File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| cli_error!("/dev/null: {}", crate::sys::describe(&e)))?;
            redirect(&null, 0)?;
            redirect(&null, 1)?;
            redirect(log, 2)?;
            Ok(Ready {
                pipe: Some(File::from(write_end)),
            })
        }
        child => {
            drop(write_end);
            let mut report = String::new();
            let _ = File::from(read_end).read_to_string(&mut report);
            if report == "ok\n" {
                std::process::exit(0);
            }
            if report.is_empty() {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                report = if libc::WIFSIGNALED(status) {
                    format!(
                        "the daemon was killed by signal {} before the mount was ready",
                        libc::WTERMSIG(status)
                    )
                } else {
                    format!(
                        "the daemon exited with status {} before the mount was ready",
                        libc::WEXITSTATUS(status)
                    )
                };
            }
            eprintln!("mirrorfs: {}", report.trim_end());
            std::process::exit(1);
        }
    }
}
