//! The kernel's view of the tree, independent of any replica: the inode table (names,
//! lookups, and which replicas are out of sync for each node), the chunks of a file a
//! replica misses, the open file and directory handles, and the conversion of `stat`
//! results into FUSE attributes.
//!
//! Data structures only: nothing here makes a call on a replica. Uses only `sys`.

pub mod attr;
pub mod chunks;
pub mod handles;
pub mod inode;
pub mod scope;
