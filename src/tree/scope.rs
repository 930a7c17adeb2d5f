//! What a replica that diverged is out of sync for: the unit in which marks, intents and
//! repair name what may differ.

use crate::tree::inode::Ino;

/// What a replica that diverged is out of sync for.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    /// The contents and attributes of one inode, whole (and, for a directory, all below
    /// it).
    Data(Ino),
    /// The attributes (and size) of one inode; for anything but a regular file, as `Data`.
    Meta(Ino),
    /// Bytes `[offset, offset + len)` of a regular file (`len` `u64::MAX`: to its end),
    /// and its size and attributes.
    Range(Ino, u64, u64),
    /// The listing of one directory.
    Entries(Ino),
}

impl Scope {
    pub fn ino(&self) -> Ino {
        match *self {
            Scope::Data(i) | Scope::Meta(i) | Scope::Range(i, _, _) | Scope::Entries(i) => i,
        }
    }
}
