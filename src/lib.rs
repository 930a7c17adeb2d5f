//! mirrorfs: a FUSE filesystem that mirrors one tree onto N replica directories.

pub mod cli;
pub mod control;
pub mod error;
pub mod features;
pub mod fs;
pub mod health;
pub mod liveness;
pub mod logging;
pub mod membership;
pub mod mount;
pub mod mountinfo;
pub mod names;
pub mod repair_cmd;
pub mod replica;
pub mod runtime;
pub mod status;
pub mod sys;
pub mod umount;
