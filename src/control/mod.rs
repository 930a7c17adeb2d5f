//! The control channel between a mount's daemon and the commands that query it: the
//! socket and its protocol, the status report it carries (the JSON that `mirrorfs health`
//! prints), and the runtime records that say where a mount's daemon is.
//!
//! Plain data and sockets: it knows nothing of the mirror; the daemon answers requests
//! through [`socket::Daemon`]. Uses only `sys`.

pub mod runtime;
pub mod socket;
pub mod status;
