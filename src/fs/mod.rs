//! The FUSE filesystem: a mirror of N replica directories behind one mount point.

pub mod attr;
pub mod attributes;
pub mod chunks;
pub mod dirs;
pub mod emulate;
pub mod engine;
pub mod fanout;
pub mod files;
pub mod fuse_adapter;
pub mod handles;
pub mod inode;
pub mod intent;
pub mod lanes;
pub mod mirror;
pub mod namespace;
pub mod object;
pub mod probe;
pub mod record;
pub mod repair;
pub mod report;
pub mod set;
pub mod xattrs;

pub use mirror::{FsOptions, MirrorFs};
