//! The FUSE boundary: turns kernel requests into calls on the operations
//! ([`crate::ops::MirrorFs`]) and their `io::Result`s into replies, nothing else.

pub mod adapter;
