//! The `-o` mount options: the usual FUSE and VFS ones, mirrorfs's own, and the
//! fstab-only ones that mount(8) passes along and that mean nothing here.

use crate::durability::lanes::MaxLag;
use fuser::SessionACL;

use crate::cli_error;
use crate::commands::error::CliError;

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// `MS_*` flags for mount(2).
    pub flags: libc::c_ulong,
    pub acl: SessionACL,
    pub fsname: Option<String>,
    pub threads: Option<usize>,
    pub cache_ttl: Option<f64>,
    pub repair_rate: Option<String>,
    pub settle_interval: Option<u64>,
    pub replica_timeout: Option<f64>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            // Like every FUSE mount: no set-user-ID programs, no device files, unless asked.
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            acl: SessionACL::Owner,
            fsname: None,
            threads: None,
            cache_ttl: None,
            repair_rate: None,
            settle_interval: None,
            replica_timeout: None,
        }
    }
}

impl MountOptions {
    pub fn read_only(&self) -> bool {
        self.flags & libc::MS_RDONLY != 0
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, CliError> {
    value
        .parse()
        .map_err(|_| cli_error!("mount option {key}={value}: not a valid number"))
}

/// A repair rate in bytes per second: a number with an optional K, M or G suffix
/// (binary multiples); 0 for no limit.
pub fn parse_rate(text: &str) -> Result<u64, CliError> {
    parse_size(text)
        .ok_or_else(|| cli_error!("repair rate {text:?}: give bytes per second, like 50M"))
}

/// `--max-lag SIZE[,JOBS]`: bytes (with a K, M or G suffix) and, optionally, jobs a lane
/// may hold.
pub fn parse_max_lag(text: &str) -> Result<MaxLag, CliError> {
    let bad =
        || cli_error!("max lag {text:?}: give bytes and, optionally, operations, like 256M,65536");
    let (bytes, jobs) = match text.split_once(',') {
        Some((b, j)) => (b, Some(j)),
        None => (text, None),
    };
    let bytes = parse_size(bytes).filter(|&b| b > 0).ok_or_else(bad)?;
    let jobs = match jobs {
        Some(j) => j
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&j| j > 0)
            .ok_or_else(bad)?,
        None => MaxLag::DEFAULT.jobs,
    };
    Ok(MaxLag { bytes, jobs })
}

/// A byte count with an optional K, M or G suffix.
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
}

/// The mount flag an option sets (`true`) or clears (`false`).
fn flag(key: &str) -> Option<(libc::c_ulong, bool)> {
    Some(match key {
        "ro" => (libc::MS_RDONLY, true),
        "rw" => (libc::MS_RDONLY, false),
        "nosuid" => (libc::MS_NOSUID, true),
        "suid" => (libc::MS_NOSUID, false),
        "nodev" => (libc::MS_NODEV, true),
        "dev" => (libc::MS_NODEV, false),
        "noexec" => (libc::MS_NOEXEC, true),
        "exec" => (libc::MS_NOEXEC, false),
        "noatime" => (libc::MS_NOATIME, true),
        "atime" => (libc::MS_NOATIME, false),
        "sync" => (libc::MS_SYNCHRONOUS, true),
        "async" => (libc::MS_SYNCHRONOUS, false),
        "dirsync" => (libc::MS_DIRSYNC, true),
        _ => return None,
    })
}

pub fn parse(groups: &[String]) -> Result<MountOptions, CliError> {
    let mut o = MountOptions::default();
    for opt in groups
        .iter()
        .flat_map(|g| g.split(','))
        .filter(|s| !s.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("allow_other", None) => o.acl = SessionACL::All,
            ("allow_root", None) => o.acl = SessionACL::RootAndOwner,
            ("default_permissions", None) => {}
            ("fsname", Some(v)) if !v.is_empty() => o.fsname = Some(v.to_string()),
            ("threads", Some(v)) => o.threads = Some(number(key, v)?),
            ("cache_ttl", Some(v)) => o.cache_ttl = Some(number(key, v)?),
            ("repair_rate", Some(v)) => o.repair_rate = Some(v.to_string()),
            ("settle_interval", Some(v)) => o.settle_interval = Some(number(key, v)?),
            ("replica_timeout", Some(v)) => o.replica_timeout = Some(number(key, v)?),
            ("defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev", None)
            | ("nofail" | "relatime" | "norelatime" | "strictatime" | "lazytime", None) => {}
            (k, _) if k.starts_with("x-") || k.starts_with("comment=") => {}
            (k, None) if flag(k).is_some() => {
                let (bit, set) = flag(k).expect("checked");
                if set {
                    o.flags |= bit;
                } else {
                    o.flags &= !bit;
                }
            }
            (k, Some(_)) if flag(k).is_some() => {
                return Err(cli_error!("mount option {k} takes no value"));
            }
            _ => return Err(cli_error!("unknown mount option {opt:?}")),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fuse_options_and_ignores_fstab_ones() {
        let o = parse(&[
            "allow_other,ro".into(),
            "nofail,x-systemd.automount,threads=8".into(),
        ])
        .unwrap();
        assert_eq!(o.acl, SessionACL::All);
        assert!(o.read_only());
        assert_eq!(o.flags, libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV);
        assert_eq!(o.threads, Some(8));
        let o = parse(&["suid,dev,noexec".into()]).unwrap();
        assert_eq!(o.flags, libc::MS_NOEXEC);
    }

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("0").unwrap(), 0);
        assert_eq!(parse_rate("50M").unwrap(), 50 << 20);
        assert_eq!(parse_rate("2G").unwrap(), 2 << 30);
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn refuses_unknown_options() {
        let e = parse(&["allow_other,bogus".into()]).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        assert!(parse(&["threads=x".into()]).is_err());
        assert!(parse(&["nosuid=1".into()]).is_err());
    }
}
