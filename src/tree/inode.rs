//! The inode table: the kernel's view of the tree, independent of any one replica.
//!
//! mirrorfs hands the kernel its own inode numbers. Each node records the names it is
//! known by (parent inode + name), so any replica can be addressed by walking names from
//! its root; no node holds a replica's file descriptor or depends on one replica's inode
//! numbers. Files with several hard links are also indexed by their backing identities
//! (replica, device, inode) on every replica they were seen on, so that every name of one
//! file maps to one inode number.
//!
//! The table also carries, per node, which replicas are out of sync for it: `stale_data`
//! (the node's own contents or attributes are missing or outdated there) and
//! `stale_entries` (a directory's listing differs there). A regular file's data mark may
//! be partial: only some chunks of its contents (and its size and attributes) differ. A named node with marks stays in
//! the table, with its ancestors, until the marks are cleared, so the path to repair is
//! never lost.
//!
//! A node lives while the kernel holds lookups on it, while it has children in the table,
//! while a file or directory handle is open on it, or while it has a name and marks.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;

use fuser::FileType;

use crate::tree::chunks::Chunks;

pub type Ino = u64;

/// The most separate chunk ranges a file's mark keeps before it covers the whole file.
const MAX_RANGES: usize = 4096;
pub const ROOT: Ino = 1;

/// A name in a directory, shared between the parent's child map and the child's links.
pub type Name = Arc<OsStr>;

/// A bit set of replica indexes.
pub type ReplicaSet = u32;

/// What a new mark covers that was not marked before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// The node's contents (or listing) whole.
    Whole,
    /// Chunks `[first, end)` of a regular file, and its size and attributes.
    Chunks(u64, u64),
}

/// Where a hard-linked file lives on one replica: replica index, device, inode.
pub type BackingKey = (usize, u64, u64);

#[derive(Clone, Debug)]
struct Link {
    parent: Ino,
    name: Name,
}

#[derive(Debug)]
struct Node {
    kind: FileType,
    nlookup: u64,
    open: u32,
    /// The first known name (further hard links are in `rare`).
    link: Option<Link>,
    /// Boxed so that the many nodes without children stay small.
    #[allow(clippy::box_collection)]
    children: Option<Box<HashMap<Name, Ino>>>,
    stale_data: ReplicaSet,
    stale_entries: ReplicaSet,
    /// Bumped by every mark, so that repair clears a mark only if nothing marked the node
    /// again while it worked.
    mark_seq: u32,
    /// What few nodes have, out of line: the table holds a node per inode the kernel
    /// knows, and a plain one stays small.
    rare: Option<Box<Rare>>,
}

/// The parts of a node that most nodes lack.
#[derive(Debug, Default)]
struct Rare {
    /// Hard links beyond the first known name.
    extra_links: Vec<Link>,
    /// Backing identities of a node seen with several hard links.
    keys: Option<Box<[BackingKey]>>,
    /// Replicas of `stale_data` that miss only these chunks of a regular file; the others
    /// miss its contents whole.
    partial: Vec<(usize, Chunks)>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.extra_links.is_empty() && self.keys.is_none() && self.partial.is_empty()
    }
}

impl Node {
    fn new(kind: FileType) -> Node {
        Node {
            kind,
            nlookup: 0,
            open: 0,
            link: None,
            children: None,
            stale_data: 0,
            stale_entries: 0,
            mark_seq: 0,
            rare: None,
        }
    }

    fn has_links(&self) -> bool {
        self.link.is_some()
    }

    fn child_count(&self) -> usize {
        self.children.as_ref().map_or(0, |c| c.len())
    }

    fn is_marked(&self) -> bool {
        self.stale_data != 0 || self.stale_entries != 0
    }

    /// Whether anything still needs the node.
    fn pinned(&self) -> bool {
        self.nlookup > 0
            || self.open > 0
            || self.child_count() > 0
            || (self.has_links() && self.is_marked())
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Drops the out-of-line part once it holds nothing.
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_empty()) {
            self.rare = None;
        }
    }

    fn extra_links(&self) -> &[Link] {
        self.rare.as_ref().map_or(&[], |r| &r.extra_links)
    }

    fn keys(&self) -> Option<&[BackingKey]> {
        self.rare.as_ref()?.keys.as_deref()
    }

    fn partial(&self) -> &[(usize, Chunks)] {
        self.rare.as_ref().map_or(&[], |r| &r.partial)
    }

    /// Replicas whose data mark is partial.
    fn partial_set(&self) -> ReplicaSet {
        self.partial().iter().fold(0, |s, (r, _)| s | (1 << r))
    }

    fn partial_mut(&mut self, replica: usize) -> Option<&mut Chunks> {
        self.rare
            .as_mut()?
            .partial
            .iter_mut()
            .find(|(r, _)| *r == replica)
            .map(|(_, c)| c)
    }

    fn drop_partial(&mut self, replica: usize) {
        if let Some(rare) = self.rare.as_mut() {
            rare.partial.retain(|(r, _)| *r != replica);
        }
        self.tidy();
    }

    fn remove_link(&mut self, parent: Ino, name: &OsStr) {
        let matches = |l: &Link| l.parent == parent && &*l.name == name;
        if self.link.as_ref().is_some_and(matches) {
            self.link = self
                .rare
                .as_mut()
                .filter(|r| !r.extra_links.is_empty())
                .map(|r| r.extra_links.remove(0));
        } else if let Some(rare) = self.rare.as_mut() {
            rare.extra_links.retain(|l| !matches(l));
        }
        self.tidy();
    }
}

/// The table. Callers wrap it in a mutex and hold the lock only for these in-memory steps,
/// never across replica I/O.
#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<Ino, Node>,
    by_key: HashMap<BackingKey, Ino>,
    next_ino: Ino,
    /// Count of marked nodes, so the common "nothing is stale" case skips ancestor walks.
    marked: usize,
    /// Nodes an unsettled intent record names by path: kept even once the kernel forgot
    /// them, so that the journal, compacted, still names them by where they are now.
    held: HashSet<Ino>,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    pub fn new() -> InodeTable {
        let mut nodes = HashMap::new();
        let mut root = Node::new(FileType::Directory);
        root.nlookup = 1;
        nodes.insert(ROOT, root);
        InodeTable {
            nodes,
            by_key: HashMap::new(),
            next_ino: ROOT + 1,
            marked: 0,
            held: HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn contains(&self, ino: Ino) -> bool {
        self.nodes.contains_key(&ino)
    }

    pub fn kind(&self, ino: Ino) -> Option<FileType> {
        self.nodes.get(&ino).map(|n| n.kind)
    }

    /// The inode a name in a directory is known as, if the table has it.
    pub fn child(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.nodes
            .get(&parent)?
            .children
            .as_ref()?
            .get(name)
            .copied()
    }

    /// Every known name of `ino`, the first one first.
    pub fn links(&self, ino: Ino) -> Vec<(Ino, Name)> {
        self.nodes.get(&ino).map_or_else(Vec::new, |n| {
            n.link
                .iter()
                .chain(n.extra_links().iter())
                .map(|l| (l.parent, l.name.clone()))
                .collect()
        })
    }

    /// One name of `ino`: its parent and name, or `None` for the root and for nodes whose
    /// every name has been removed (unlinked but still open).
    pub fn location(&self, ino: Ino) -> Option<(Ino, Name)> {
        let link = self.nodes.get(&ino)?.link.as_ref()?;
        Some((link.parent, link.name.clone()))
    }

    /// The path of `ino` relative to a replica root (empty for the root), or `None` when
    /// the node has no name left.
    pub fn relative_path(&self, ino: Ino) -> Option<PathBuf> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let link = self.nodes.get(&cur)?.link.as_ref()?;
            parts.push(&link.name);
            cur = link.parent;
        }
        Some(parts.iter().rev().collect())
    }

    /// A path for messages: `/dir/file` as seen through the mount.
    pub fn display_path(&self, ino: Ino) -> String {
        match self.relative_path(ino) {
            Some(p) => format!("/{}", p.display()),
            None => format!("<inode {ino} (unlinked)>"),
        }
    }

    fn alloc(&mut self, kind: FileType) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node::new(kind));
        ino
    }

    fn attach(&mut self, ino: Ino, parent: Ino, name: Name) {
        let p = self
            .nodes
            .get_mut(&parent)
            .expect("parent of a new link is in the table");
        p.children
            .get_or_insert_with(Default::default)
            .insert(name.clone(), ino);
        let node = self
            .nodes
            .get_mut(&ino)
            .expect("linked node is in the table");
        let link = Link { parent, name };
        if node.link.is_none() {
            node.link = Some(link);
        } else {
            node.rare().extra_links.push(link);
        }
    }

    /// Removes the name `parent/name` from the table (the child stays if referenced).
    fn detach(&mut self, parent: Ino, name: &OsStr) -> Option<Ino> {
        let p = self.nodes.get_mut(&parent)?;
        let children = p.children.as_mut()?;
        let ino = children.remove(name)?;
        if children.is_empty() {
            p.children = None;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.remove_link(parent, name);
        }
        self.drop_stale_keys(ino);
        Some(ino)
    }

    /// Records one kernel lookup of `parent/name`, which the replicas report as `kind`.
    /// `keys` are its backing identities; with `multi_link` (a file with several hard
    /// links) they index the node, and in any case a node they already index is reused.
    /// Returns the inode number.
    pub fn lookup(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: FileType,
        keys: &[BackingKey],
        multi_link: bool,
    ) -> Ino {
        if let Some(ino) = self.child(parent, name) {
            if self.nodes[&ino].kind == kind {
                if multi_link
                    && let Some(other) = self.merge_by_identity(ino, parent, name, kind, keys)
                {
                    self.nodes.get_mut(&other).expect("merged into").nlookup += 1;
                    return other;
                }
                if multi_link {
                    self.add_keys(ino, keys);
                }
                self.nodes.get_mut(&ino).expect("child exists").nlookup += 1;
                return ino;
            }
            // The replica holds something else under that name now: forget the old one.
            self.detach(parent, name);
            self.collect(ino);
        }
        let known = keys
            .iter()
            .find_map(|k| self.by_key.get(k).copied())
            .filter(|ino| self.nodes[ino].kind == kind);
        let ino = known.unwrap_or_else(|| self.alloc(kind));
        if multi_link {
            self.add_keys(ino, keys);
        }
        self.attach(ino, parent, Arc::from(name));
        self.nodes.get_mut(&ino).expect("just attached").nlookup += 1;
        ino
    }

    /// A node made for a name alone (to carry a repair mark, never seen by the kernel)
    /// may turn out to be a hard link of a file the table knows by identity: the name
    /// moves to that file's node, with the marks. Returns that node.
    fn merge_by_identity(
        &mut self,
        named: Ino,
        parent: Ino,
        name: &OsStr,
        kind: FileType,
        keys: &[BackingKey],
    ) -> Option<Ino> {
        let node = &self.nodes[&named];
        if node.keys().is_some() || node.nlookup > 0 || node.open > 0 {
            return None;
        }
        let other = keys
            .iter()
            .find_map(|k| self.by_key.get(k).copied())
            .filter(|o| *o != named && self.nodes[o].kind == kind)?;
        let (data, entries) = (node.stale_data, node.stale_entries);
        self.detach(parent, name);
        self.collect(named);
        for r in (0..32).filter(|r| data & (1 << r) != 0) {
            self.mark_data(other, r);
        }
        for r in (0..32).filter(|r| entries & (1 << r) != 0) {
            self.mark_entries(other, r);
        }
        self.add_keys(other, keys);
        self.attach(other, parent, Arc::from(name));
        Some(other)
    }

    fn add_keys(&mut self, ino: Ino, keys: &[BackingKey]) {
        let node = self.nodes.get_mut(&ino).expect("node exists");
        let mut all: Vec<BackingKey> = node.keys().map(Vec::from).unwrap_or_default();
        for k in keys {
            if !all.contains(k) {
                all.push(*k);
                self.by_key.insert(*k, ino);
            }
        }
        node.rare().keys = Some(all.into_boxed_slice());
    }

    /// Records a new hard link `parent/name` to `ino` made through the mount, and the
    /// kernel lookup that the reply carries.
    pub fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr, keys: &[BackingKey]) {
        if let Some(old) = self.detach(parent, name) {
            self.collect(old);
        }
        self.add_keys(ino, keys);
        self.attach(ino, parent, Arc::from(name));
        self.nodes
            .get_mut(&ino)
            .expect("linked node exists")
            .nlookup += 1;
    }

    /// Drops `n` kernel lookups.
    pub fn forget(&mut self, ino: Ino, n: u64) -> Vec<Ino> {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.nlookup = node.nlookup.saturating_sub(n);
        }
        self.collect(ino)
    }

    /// An unsettled intent record names `ino` by its path: keep it until
    /// [`InodeTable::release`].
    pub fn hold(&mut self, ino: Ino) {
        self.held.insert(ino);
    }

    /// The intents that named `inos` are settled; returns the nodes nothing needs any
    /// longer, now dropped.
    pub fn release(&mut self, inos: &[Ino]) -> Vec<Ino> {
        let mut gone = Vec::new();
        for ino in inos {
            if self.held.remove(ino) {
                gone.extend(self.collect(*ino));
            }
        }
        gone
    }

    /// An unlink or rmdir of `parent/name` succeeded.
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Vec<Ino> {
        let mut gone = Vec::new();
        if let Some(ino) = self.detach(parent, name) {
            gone.extend(self.collect(ino));
        }
        gone.extend(self.collect(parent));
        gone
    }

    /// A rename succeeded; `exchange` for `RENAME_EXCHANGE`.
    pub fn rename(
        &mut self,
        old_parent: Ino,
        old_name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        exchange: bool,
    ) -> Vec<Ino> {
        let mut gone = Vec::new();
        let moving = self.detach(old_parent, old_name);
        let displaced = self.detach(new_parent, new_name);
        if let Some(ino) = moving {
            self.attach(ino, new_parent, Arc::from(new_name));
        }
        match (displaced, exchange) {
            (Some(ino), true) => self.attach(ino, old_parent, Arc::from(old_name)),
            (Some(ino), false) => gone.extend(self.collect(ino)),
            (None, _) => {}
        }
        gone.extend(self.collect(old_parent));
        gone.extend(self.collect(new_parent));
        gone
    }

    pub fn open(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open += 1;
        }
    }

    pub fn close(&mut self, ino: Ino) -> Vec<Ino> {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open = node.open.saturating_sub(1);
        }
        self.drop_stale_keys(ino);
        self.collect(ino)
    }

    /// A node with no name and no open handle may name a backing file that no longer
    /// exists, whose identity a new file can get: it must not be found by identity.
    fn drop_stale_keys(&mut self, ino: Ino) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if node.has_links() || node.open > 0 {
            return;
        }
        let keys = node.rare.as_mut().and_then(|r| r.keys.take());
        node.tidy();
        for key in keys.iter().flatten() {
            if self.by_key.get(key) == Some(&ino) {
                self.by_key.remove(key);
            }
        }
    }

    /// Removes `ino` if nothing references it, then its parents in turn. Returns the
    /// removed inode numbers.
    fn collect(&mut self, ino: Ino) -> Vec<Ino> {
        let mut gone = Vec::new();
        let mut pending = vec![ino];
        while let Some(ino) = pending.pop() {
            let Some(node) = self.nodes.get(&ino) else {
                continue;
            };
            if ino == ROOT || node.pinned() || self.held.contains(&ino) {
                continue;
            }
            let node = self.nodes.remove(&ino).expect("checked above");
            if node.is_marked() {
                self.marked -= 1;
            }
            for key in node.keys().into_iter().flatten() {
                if self.by_key.get(key) == Some(&ino) {
                    self.by_key.remove(key);
                }
            }
            for link in node.link.iter().chain(node.extra_links()) {
                if let Some(p) = self.nodes.get_mut(&link.parent) {
                    if let Some(children) = p.children.as_mut() {
                        children.remove(&link.name);
                        if children.is_empty() {
                            p.children = None;
                        }
                    }
                    pending.push(link.parent);
                }
            }
            gone.push(ino);
        }
        gone
    }

    /// Replicas whose copy of `ino` (and of every directory above it) is current. `all` is
    /// the set of replicas to start from.
    pub fn fresh(&self, ino: Ino, all: ReplicaSet) -> ReplicaSet {
        if self.marked == 0 {
            return all;
        }
        let mut set = all;
        let mut cur = ino;
        loop {
            let Some(node) = self.nodes.get(&cur) else {
                return set;
            };
            // A directory above whose attributes alone are out of date does not make what
            // is below it so.
            let stale = if cur == ino {
                node.stale_data
            } else {
                node.stale_data & !node.partial_set()
            };
            set &= !stale;
            match &node.link {
                Some(link) if cur != ROOT => cur = link.parent,
                _ => return set,
            }
        }
    }

    /// Replicas whose listing of directory `ino` is current and that hold it.
    pub fn fresh_entries(&self, ino: Ino, all: ReplicaSet) -> ReplicaSet {
        let set = self.fresh(ino, all);
        match self.nodes.get(&ino) {
            Some(node) => set & !node.stale_entries,
            None => set,
        }
    }

    /// Marks `replica` out of sync for the whole contents of `ino`. Returns true if the
    /// mark is new or grew (so the caller logs and records it once).
    pub fn mark_data(&mut self, ino: Ino, replica: usize) -> bool {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        let grew = node.partial_mut(replica).is_some();
        node.drop_partial(replica);
        self.mark(ino, replica, false) || grew
    }

    /// Marks `replica` out of sync for chunks `[first, end)` of regular file `ino` and its
    /// size and attributes (an empty range: those alone); any other kind of node is
    /// marked whole. Returns what is newly marked, or `None` when the replica was marked
    /// for all of it already.
    pub fn mark_chunks(&mut self, ino: Ino, replica: usize, first: u64, end: u64) -> Option<Added> {
        let node = self.nodes.get_mut(&ino)?;
        // Every mark, new or not, tells a repair under way that the node changed again.
        node.mark_seq = node.mark_seq.wrapping_add(1);
        let attributes_only = first >= end;
        let partial_kind = node.kind == FileType::RegularFile
            || (node.kind == FileType::Directory && attributes_only);
        if !partial_kind {
            return self.mark(ino, replica, false).then_some(Added::Whole);
        }
        if node.stale_data & (1 << replica) == 0 {
            let mut chunks = Chunks::default();
            chunks.mark(first, end);
            node.rare().partial.push((replica, chunks));
            self.mark(ino, replica, false);
            return Some(Added::Chunks(first, end.max(first)));
        }
        if node.kind == FileType::Directory {
            return None;
        }
        let chunks = node.partial_mut(replica)?;
        let (a, b) = chunks.mark(first, end)?;
        if chunks.ranges().len() > MAX_RANGES {
            // Too scattered to keep by range: the whole file.
            node.drop_partial(replica);
            return Some(Added::Whole);
        }
        Some(Added::Chunks(a, b))
    }

    /// Whether `replica` is marked for the whole contents of `ino`.
    pub fn marked_whole(&self, ino: Ino, replica: usize) -> bool {
        self.nodes.get(&ino).is_some_and(|n| {
            n.stale_data & (1 << replica) != 0 && !n.partial().iter().any(|(r, _)| *r == replica)
        })
    }

    /// The chunks `replica` misses of `ino`: `None` for all of them (or no mark).
    pub fn stale_chunks(&self, ino: Ino, replica: usize) -> Option<Chunks> {
        let node = self.nodes.get(&ino)?;
        node.partial()
            .iter()
            .find(|(r, _)| *r == replica)
            .map(|(_, c)| c.clone())
    }

    /// Marks `replica` out of sync for the listing of directory `ino`.
    pub fn mark_entries(&mut self, ino: Ino, replica: usize) -> bool {
        self.mark(ino, replica, true)
    }

    fn mark(&mut self, ino: Ino, replica: usize, entries: bool) -> bool {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        let was_marked = node.is_marked();
        let bit = 1 << replica;
        let field = if entries {
            &mut node.stale_entries
        } else {
            &mut node.stale_data
        };
        let new = *field & bit == 0;
        *field |= bit;
        node.mark_seq = node.mark_seq.wrapping_add(1);
        if !was_marked {
            self.marked += 1;
        }
        new
    }

    /// The node's mark sequence, to pass back to [`InodeTable::clear`].
    pub fn mark_seq(&self, ino: Ino) -> Option<u32> {
        self.nodes.get(&ino).map(|n| n.mark_seq)
    }

    /// Clears `replica`'s mark on `ino` (its listing, with `entries`, else its contents)
    /// if no mark was made since `seq` was read. Returns whether it was cleared, and the
    /// inodes that left the table as a result.
    pub fn clear(&mut self, ino: Ino, replica: usize, entries: bool, seq: u32) -> (bool, Vec<Ino>) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return (true, Vec::new());
        };
        if node.mark_seq != seq {
            return (false, Vec::new());
        }
        let was_marked = node.is_marked();
        let bit = 1 << replica;
        if entries {
            node.stale_entries &= !bit;
        } else {
            node.stale_data &= !bit;
            node.drop_partial(replica);
        }
        if was_marked && !node.is_marked() {
            self.marked -= 1;
        }
        (true, self.collect(ino))
    }

    /// Drops every mark of `replica` (it will be compared in full instead).
    pub fn clear_replica(&mut self, replica: usize) -> Vec<Ino> {
        let bit = 1 << replica;
        let mut touched = Vec::new();
        for (&ino, node) in self.nodes.iter_mut() {
            if (node.stale_data | node.stale_entries) & bit == 0 {
                continue;
            }
            node.stale_data &= !bit;
            node.stale_entries &= !bit;
            node.drop_partial(replica);
            if !node.is_marked() {
                self.marked -= 1;
            }
            touched.push(ino);
        }
        touched
            .into_iter()
            .flat_map(|ino| self.collect(ino))
            .collect()
    }

    /// Makes sure the table has a node for `parent/name` (a replica's listing needs
    /// repair below it), without counting a kernel lookup. Returns its inode number.
    pub fn ensure_child(&mut self, parent: Ino, name: &OsStr, kind: FileType) -> Ino {
        match self.child(parent, name) {
            Some(ino) if self.nodes[&ino].kind == kind => ino,
            existing => {
                if existing.is_some() {
                    self.detach(parent, name);
                }
                let ino = self.alloc(kind);
                self.attach(ino, parent, Arc::from(name));
                ino
            }
        }
    }

    /// Whether `ino` is open through the mount.
    pub fn is_open(&self, ino: Ino) -> bool {
        self.nodes.get(&ino).is_some_and(|n| n.open > 0)
    }

    /// Whether `ino` was seen with several hard links (it is indexed by backing identity).
    pub fn multi_link(&self, ino: Ino) -> bool {
        self.nodes.get(&ino).is_some_and(|n| n.keys().is_some())
    }

    /// The marks on `ino`: (replicas stale for data, replicas stale for entries).
    pub fn marks_on(&self, ino: Ino) -> Option<(ReplicaSet, ReplicaSet)> {
        self.nodes
            .get(&ino)
            .filter(|n| n.is_marked())
            .map(|n| (n.stale_data, n.stale_entries))
    }

    /// How many marked nodes there are.
    pub fn marked_count(&self) -> usize {
        self.marked
    }

    /// The replicas with any mark.
    pub fn marked_replicas(&self) -> ReplicaSet {
        if self.marked == 0 {
            return 0;
        }
        self.nodes
            .values()
            .filter(|n| n.is_marked())
            .fold(0, |set, n| set | n.stale_data | n.stale_entries)
    }

    /// Every mark: (inode, replicas stale for data, replicas stale for entries).
    pub fn marks(&self) -> Vec<(Ino, ReplicaSet, ReplicaSet)> {
        if self.marked == 0 {
            return Vec::new();
        }
        let mut out: Vec<_> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.is_marked())
            .map(|(&ino, n)| (ino, n.stale_data, n.stale_entries))
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn lookups_of_one_name_share_an_inode_and_forget_removes_it() {
        let mut t = InodeTable::new();
        let a = t.lookup(ROOT, name("a"), FileType::Directory, &[], false);
        assert_eq!(
            t.lookup(ROOT, name("a"), FileType::Directory, &[], false),
            a
        );
        let f = t.lookup(a, name("f"), FileType::RegularFile, &[], false);
        assert_eq!(t.relative_path(f).unwrap(), PathBuf::from("a/f"));
        // The directory stays while its child is known, even after its own forget.
        assert!(t.forget(a, 2).is_empty());
        assert_eq!(t.forget(f, 1), vec![f, a]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn hard_links_map_to_one_inode_by_backing_key() {
        let mut t = InodeTable::new();
        let (k0, k1) = ((0, 7, 42), (1, 9, 77));
        let x = t.lookup(ROOT, name("x"), FileType::RegularFile, &[k0, k1], true);
        // Seen through another replica, the same file is still the same inode.
        let y = t.lookup(ROOT, name("y"), FileType::RegularFile, &[k1], true);
        assert_eq!(x, y);
        t.unlink(ROOT, name("x"));
        assert_eq!(t.location(x).unwrap().1.as_ref(), name("y"));
        // An open file whose last known name goes is still found by identity through a
        // name the kernel had not looked up (one link left on disk).
        t.open(x);
        t.unlink(ROOT, name("y"));
        let w = t.lookup(ROOT, name("w"), FileType::RegularFile, &[k0], false);
        assert_eq!(w, x);
        // Once the node is gone, a new file may reuse the backing identity.
        t.unlink(ROOT, name("w"));
        t.close(x);
        t.forget(x, 3);
        assert!(!t.contains(x));
        let z = t.lookup(ROOT, name("z"), FileType::RegularFile, &[k0], false);
        assert_ne!(z, x);
    }

    #[test]
    fn a_changed_type_under_a_name_gets_a_new_inode() {
        let mut t = InodeTable::new();
        let a = t.lookup(ROOT, name("a"), FileType::RegularFile, &[], false);
        let b = t.lookup(ROOT, name("a"), FileType::Directory, &[], false);
        assert_ne!(a, b);
        assert_eq!(t.child(ROOT, name("a")), Some(b));
    }

    #[test]
    fn rename_moves_and_exchange_swaps() {
        let mut t = InodeTable::new();
        let d = t.lookup(ROOT, name("d"), FileType::Directory, &[], false);
        let a = t.lookup(ROOT, name("a"), FileType::RegularFile, &[], false);
        let b = t.lookup(d, name("b"), FileType::RegularFile, &[], false);
        t.rename(ROOT, name("a"), d, name("c"), false);
        assert_eq!(t.relative_path(a).unwrap(), PathBuf::from("d/c"));
        t.rename(d, name("c"), d, name("b"), true);
        assert_eq!(t.relative_path(a).unwrap(), PathBuf::from("d/b"));
        assert_eq!(t.relative_path(b).unwrap(), PathBuf::from("d/c"));
        // Rename over an existing name displaces it.
        t.rename(d, name("c"), d, name("b"), false);
        assert_eq!(t.child(d, name("b")), Some(b));
        assert!(t.location(a).is_none());
    }

    #[test]
    fn marks_cover_descendants_and_pin_the_path() {
        let mut t = InodeTable::new();
        let d = t.lookup(ROOT, name("d"), FileType::Directory, &[], false);
        let f = t.lookup(d, name("f"), FileType::RegularFile, &[], false);
        assert_eq!(t.fresh(f, 0b111), 0b111);
        assert!(t.mark_data(d, 1));
        assert!(!t.mark_data(d, 1));
        assert_eq!(t.fresh(f, 0b111), 0b101);
        t.mark_entries(ROOT, 2);
        assert_eq!(t.fresh(f, 0b111), 0b101);
        assert_eq!(t.fresh_entries(ROOT, 0b111), 0b011);
        // The marked directory outlives the kernel's interest in it.
        t.forget(f, 1);
        t.forget(d, 1);
        assert!(t.contains(d));
        assert_eq!(t.marks().len(), 2);
    }
}

#[cfg(test)]
mod mark_tests {
    use super::*;

    #[test]
    fn marks_on_an_open_unlinked_file_last_until_it_is_closed() {
        let mut t = InodeTable::new();
        let f = t.lookup(ROOT, OsStr::new("f"), FileType::RegularFile, &[], false);
        t.open(f);
        t.mark_data(f, 1);
        t.unlink(ROOT, OsStr::new("f"));
        // Still open: the stale replica must not serve it.
        assert_eq!(t.fresh(f, 0b11), 0b01);
        t.forget(f, 1);
        assert!(t.contains(f));
        t.close(f);
        assert!(!t.contains(f));
        assert!(t.marks().is_empty());
    }

    #[test]
    fn a_write_to_chunks_marked_already_still_stops_a_repair_under_way_clearing() {
        let mut t = InodeTable::new();
        let f = t.lookup(ROOT, OsStr::new("f"), FileType::RegularFile, &[], false);
        assert_eq!(t.mark_chunks(f, 1, 5, 6), Some(Added::Chunks(5, 6)));
        let seq = t.mark_seq(f).unwrap();
        // A repair copies chunk 5; meanwhile the application writes it again.
        assert_eq!(t.mark_chunks(f, 1, 5, 6), None);
        assert!(!t.clear(f, 1, false, seq).0);
        // Same for a file marked whole.
        t.mark_data(f, 1);
        let seq = t.mark_seq(f).unwrap();
        assert_eq!(t.mark_chunks(f, 1, 0, 1), None);
        assert!(!t.clear(f, 1, false, seq).0);
    }

    #[test]
    fn a_directory_whose_attributes_alone_are_stale_leaves_what_is_below_fresh() {
        let mut t = InodeTable::new();
        let d = t.lookup(ROOT, OsStr::new("d"), FileType::Directory, &[], false);
        let f = t.lookup(d, OsStr::new("f"), FileType::RegularFile, &[], false);
        assert_eq!(t.mark_chunks(d, 1, 0, 0), Some(Added::Chunks(0, 0)));
        assert_eq!(t.fresh(d, 0b11), 0b01);
        assert_eq!(t.fresh(f, 0b11), 0b11);
        // Marked whole, nothing below it is trusted.
        t.mark_data(d, 1);
        assert_eq!(t.fresh(f, 0b11), 0b01);
    }

    #[test]
    fn a_file_marked_in_too_many_scattered_ranges_is_marked_whole() {
        let mut t = InodeTable::new();
        let f = t.lookup(ROOT, OsStr::new("f"), FileType::RegularFile, &[], false);
        let mut last = None;
        for i in 0..=MAX_RANGES as u64 {
            last = t.mark_chunks(f, 0, i * 2, i * 2 + 1);
        }
        assert_eq!(last, Some(Added::Whole));
        assert!(t.marked_whole(f, 0));
    }

    #[test]
    fn a_name_made_for_a_mark_joins_the_file_it_turns_out_to_link() {
        let mut t = InodeTable::new();
        let k = (0, 7, 42);
        let a = t.ensure_child(ROOT, OsStr::new("a"), FileType::RegularFile);
        t.mark_data(a, 1);
        let c = t.lookup(ROOT, OsStr::new("c"), FileType::RegularFile, &[k], true);
        assert_ne!(a, c);
        let again = t.lookup(ROOT, OsStr::new("a"), FileType::RegularFile, &[k], true);
        assert_eq!(again, c);
        assert!(!t.contains(a));
        assert!(t.marked_whole(c, 1));
        assert_eq!(t.marked_count(), 1);
    }
}
