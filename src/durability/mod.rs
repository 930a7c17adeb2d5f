//! What makes a change survive a crash and a replica that falls behind: the marks and
//! journal records of what a replica missed ([`record`]), the intents written before a
//! change starts and the settling that voids them ([`intent`]), and in async mode the
//! queues that bring the other replicas level ([`lanes`]).
//!
//! Each works on the shared state ([`crate::engine::shared::Core`]) and its own; none
//! knows the operations or the mount. Uses `sys`, `tree`, `membership` and `engine`.

pub mod intent;
pub mod lanes;
pub mod record;
