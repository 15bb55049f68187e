//! A pure ISO 7816-4 file system: the MF, DFs and EFs with their identifiers,
//! structures, life cycle and access rules, and the FCP/FCI/FMD templates that
//! describe them.
//!
//! The model knows nothing about commands or channels. Files live in an arena
//! keyed by [`FileId`]s that are never reused, so a channel that still points
//! at a deleted file finds nothing rather than a stranger that took its slot.

mod fcp;

pub use fcp::{parse_fcp, FcpError, FileSpec, DATA_CODING};

use crate::aid::{AidMatch, AidRegistry, Occurrence};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// File identifier of the MF.
pub const MF_FID: u16 = 0x3F00;
/// Largest number of files the model holds, guarding memory against endless
/// CREATE FILE.
pub const MAX_FILES: usize = 4096;
/// Largest EF body in bytes (a transparent EF, or all records of one EF).
pub const MAX_EF_SIZE: usize = 65_535;
/// Largest number of records in a record EF (the FCP encodes it in one byte).
pub const MAX_RECORDS: usize = 254;

/// Handle of a file in a [`FileSystem`]; never reused after deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileId(pub u32);

/// Life-cycle status (ISO 7816-4 table 13), as far as a file can change it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LifeCycle {
    #[default]
    Activated,
    Deactivated,
    Terminated,
}

impl LifeCycle {
    /// The LCS byte (tag `8A`): operational activated `05`, deactivated `04`,
    /// terminated `0C`.
    pub fn byte(self) -> u8 {
        match self {
            LifeCycle::Activated => 0x05,
            LifeCycle::Deactivated => 0x04,
            LifeCycle::Terminated => 0x0C,
        }
    }

    /// Decodes an LCS byte. Creation and initialisation states count as
    /// activated: this model has no personalisation phase.
    pub fn from_byte(b: u8) -> Option<LifeCycle> {
        match b {
            0x01 | 0x03 => Some(LifeCycle::Activated),
            _ if b & 0xFD == 0x05 => Some(LifeCycle::Activated),
            _ if b & 0xFD == 0x04 => Some(LifeCycle::Deactivated),
            _ if b & 0xFC == 0x0C => Some(LifeCycle::Terminated),
            _ => None,
        }
    }
}

/// One access condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Always,
    Never,
    /// The PIN with this reference must be verified on the channel.
    Pin(u8),
}

impl Access {
    /// One byte of the proprietary security attribute (tag `86`): `00`
    /// always, `FF` never, anything else a PIN reference.
    pub fn byte(self) -> u8 {
        match self {
            Access::Always => 0x00,
            Access::Never => 0xFF,
            Access::Pin(r) => r,
        }
    }

    pub fn from_byte(b: u8) -> Access {
        match b {
            0x00 => Access::Always,
            0xFF => Access::Never,
            r => Access::Pin(r),
        }
    }
}

/// Access rules of one file.
///
/// `update` covers every command that changes an EF (UPDATE, WRITE, APPEND,
/// ERASE, PUT DATA) and, on a DF, creating files in it; ACTIVATE and
/// DEACTIVATE also need it. `delete` guards DELETE FILE of the file itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRules {
    pub read: Access,
    pub update: Access,
    pub delete: Access,
}

impl Default for AccessRules {
    fn default() -> Self {
        AccessRules {
            read: Access::Always,
            update: Access::Always,
            delete: Access::Always,
        }
    }
}

/// Record structures of ISO 7816-4 §7.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    LinearFixed,
    LinearVariable,
    Cyclic,
}

/// The body of an EF.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "structure")]
pub enum EfBody {
    /// A fixed-size sequence of data units (bytes).
    Transparent { data: Vec<u8> },
    /// Records numbered from 1. In a cyclic EF record 1 is the most recently
    /// appended one.
    Records {
        kind: RecordKind,
        /// Fixed record length (linear fixed, cyclic) or the longest allowed
        /// record (linear variable).
        record_size: usize,
        max_records: usize,
        records: Vec<Vec<u8>>,
    },
}

impl EfBody {
    /// File descriptor byte, structure part, with the shareable bit set:
    /// every file may be used from several logical channels at once.
    pub fn descriptor(&self) -> u8 {
        let structure = match self {
            EfBody::Transparent { .. } => 0x01,
            EfBody::Records { kind, .. } => match kind {
                RecordKind::LinearFixed => 0x02,
                RecordKind::LinearVariable => 0x04,
                RecordKind::Cyclic => 0x06,
            },
        };
        0x40 | structure
    }

    /// Bytes of data the EF holds (tag `80`).
    pub fn size(&self) -> usize {
        match self {
            EfBody::Transparent { data } => data.len(),
            EfBody::Records { records, .. } => records.iter().map(Vec::len).sum(),
        }
    }
}

/// What a file is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// The MF or another DF, with its children in creation order.
    Df {
        name: Option<Vec<u8>>,
        children: Vec<FileId>,
    },
    Ef(EfBody),
}

/// One file of the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    pub fid: Option<u16>,
    pub sfi: Option<u8>,
    pub lcs: LifeCycle,
    pub access: AccessRules,
    pub parent: Option<FileId>,
    pub kind: FileKind,
}

impl File {
    pub fn is_df(&self) -> bool {
        matches!(self.kind, FileKind::Df { .. })
    }

    pub fn df_name(&self) -> Option<&[u8]> {
        match &self.kind {
            FileKind::Df { name, .. } => name.as_deref(),
            FileKind::Ef(_) => None,
        }
    }

    pub fn children(&self) -> &[FileId] {
        match &self.kind {
            FileKind::Df { children, .. } => children,
            FileKind::Ef(_) => &[],
        }
    }

    pub fn ef(&self) -> Option<&EfBody> {
        match &self.kind {
            FileKind::Ef(b) => Some(b),
            FileKind::Df { .. } => None,
        }
    }

    pub fn ef_mut(&mut self) -> Option<&mut EfBody> {
        match &mut self.kind {
            FileKind::Ef(b) => Some(b),
            FileKind::Df { .. } => None,
        }
    }
}

/// Why the file system refused a change, or why saved contents are inconsistent.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FsError {
    #[error("no such file")]
    NotFound,
    #[error("the parent is not a DF")]
    NotADf,
    #[error("file identifier {0:04X} already exists in this DF")]
    FidExists(u16),
    #[error("short EF identifier {0} already exists in this DF")]
    SfiExists(u8),
    #[error("DF name {} already exists", hex_string(.0))]
    NameExists(Vec<u8>),
    #[error("file identifier {0:04X} is reserved (3F00, 3FFF and FFFF cannot name a child)")]
    ReservedFid(u16),
    #[error("short EF identifier {0} is outside 1..=30")]
    BadSfi(u8),
    #[error("DF name must be 1 to 16 bytes, got {0}")]
    BadName(usize),
    #[error("the file system is full ({MAX_FILES} files)")]
    Full,
    #[error("an EF body of {0} bytes exceeds {MAX_EF_SIZE}")]
    TooLarge(usize),
    #[error("the MF cannot be deleted")]
    DeleteMf,
    #[error("inconsistent file system: {0}")]
    Inconsistent(String),
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Why a path does not lead to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("a path has an even number of bytes")]
    OddLength,
    #[error("a path component is missing")]
    NotFound,
    #[error("a path component other than the last is an EF")]
    ThroughEf,
}

/// The whole tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSystem {
    files: BTreeMap<FileId, File>,
    next_id: u32,
}

impl Default for FileSystem {
    fn default() -> Self {
        Self::new()
    }
}

impl FileSystem {
    /// A file system holding an empty, activated MF.
    pub fn new() -> Self {
        let mut files = BTreeMap::new();
        files.insert(
            FileId(0),
            File {
                fid: Some(MF_FID),
                sfi: None,
                lcs: LifeCycle::Activated,
                access: AccessRules {
                    delete: Access::Never,
                    ..AccessRules::default()
                },
                parent: None,
                kind: FileKind::Df {
                    name: None,
                    children: Vec::new(),
                },
            },
        );
        FileSystem { files, next_id: 1 }
    }

    pub fn mf(&self) -> FileId {
        FileId(0)
    }

    pub fn get(&self, id: FileId) -> Option<&File> {
        self.files.get(&id)
    }

    pub fn get_mut(&mut self, id: FileId) -> Option<&mut File> {
        self.files.get_mut(&id)
    }

    pub fn contains(&self, id: FileId) -> bool {
        self.files.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn parent(&self, id: FileId) -> Option<FileId> {
        self.get(id).and_then(|f| f.parent)
    }

    /// The file and its ancestors, nearest first.
    pub fn ancestry(&self, id: FileId) -> impl Iterator<Item = (FileId, &File)> + '_ {
        let mut next = Some(id);
        // Bounded by the file count so a corrupt parent chain cannot loop.
        (0..self.files.len()).map_while(move |_| {
            let id = next?;
            let f = self.get(id)?;
            next = f.parent;
            Some((id, f))
        })
    }

    /// Whether `id` is `ancestor` or lies below it.
    pub fn is_within(&self, id: FileId, ancestor: FileId) -> bool {
        self.ancestry(id).any(|(a, _)| a == ancestor)
    }

    /// The life-cycle status that governs use of a file: the worst of the
    /// file and its ancestors, since a deactivated DF takes its contents with it.
    pub fn effective_lcs(&self, id: FileId) -> LifeCycle {
        let mut worst = LifeCycle::Activated;
        for (_, f) in self.ancestry(id) {
            match f.lcs {
                LifeCycle::Terminated => return LifeCycle::Terminated,
                LifeCycle::Deactivated => worst = LifeCycle::Deactivated,
                LifeCycle::Activated => {}
            }
        }
        worst
    }

    /// A direct child of `df` by file identifier.
    pub fn child_by_fid(&self, df: FileId, fid: u16) -> Option<FileId> {
        self.get(df)?
            .children()
            .iter()
            .copied()
            .find(|c| self.get(*c).is_some_and(|f| f.fid == Some(fid)))
    }

    /// A direct child EF of `df` by short EF identifier.
    pub fn child_by_sfi(&self, df: FileId, sfi: u8) -> Option<FileId> {
        self.get(df)?.children().iter().copied().find(|c| {
            self.get(*c)
                .is_some_and(|f| !f.is_df() && f.sfi == Some(sfi))
        })
    }

    /// SELECT by file identifier (P1 `00`) from `current_df`: the MF, the
    /// current DF itself, its children, its parent, then its siblings, which is
    /// where ISO 7816-4 requires identifiers to be unambiguous.
    pub fn find_fid(&self, current_df: FileId, fid: u16) -> Option<FileId> {
        if fid == MF_FID {
            return Some(self.mf());
        }
        if self.get(current_df)?.fid == Some(fid) {
            return Some(current_df);
        }
        if let Some(c) = self.child_by_fid(current_df, fid) {
            return Some(c);
        }
        let parent = self.parent(current_df)?;
        if self.get(parent)?.fid == Some(fid) {
            return Some(parent);
        }
        self.child_by_fid(parent, fid)
    }

    /// Walks a path of file identifiers starting at `start`. `3FFF` stands for
    /// the start DF itself, as ISO 7816-4 allows inside paths.
    pub fn walk(&self, start: FileId, path: &[u8]) -> Result<FileId, PathError> {
        if path.len() % 2 != 0 {
            return Err(PathError::OddLength);
        }
        let mut at = start;
        for (i, pair) in path.chunks_exact(2).enumerate() {
            let fid = u16::from_be_bytes([pair[0], pair[1]]);
            let here = self.get(at).ok_or(PathError::NotFound)?;
            if !here.is_df() {
                return Err(PathError::ThroughEf);
            }
            if fid == 0x3FFF && i == 0 {
                continue;
            }
            at = self.child_by_fid(at, fid).ok_or(PathError::NotFound)?;
        }
        Ok(at)
    }

    /// Every DF with a name, in depth-first tree order.
    pub fn named_dfs(&self) -> Vec<FileId> {
        let mut out = Vec::new();
        let mut stack = vec![self.mf()];
        // A tree visits each file once. Bounding the visits by the file count
        // keeps a corrupt tree that lists children repeatedly (which
        // `validate` refuses) from taking time exponential in its depth.
        let mut steps = 0;
        while let Some(id) = stack.pop() {
            steps += 1;
            if steps > self.files.len() {
                break;
            }
            let Some(f) = self.get(id) else { continue };
            if f.df_name().is_some() {
                out.push(id);
            }
            stack.extend(f.children().iter().rev().copied());
        }
        out
    }

    /// SELECT by DF name: exact or truncated names, the given occurrence
    /// counted from `current` (the current DF).
    pub fn find_by_name(
        &self,
        name: &[u8],
        occurrence: Occurrence,
        current: FileId,
    ) -> Option<FileId> {
        let dfs = self.named_dfs();
        let mut registry = AidRegistry::new();
        for id in &dfs {
            registry.add(self.get(*id).and_then(File::df_name).unwrap_or_default());
        }
        let current_index = dfs.iter().position(|d| *d == current);
        let hit = registry.select(name, AidMatch::Prefix, occurrence, current_index)?;
        dfs.get(hit).copied()
    }

    /// Adds a file under `parent` after checking identifiers for uniqueness.
    pub fn create(&mut self, parent: FileId, spec: FileSpec) -> Result<FileId, FsError> {
        if self.files.len() >= MAX_FILES {
            return Err(FsError::Full);
        }
        let p = self.get(parent).ok_or(FsError::NotFound)?;
        if !p.is_df() {
            return Err(FsError::NotADf);
        }
        if let Some(fid) = spec.fid {
            if matches!(fid, MF_FID | 0x3FFF | 0xFFFF) {
                return Err(FsError::ReservedFid(fid));
            }
            if self.child_by_fid(parent, fid).is_some() {
                return Err(FsError::FidExists(fid));
            }
        }
        if let Some(sfi) = spec.sfi {
            if !(1..=30).contains(&sfi) {
                return Err(FsError::BadSfi(sfi));
            }
            if self.child_by_sfi(parent, sfi).is_some() {
                return Err(FsError::SfiExists(sfi));
            }
        }
        match &spec.kind {
            FileKind::Df { name: Some(n), .. } => {
                if n.is_empty() || n.len() > 16 {
                    return Err(FsError::BadName(n.len()));
                }
                let taken = self
                    .files
                    .values()
                    .any(|f| f.df_name() == Some(n.as_slice()));
                if taken {
                    return Err(FsError::NameExists(n.clone()));
                }
            }
            FileKind::Df { name: None, .. } => {}
            FileKind::Ef(body) => check_body(body)?,
        }
        let id = FileId(self.next_id);
        self.next_id = self.next_id.checked_add(1).ok_or(FsError::Full)?;
        let kind = match spec.kind {
            // A new DF starts empty whatever the spec says.
            FileKind::Df { name, .. } => FileKind::Df {
                name,
                children: Vec::new(),
            },
            ef => ef,
        };
        self.files.insert(
            id,
            File {
                fid: spec.fid,
                sfi: spec.sfi,
                lcs: spec.lcs,
                access: spec.access,
                parent: Some(parent),
                kind,
            },
        );
        if let Some(FileKind::Df { children, .. }) =
            self.files.get_mut(&parent).map(|f| &mut f.kind)
        {
            children.push(id);
        }
        Ok(id)
    }

    /// Removes a file and everything below it.
    pub fn delete(&mut self, id: FileId) -> Result<(), FsError> {
        let f = self.get(id).ok_or(FsError::NotFound)?;
        let parent = f.parent.ok_or(FsError::DeleteMf)?;
        let mut stack = vec![id];
        while let Some(x) = stack.pop() {
            if let Some(f) = self.files.remove(&x) {
                stack.extend_from_slice(f.children());
            }
        }
        if let Some(FileKind::Df { children, .. }) =
            self.files.get_mut(&parent).map(|f| &mut f.kind)
        {
            children.retain(|c| *c != id);
        }
        Ok(())
    }

    /// Checks what deserialisation cannot: one MF, parent and child links
    /// agreeing, each file listed by one DF once, no cycles, identifiers
    /// unique, bodies within limits.
    pub fn validate(&self) -> Result<(), FsError> {
        let bad = |m: String| Err(FsError::Inconsistent(m));
        let Some(mf) = self.get(self.mf()) else {
            return bad("the MF is missing".into());
        };
        if mf.parent.is_some() || !mf.is_df() || mf.fid != Some(MF_FID) {
            return bad("file 0 is not an MF".into());
        }
        if self.files.len() > MAX_FILES {
            return bad(format!("{} files exceed {MAX_FILES}", self.files.len()));
        }
        let mut seen_names: Vec<&[u8]> = Vec::new();
        let mut listed = BTreeSet::new();
        for (id, f) in &self.files {
            if id.0 >= self.next_id {
                return bad(format!("file {} is beyond the id counter", id.0));
            }
            if *id != self.mf() {
                let Some(p) = f.parent.and_then(|p| self.get(p).map(|pf| (p, pf))) else {
                    return bad(format!("file {} has no parent", id.0));
                };
                if !p.1.children().contains(id) {
                    return bad(format!("file {} is missing from its parent", id.0));
                }
                if !self.is_within(*id, self.mf()) {
                    return bad(format!("file {} is not below the MF", id.0));
                }
            }
            let mut fids = Vec::new();
            let mut sfis = Vec::new();
            for c in f.children() {
                let Some(cf) = self.get(*c) else {
                    return bad(format!("file {} lists a missing child", id.0));
                };
                if cf.parent != Some(*id) {
                    return bad(format!("file {} disowns its parent", c.0));
                }
                // With the parent check above this also refuses a child
                // claimed by two DFs; identifiers alone miss a repeated
                // child that has neither FID nor SFI.
                if !listed.insert(*c) {
                    return bad(format!("file {} is listed as a child twice", c.0));
                }
                if let Some(fid) = cf.fid {
                    if fids.contains(&fid) {
                        return bad(format!("FID {fid:04X} appears twice"));
                    }
                    fids.push(fid);
                }
                if let Some(sfi) = cf.sfi {
                    if sfis.contains(&sfi) {
                        return bad(format!("SFI {sfi} appears twice"));
                    }
                    sfis.push(sfi);
                }
            }
            if let Some(n) = f.df_name() {
                if seen_names.contains(&n) {
                    return bad(format!("DF name {} appears twice", hex_string(n)));
                }
                seen_names.push(n);
            }
            if let Some(body) = f.ef() {
                check_body(body)?;
            }
        }
        Ok(())
    }
}

fn check_body(body: &EfBody) -> Result<(), FsError> {
    let bad = |m: String| Err(FsError::Inconsistent(m));
    match body {
        EfBody::Transparent { data } => {
            if data.len() > MAX_EF_SIZE {
                return Err(FsError::TooLarge(data.len()));
            }
        }
        EfBody::Records {
            kind,
            record_size,
            max_records,
            records,
        } => {
            if *record_size == 0 || *record_size > MAX_EF_SIZE {
                return bad(format!(
                    "record size {record_size} is outside 1..={MAX_EF_SIZE}"
                ));
            }
            if *max_records == 0 || *max_records > MAX_RECORDS {
                return bad(format!(
                    "record count {max_records} is outside 1..={MAX_RECORDS}"
                ));
            }
            if records.len() > *max_records {
                return bad(format!(
                    "{} records exceed the maximum {max_records}",
                    records.len()
                ));
            }
            let total = record_size.saturating_mul(*max_records);
            if total > MAX_EF_SIZE {
                return Err(FsError::TooLarge(total));
            }
            for (i, r) in records.iter().enumerate() {
                let ok = match kind {
                    RecordKind::LinearVariable => r.len() <= *record_size,
                    RecordKind::LinearFixed | RecordKind::Cyclic => r.len() == *record_size,
                };
                if !ok {
                    return bad(format!(
                        "record {} has {} bytes; the record size is {record_size}",
                        i + 1,
                        r.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
