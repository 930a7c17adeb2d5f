//! The `-o` mount options: the usual FUSE and VFS ones, two of mirrorfs's own, and the
//! fstab-only ones that mount(8) passes along and that mean nothing here.

use fuser::{MountOption, SessionACL};

use crate::cli_error;
use crate::error::CliError;

#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    pub kernel: Vec<MountOption>,
    pub acl: SessionACL,
    pub read_only: bool,
    pub fsname: Option<String>,
    pub threads: Option<usize>,
    pub cache_ttl: Option<f64>,
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, CliError> {
    value
        .parse()
        .map_err(|_| cli_error!("mount option {key}={value}: not a valid number"))
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
        let flag = |m: MountOption| -> Result<MountOption, CliError> {
            match value {
                None => Ok(m),
                Some(_) => Err(cli_error!("mount option {key} takes no value")),
            }
        };
        match (key, value) {
            ("allow_other", None) => o.acl = SessionACL::All,
            ("allow_root", None) => o.acl = SessionACL::RootAndOwner,
            ("default_permissions", None) => {}
            ("ro", None) => {
                o.read_only = true;
                o.kernel.push(MountOption::RO);
            }
            ("rw", None) => {
                o.read_only = false;
                o.kernel.retain(|m| *m != MountOption::RO);
            }
            ("fsname", Some(v)) if !v.is_empty() => o.fsname = Some(v.to_string()),
            ("threads", Some(v)) => o.threads = Some(number(key, v)?),
            ("cache_ttl", Some(v)) => o.cache_ttl = Some(number(key, v)?),
            ("defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev", None)
            | ("nofail" | "relatime" | "norelatime" | "strictatime" | "lazytime", None) => {}
            (k, _) if k.starts_with("x-") || k.starts_with("comment=") => {}
            ("suid", _) => o.kernel.push(flag(MountOption::Suid)?),
            ("nosuid", _) => o.kernel.push(flag(MountOption::NoSuid)?),
            ("dev", _) => o.kernel.push(flag(MountOption::Dev)?),
            ("nodev", _) => o.kernel.push(flag(MountOption::NoDev)?),
            ("exec", _) => o.kernel.push(flag(MountOption::Exec)?),
            ("noexec", _) => o.kernel.push(flag(MountOption::NoExec)?),
            ("atime", _) => o.kernel.push(flag(MountOption::Atime)?),
            ("noatime", _) => o.kernel.push(flag(MountOption::NoAtime)?),
            ("sync", _) => o.kernel.push(flag(MountOption::Sync)?),
            ("async", _) => o.kernel.push(flag(MountOption::Async)?),
            ("dirsync", _) => o.kernel.push(flag(MountOption::DirSync)?),
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
        assert!(o.read_only);
        assert_eq!(o.kernel, vec![MountOption::RO]);
        assert_eq!(o.threads, Some(8));
    }

    #[test]
    fn refuses_unknown_options() {
        let e = parse(&["allow_other,bogus".into()]).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        assert!(parse(&["threads=x".into()]).is_err());
        assert!(parse(&["nosuid=1".into()]).is_err());
    }
}
