//! File control parameters: the templates SELECT returns (FCP `62`, FMD `64`,
//! FCI `6F`) and the FCP that CREATE FILE carries.

use super::{
    Access, AccessRules, EfBody, File, FileId, FileKind, FileSystem, LifeCycle, RecordKind,
    MAX_EF_SIZE, MAX_RECORDS,
};
use thiserror::Error;
use virtcard_codec::ber;

/// Data coding byte: WRITE functions OR their data into the file (b7 b6 =
/// `10`), data units are one byte. Stated here and in the ATR alike.
pub const DATA_CODING: u8 = 0x41;

/// Everything needed to create a file, as CREATE FILE or a card description
/// states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    pub fid: Option<u16>,
    pub sfi: Option<u8>,
    pub lcs: LifeCycle,
    pub access: AccessRules,
    pub kind: FileKind,
}

/// Why an FCP cannot create a file.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FcpError {
    #[error("the FCP is not well-formed BER-TLV")]
    Malformed,
    #[error("the data is not an FCP template (tag 62)")]
    NotFcp,
    #[error("the FCP has no file descriptor (tag 82)")]
    MissingDescriptor,
    #[error("file descriptor byte {0:02X} is not a DF or a supported EF structure")]
    BadDescriptor(u8),
    #[error("data object {0:02X} has a wrong length")]
    BadLength(u8),
    #[error("life-cycle status byte {0:02X} is not supported")]
    BadLifeCycle(u8),
    #[error("a DF name (tag 84) belongs to DFs only")]
    NameOnEf,
    #[error("record EFs need a record size in the file descriptor")]
    MissingRecordSize,
    #[error("the file would need {0} bytes")]
    TooLarge(usize),
}

fn be_value(bytes: &[u8]) -> usize {
    bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize)
}

/// Big-endian bytes of `n`, at least `min` of them.
fn be_bytes(n: usize, min: usize) -> Vec<u8> {
    let all = (n as u64).to_be_bytes();
    let skip = all.iter().take_while(|b| **b == 0).count().min(8 - min);
    all[skip..].to_vec()
}

/// Parses the FCP of CREATE FILE (a `62` template; a bare sequence of its
/// objects is accepted too, as some middleware sends that).
pub fn parse_fcp(data: &[u8]) -> Result<FileSpec, FcpError> {
    let top = ber::parse_all(data).map_err(|_| FcpError::Malformed)?;
    let objects: Vec<ber::Tlv<'_>> = match top.as_slice() {
        [t] if t.tag == 0x62 => t
            .children()
            .collect::<Result<_, _>>()
            .map_err(|_| FcpError::Malformed)?,
        [t, ..] if t.tag == 0x62 || t.tag == 0x6F || t.tag == 0x64 => return Err(FcpError::NotFcp),
        _ if top.iter().any(|t| t.tag == 0x82) => top,
        _ => return Err(FcpError::NotFcp),
    };
    let get = |tag: u32| objects.iter().find(|t| t.tag == tag).map(|t| t.value);

    let fdb_field = get(0x82).ok_or(FcpError::MissingDescriptor)?;
    let fdb = *fdb_field.first().ok_or(FcpError::BadLength(0x82))?;
    let fid = match get(0x83) {
        None => None,
        Some([a, b]) => Some(u16::from_be_bytes([*a, *b])),
        Some(_) => return Err(FcpError::BadLength(0x83)),
    };
    let sfi = match get(0x88) {
        None | Some([]) => None,
        Some([s]) if s & 0x07 == 0 => Some(s >> 3),
        Some([s]) => Some(*s),
        Some(_) => return Err(FcpError::BadLength(0x88)),
    };
    let lcs = match get(0x8A) {
        None => LifeCycle::Activated,
        Some([b]) => LifeCycle::from_byte(*b).ok_or(FcpError::BadLifeCycle(*b))?,
        Some(_) => return Err(FcpError::BadLength(0x8A)),
    };
    let access = match get(0x86) {
        None => AccessRules::default(),
        Some([r, u, d, ..]) => AccessRules {
            read: Access::from_byte(*r),
            update: Access::from_byte(*u),
            delete: Access::from_byte(*d),
        },
        Some(_) => return Err(FcpError::BadLength(0x86)),
    };
    let name = get(0x84).map(<[u8]>::to_vec);
    if name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 16) {
        return Err(FcpError::BadLength(0x84));
    }
    let size = match get(0x80).or_else(|| get(0x81)) {
        None => None,
        Some(v) if (1..=4).contains(&v.len()) => Some(be_value(v)),
        Some(_) => return Err(FcpError::BadLength(0x80)),
    };

    // b8 is 0 for every interindustry descriptor; b7 (shareable) is accepted either way.
    if fdb & 0x80 != 0 {
        return Err(FcpError::BadDescriptor(fdb));
    }
    let category = fdb & 0x38;
    let structure = fdb & 0x07;
    let kind = if category == 0x38 {
        if structure != 0 {
            return Err(FcpError::BadDescriptor(fdb));
        }
        FileKind::Df {
            name,
            children: Vec::new(),
        }
    } else {
        // Working (000) and internal (001) EFs are stored alike.
        if category > 0x08 {
            return Err(FcpError::BadDescriptor(fdb));
        }
        if name.is_some() {
            return Err(FcpError::NameOnEf);
        }
        let record_kind = match structure {
            1 => None,
            2 | 3 => Some(RecordKind::LinearFixed),
            4 | 5 => Some(RecordKind::LinearVariable),
            6 | 7 => Some(RecordKind::Cyclic),
            _ => return Err(FcpError::BadDescriptor(fdb)),
        };
        match record_kind {
            None => {
                let n = size.unwrap_or(0);
                if n > MAX_EF_SIZE {
                    return Err(FcpError::TooLarge(n));
                }
                FileKind::Ef(EfBody::Transparent { data: vec![0; n] })
            }
            Some(kind) => {
                // FDB, DCB, record size (1 or 2 bytes), record count (1 or 2 bytes).
                let (record_size, count) = match fdb_field {
                    [_, _, s] => (*s as usize, None),
                    [_, _, a, b] => (be_value(&[*a, *b]), None),
                    [_, _, a, b, c] => (be_value(&[*a, *b]), Some(*c as usize)),
                    [_, _, a, b, c, d] => (be_value(&[*a, *b]), Some(be_value(&[*c, *d]))),
                    _ => return Err(FcpError::MissingRecordSize),
                };
                if record_size == 0 {
                    return Err(FcpError::MissingRecordSize);
                }
                let max_records = count
                    .or_else(|| size.map(|s| s / record_size))
                    .unwrap_or(MAX_RECORDS)
                    .clamp(1, MAX_RECORDS);
                let total = record_size.saturating_mul(max_records);
                if total > MAX_EF_SIZE {
                    return Err(FcpError::TooLarge(total));
                }
                FileKind::Ef(EfBody::Records {
                    kind,
                    record_size,
                    max_records,
                    records: Vec::new(),
                })
            }
        }
    };
    Ok(FileSpec {
        fid,
        sfi,
        lcs,
        access,
        kind,
    })
}

impl FileSystem {
    /// Bytes of EF data at and below `id`.
    fn subtree_size(&self, id: FileId) -> usize {
        let mut total = 0usize;
        let mut stack = vec![id];
        let mut steps = 0;
        while let Some(x) = stack.pop() {
            steps += 1;
            if steps > self.len() {
                break;
            }
            let Some(f) = self.get(x) else { continue };
            match &f.kind {
                FileKind::Ef(b) => total = total.saturating_add(b.size()),
                FileKind::Df { children, .. } => stack.extend_from_slice(children),
            }
        }
        total
    }

    fn push_fcp_objects(&self, id: FileId, f: &File, out: &mut Vec<u8>) {
        match &f.kind {
            FileKind::Ef(body) => {
                ber::push(out, 0x80, &be_bytes(body.size(), 2));
                let mut fdb = vec![body.descriptor(), DATA_CODING];
                if let EfBody::Records {
                    record_size,
                    records,
                    ..
                } = body
                {
                    fdb.extend_from_slice(&be_bytes(*record_size, 2));
                    fdb.push(records.len().min(0xFF) as u8);
                }
                ber::push(out, 0x82, &fdb);
            }
            FileKind::Df { .. } => {
                ber::push(out, 0x81, &be_bytes(self.subtree_size(id), 2));
                ber::push(out, 0x82, &[0x78]);
            }
        }
        if let Some(fid) = f.fid {
            ber::push(out, 0x83, &fid.to_be_bytes());
        }
        if let Some(name) = f.df_name() {
            ber::push(out, 0x84, name);
        }
        if let Some(sfi) = f.sfi {
            ber::push(out, 0x88, &[sfi << 3]);
        }
        ber::push(out, 0x8A, &[f.lcs.byte()]);
        // Proprietary security attributes: one byte each for read, update and
        // delete (00 always, FF never, else the PIN reference).
        ber::push(
            out,
            0x86,
            &[
                f.access.read.byte(),
                f.access.update.byte(),
                f.access.delete.byte(),
            ],
        );
    }

    /// FCP template (`62`) of a file; empty if the file does not exist.
    pub fn fcp(&self, id: FileId) -> Vec<u8> {
        let Some(f) = self.get(id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        ber::push_constructed(&mut out, 0x62, |v| self.push_fcp_objects(id, f, v));
        out
    }

    /// FMD template (`64`). The model keeps no file management data beyond
    /// what the FCP holds, so the template is empty.
    pub fn fmd(&self, id: FileId) -> Vec<u8> {
        if self.get(id).is_none() {
            return Vec::new();
        }
        vec![0x64, 0x00]
    }

    /// FCI template (`6F`): the FCP objects followed by the (absent) FMD objects.
    pub fn fci(&self, id: FileId) -> Vec<u8> {
        let Some(f) = self.get(id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        ber::push_constructed(&mut out, 0x6F, |v| self.push_fcp_objects(id, f, v));
        out
    }
}
