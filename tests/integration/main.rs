//! Integration tests: each mounts mirrorfs over temporary replica directories and checks,
//! through the mount and directly on every replica, that the replicas hold the same tree.
//! They need root and /dev/fuse.

mod common;

mod bad_input;
mod concurrency;
mod crash;
mod divergence;
mod errnos;
mod faults;
mod files;
mod filesystems;
mod hangs;
mod journal;
mod lifecycle;
mod membership;
mod metadata;
mod modes;
mod namespace;
mod permissions;
mod random_ops;
mod remote;
mod replicas;
mod security;
