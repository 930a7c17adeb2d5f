//! mirrorfs: a FUSE filesystem that mirrors one tree onto N replica directories.
//!
//! The modules are layers, lowest first; each uses only the layers below it (the edges
//! allowed are listed in `layers.txt` and checked by `tests/layers.rs`). ARCHITECTURE.md
//! describes them and follows a request through them.

pub mod commands;
pub mod control;
pub mod durability;
pub mod engine;
pub mod fuse;
pub mod membership;
pub mod ops;
pub mod repair;
pub mod sys;
pub mod tree;
