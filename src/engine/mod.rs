//! Applying a change to a set of replicas.
//!
//! - [`replica`]: one backing directory, addressed only beneath its root descriptor, and
//!   its health; [`features`]: what its filesystem can hold; [`object`]: the object an
//!   attribute change is made on there.
//! - [`liveness`]: calls on a replica that never wait longer than its deadline;
//!   [`executor`]: runs an operation's per-replica steps, rescues it from a replica that
//!   stops answering, hedges slow reads.
//! - [`fanout`]: the outcome rule that combines what the replicas answered.
//! - [`set`]: which replicas take part, and their generations.
//! - [`shared`]: the state every layer above shares: the replicas, the set, the inode
//!   table with its locks, the open handles, and resolving a node on a replica.
//!
//! Uses `sys`, `tree` and `membership`.

pub mod executor;
pub mod fanout;
pub mod features;
pub mod listing;
pub mod liveness;
pub mod object;
pub mod replica;
pub mod set;
pub mod shared;
