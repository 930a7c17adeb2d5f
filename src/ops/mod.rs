//! The operations of the filesystem: the mirror ([`mirror::MirrorFs`]) that owns every
//! layer below, and its operations grouped by concern (names, file contents, attributes,
//! extended attributes, directory listings), each an `async` function that fans its steps
//! out through the engine and records what diverged. Also the emulation of rename flags a
//! replica lacks, and the mirror's report of its own state.
//!
//! Uses every layer below it; only `fuse` and `commands` use it.

pub mod attributes;
pub mod dirs;
pub mod emulate;
pub mod files;
pub mod members;
pub mod mirror;
pub mod namespace;
pub mod report;
pub mod xattrs;

pub use mirror::{FsOptions, MirrorFs};
