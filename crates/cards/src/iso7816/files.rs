//! File commands: SELECT, the binary and record families, CREATE / DELETE
//! FILE and ACTIVATE / DEACTIVATE.

use super::{Channel, Iso7816Card};
use virtcard_codec::{ber, Command, Status};
use virtcard_runtime::aid::Occurrence;
use virtcard_runtime::fs::{
    parse_fcp, Access, EfBody, FcpError, FileId, FileKind, FsError, LifeCycle, RecordKind,
};
use virtcard_runtime::{Outcome, Reply};

/// How a write command combines its data with the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// UPDATE: replace.
    Update,
    /// WRITE: logical OR, as the data coding byte announces.
    Or,
}

/// Structure, record size, maximum count and the records of a record EF.
type RecordView<'a> = (RecordKind, usize, usize, &'a [Vec<u8>]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Update,
    Delete,
}

/// Status for a read that returned `returned` bytes: `6282` only when the
/// client asked for a definite larger amount.
fn read_status(cmd: &Command<'_>, reply: &Reply<'_>, returned: usize) -> Status {
    let max = if cmd.extended { 65_536 } else { 256 };
    if reply.le_present() && reply.ne() < max && returned < reply.ne() {
        Status::EndOfFile
    } else {
        Status::Success
    }
}

fn be_value(bytes: &[u8]) -> Option<usize> {
    if bytes.len() > 4 {
        return None;
    }
    Some(bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize))
}

/// Offset (`54`) and data (`53` / `73`) objects of an odd-INS binary command.
fn odd_fields(data: &[u8]) -> Result<(Vec<usize>, Option<&[u8]>), Status> {
    let tlvs = ber::parse_all(data).map_err(|_| Status::IncorrectData)?;
    let mut offsets = Vec::new();
    let mut body = None;
    for t in tlvs {
        match t.tag {
            0x54 => offsets.push(be_value(t.value).ok_or(Status::IncorrectData)?),
            0x53 | 0x73 if body.is_none() => body = Some(t.value),
            _ => return Err(Status::IncorrectData),
        }
    }
    Ok((offsets, body))
}

impl Iso7816Card {
    fn file_fid_pair(data: &[u8]) -> Result<u16, Status> {
        match data {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(Status::WrongLength),
        }
    }

    /// Finds the file a SELECT-style P1 and data field reference.
    fn resolve(&self, ch: &Channel, p1: u8, p2: u8, data: &[u8]) -> Result<FileId, Status> {
        let fs = &self.state.fs;
        let mf = fs.mf();
        let walk = |start: FileId, path: &[u8]| {
            if path.is_empty() || path.len() % 2 != 0 {
                return Err(Status::WrongLength);
            }
            fs.walk(start, path).map_err(|_| Status::FileNotFound)
        };
        match p1 {
            0x00 => match data {
                [] => Ok(mf),
                [a, b] => fs
                    .find_fid(ch.df, u16::from_be_bytes([*a, *b]))
                    .ok_or(Status::FileNotFound),
                [0x3F, 0x00, rest @ ..] => walk(mf, rest),
                path => walk(ch.df, path),
            },
            0x01 | 0x02 => {
                let fid = Self::file_fid_pair(data)?;
                let id = fs.child_by_fid(ch.df, fid).ok_or(Status::FileNotFound)?;
                let is_df = fs.get(id).is_some_and(|f| f.is_df());
                if is_df != (p1 == 0x01) {
                    return Err(Status::IncompatibleFileStructure);
                }
                Ok(id)
            }
            0x03 => {
                if !data.is_empty() {
                    return Err(Status::WrongLength);
                }
                fs.parent(ch.df).ok_or(Status::FileNotFound)
            }
            0x04 => {
                if data.is_empty() || data.len() > 16 {
                    return Err(Status::WrongLength);
                }
                fs.find_by_name(data, Occurrence::from_p2(p2), ch.df)
                    .ok_or(Status::FileNotFound)
            }
            0x08 => match data {
                [0x3F, 0x00, rest @ ..] if !rest.is_empty() => walk(mf, rest),
                path => walk(mf, path),
            },
            0x09 => walk(ch.df, data),
            _ => Err(Status::IncorrectP1P2),
        }
    }

    fn make_current(&self, ch: &mut Channel, id: FileId) {
        let fs = &self.state.fs;
        match fs.get(id) {
            Some(f) if f.is_df() => {
                ch.df = id;
                ch.ef = None;
                ch.record = None;
            }
            Some(f) => {
                ch.df = f.parent.unwrap_or_else(|| fs.mf());
                ch.select_ef(id);
            }
            None => {}
        }
    }

    pub(crate) fn select(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        if cmd.p2 & 0xF0 != 0 || (cmd.p1 != 0x04 && cmd.p2 & 0x03 != 0) {
            return Err(Status::IncorrectP1P2);
        }
        let id = self.resolve(ch, cmd.p1, cmd.p2, cmd.data)?;
        self.make_current(ch, id);
        let fs = &self.state.fs;
        match cmd.p2 & 0x0C {
            0x00 => reply.push(&fs.fci(id)),
            0x04 => reply.push(&fs.fcp(id)),
            0x08 => reply.push(&fs.fmd(id)),
            _ => {}
        }
        Ok(match fs.get(id).map(|f| f.lcs) {
            Some(LifeCycle::Deactivated) => Status::FileDeactivated,
            Some(LifeCycle::Terminated) => Status::Other(0x6285),
            _ => Status::Success,
        })
    }

    /// Life cycle, then the access rule for `op`.
    fn authorize(&self, ch: &Channel, id: FileId, op: Op) -> Result<(), Status> {
        let fs = &self.state.fs;
        let f = fs.get(id).ok_or(Status::FileNotFound)?;
        if op != Op::Delete && fs.effective_lcs(id) != LifeCycle::Activated {
            return Err(Status::ConditionsNotSatisfied);
        }
        let rule = match op {
            Op::Read => f.access.read,
            Op::Update => f.access.update,
            Op::Delete => f.access.delete,
        };
        ch.allows(rule)
    }

    fn body(&self, id: FileId) -> Result<&EfBody, Status> {
        self.state
            .fs
            .get(id)
            .and_then(|f| f.ef())
            .ok_or(Status::IncompatibleFileStructure)
    }

    fn body_mut(&mut self, id: FileId) -> Result<&mut EfBody, Status> {
        self.state
            .fs
            .get_mut(id)
            .and_then(|f| f.ef_mut())
            .ok_or(Status::IncompatibleFileStructure)
    }

    /// An EF by short identifier in the current DF; it becomes the current EF.
    fn select_sfi(&self, ch: &mut Channel, sfi: u8) -> Result<FileId, Status> {
        let id = self
            .state
            .fs
            .child_by_sfi(ch.df, sfi)
            .ok_or(Status::FileNotFound)?;
        ch.select_ef(id);
        Ok(id)
    }

    /// The EF and offset of an even-INS binary command.
    fn even_binary_target(
        &self,
        ch: &mut Channel,
        p1: u8,
        p2: u8,
    ) -> Result<(FileId, usize), Status> {
        if p1 & 0x80 != 0 {
            let sfi = p1 & 0x1F;
            if p1 & 0x60 != 0 || sfi == 0 || sfi == 0x1F {
                return Err(Status::IncorrectP1P2);
            }
            Ok((self.select_sfi(ch, sfi)?, p2 as usize))
        } else {
            let id = ch.ef.ok_or(Status::CommandNotAllowedNoEf)?;
            Ok((id, u16::from_be_bytes([p1, p2]) as usize))
        }
    }

    /// The EF of an odd-INS binary command: `0000` current EF, `00xx` an
    /// SFI, otherwise a file identifier, which becomes current.
    fn odd_binary_target(&self, ch: &mut Channel, p1: u8, p2: u8) -> Result<FileId, Status> {
        match (p1, p2) {
            (0, 0) => ch.ef.ok_or(Status::CommandNotAllowedNoEf),
            (0, sfi @ 1..=30) => self.select_sfi(ch, sfi),
            _ => {
                let fs = &self.state.fs;
                let id = fs
                    .find_fid(ch.df, u16::from_be_bytes([p1, p2]))
                    .ok_or(Status::FileNotFound)?;
                if fs.get(id).is_some_and(|f| f.is_df()) {
                    return Err(Status::IncompatibleFileStructure);
                }
                self.make_current(ch, id);
                Ok(id)
            }
        }
    }

    fn transparent(&self, id: FileId) -> Result<&[u8], Status> {
        match self.body(id)? {
            EfBody::Transparent { data } => Ok(data),
            EfBody::Records { .. } => Err(Status::IncompatibleFileStructure),
        }
    }

    pub(crate) fn read_binary(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let odd = cmd.ins & 1 == 1;
        let (id, offset) = if odd {
            let id = self.odd_binary_target(ch, cmd.p1, cmd.p2)?;
            let (offsets, body) = odd_fields(cmd.data)?;
            if offsets.len() > 1 || body.is_some() {
                return Err(Status::IncorrectData);
            }
            (id, offsets.first().copied().unwrap_or(0))
        } else {
            if !cmd.data.is_empty() {
                return Err(Status::WrongLength);
            }
            self.even_binary_target(ch, cmd.p1, cmd.p2)?
        };
        let data = self.transparent(id)?;
        self.authorize(ch, id, Op::Read)?;
        let ne = reply.ne();
        if ne == 0 {
            return Err(Status::WrongLength);
        }
        if offset > data.len() {
            return Err(Status::WrongP1P2);
        }
        let rest = &data[offset..];
        let n = if odd {
            // The `53` header counts against Ne as well.
            let mut n = rest.len().min(ne);
            while n > 0 && 1 + header_len(n) + n > ne {
                n -= 1;
            }
            if 1 + header_len(n) > ne {
                return Err(Status::WrongLength);
            }
            ber::push(reply.buffer(), 0x53, &rest[..n]);
            reply.data().len()
        } else {
            let n = rest.len().min(ne);
            reply.push(&rest[..n]);
            n
        };
        Ok(read_status(cmd, reply, n))
    }

    pub(crate) fn update_binary(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
        how: Write,
    ) -> Outcome {
        let (id, offset, new) = if cmd.ins & 1 == 1 {
            let id = self.odd_binary_target(ch, cmd.p1, cmd.p2)?;
            let (offsets, body) = odd_fields(cmd.data)?;
            if offsets.len() > 1 {
                return Err(Status::IncorrectData);
            }
            let body = body.ok_or(Status::IncorrectData)?;
            (id, offsets.first().copied().unwrap_or(0), body)
        } else {
            let (id, offset) = self.even_binary_target(ch, cmd.p1, cmd.p2)?;
            (id, offset, cmd.data)
        };
        if new.is_empty() {
            return Err(Status::WrongLength);
        }
        let len = self.transparent(id)?.len();
        self.authorize(ch, id, Op::Update)?;
        if offset > len {
            return Err(Status::WrongP1P2);
        }
        let end = offset
            .checked_add(new.len())
            .filter(|e| *e <= len)
            .ok_or(Status::NotEnoughMemory)?;
        if let EfBody::Transparent { data } = self.body_mut(id)? {
            let target = &mut data[offset..end];
            match how {
                Write::Update => target.copy_from_slice(new),
                Write::Or => target.iter_mut().zip(new).for_each(|(t, n)| *t |= n),
            }
        }
        reply.state_changed();
        Ok(Status::Success)
    }

    pub(crate) fn erase_binary(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let (id, start, end) = if cmd.ins & 1 == 1 {
            let id = self.odd_binary_target(ch, cmd.p1, cmd.p2)?;
            let (offsets, body) = odd_fields(cmd.data)?;
            if body.is_some() || offsets.len() > 2 {
                return Err(Status::IncorrectData);
            }
            (
                id,
                offsets.first().copied().unwrap_or(0),
                offsets.get(1).copied(),
            )
        } else {
            let (id, start) = self.even_binary_target(ch, cmd.p1, cmd.p2)?;
            let end = match cmd.data {
                [] => None,
                [a, b] => Some(u16::from_be_bytes([*a, *b]) as usize),
                _ => return Err(Status::WrongLength),
            };
            (id, start, end)
        };
        let len = self.transparent(id)?.len();
        self.authorize(ch, id, Op::Update)?;
        if start > len {
            return Err(Status::WrongP1P2);
        }
        let end = end.unwrap_or(len);
        if end < start || end > len {
            return Err(Status::IncorrectData);
        }
        if let EfBody::Transparent { data } = self.body_mut(id)? {
            data[start..end].fill(0);
        }
        reply.state_changed();
        Ok(Status::Success)
    }

    /// The record EF a record command addresses with P2 b8..b4.
    fn record_target(&self, ch: &mut Channel, p2: u8) -> Result<FileId, Status> {
        let id = match p2 >> 3 {
            0 => ch.ef.ok_or(Status::CommandNotAllowedNoEf)?,
            0x1F => return Err(Status::IncorrectP1P2),
            sfi => self.select_sfi(ch, sfi)?,
        };
        match self.body(id)? {
            EfBody::Records { .. } => Ok(id),
            EfBody::Transparent { .. } => Err(Status::IncompatibleFileStructure),
        }
    }

    fn records(&self, id: FileId) -> Result<RecordView<'_>, Status> {
        match self.body(id)? {
            EfBody::Records {
                kind,
                record_size,
                max_records,
                records,
            } => Ok((*kind, *record_size, *max_records, records)),
            EfBody::Transparent { .. } => Err(Status::IncompatibleFileStructure),
        }
    }

    /// The record P1 and P2 b3..b1 designate, as an index.
    fn pick_record(&self, ch: &Channel, id: FileId, p1: u8, mode: u8) -> Result<usize, Status> {
        let (kind, _, _, records) = self.records(id)?;
        let n = records.len();
        let current = ch.record.filter(|r| *r < n);
        let cyclic = kind == RecordKind::Cyclic;
        match mode {
            // Record number P1; 00 is the current record.
            0b100 => match p1 {
                0x00 => current.ok_or(Status::RecordNotFound),
                0xFF => Err(Status::IncorrectP1P2),
                r => {
                    let i = r as usize - 1;
                    if i < n {
                        Ok(i)
                    } else {
                        Err(Status::RecordNotFound)
                    }
                }
            },
            // Identifier P1 (00: any record), first / last / next / previous.
            0b000..=0b011 => {
                let hit =
                    |i: &usize| p1 == 0 || records.get(*i).and_then(|r| r.first()) == Some(&p1);
                let found = match (mode, current) {
                    (0b000, _) | (0b010, None) => (0..n).find(hit),
                    (_, None) => (0..n).rev().find(hit),
                    (0b001, _) => (0..n).rev().find(hit),
                    (0b010, Some(c)) => {
                        let wrapped = if cyclic { 0..c + 1 } else { 0..0 };
                        (c + 1..n).chain(wrapped).find(hit)
                    }
                    (_, Some(c)) => {
                        let wrapped = if cyclic { c..n } else { 0..0 };
                        (0..c).rev().chain(wrapped.rev()).find(hit)
                    }
                };
                found.ok_or(Status::RecordNotFound)
            }
            // Several records at once (101, 110) are not offered.
            0b101 | 0b110 => Err(Status::FunctionNotSupported),
            _ => Err(Status::IncorrectP1P2),
        }
    }

    pub(crate) fn read_record(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        if !cmd.data.is_empty() {
            return Err(Status::WrongLength);
        }
        let id = self.record_target(ch, cmd.p2)?;
        self.authorize(ch, id, Op::Read)?;
        let i = self.pick_record(ch, id, cmd.p1, cmd.p2 & 0x07)?;
        let (_, _, _, records) = self.records(id)?;
        let rec = records.get(i).ok_or(Status::RecordNotFound)?;
        reply.push(rec);
        ch.record = Some(i);
        Ok(read_status(cmd, reply, rec.len()))
    }

    /// Checks a record's length against the EF's structure.
    fn record_fits(kind: RecordKind, size: usize, len: usize) -> Result<(), Status> {
        let ok = match kind {
            RecordKind::LinearVariable => (1..=size).contains(&len),
            RecordKind::LinearFixed | RecordKind::Cyclic => len == size,
        };
        if ok {
            Ok(())
        } else {
            Err(Status::WrongLength)
        }
    }

    pub(crate) fn update_record(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
        how: Write,
    ) -> Outcome {
        let id = self.record_target(ch, cmd.p2)?;
        self.authorize(ch, id, Op::Update)?;
        let i = self.pick_record(ch, id, cmd.p1, cmd.p2 & 0x07)?;
        let (kind, size, _, records) = self.records(id)?;
        let old_len = records.get(i).map_or(0, Vec::len);
        let new_len = match how {
            Write::Update => cmd.data.len(),
            Write::Or => cmd.data.len().max(old_len),
        };
        if cmd.data.is_empty() {
            return Err(Status::WrongLength);
        }
        Self::record_fits(kind, size, new_len)?;
        if let EfBody::Records { records, .. } = self.body_mut(id)? {
            if let Some(rec) = records.get_mut(i) {
                match how {
                    Write::Update => *rec = cmd.data.to_vec(),
                    Write::Or => {
                        rec.resize(new_len, 0);
                        rec.iter_mut().zip(cmd.data).for_each(|(r, n)| *r |= n);
                    }
                }
            }
        }
        ch.record = Some(i);
        reply.state_changed();
        Ok(Status::Success)
    }

    pub(crate) fn append_record(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        if cmd.p1 != 0 || cmd.p2 & 0x07 != 0 {
            return Err(Status::IncorrectP1P2);
        }
        let id = self.record_target(ch, cmd.p2)?;
        self.authorize(ch, id, Op::Update)?;
        let (kind, size, max, records) = self.records(id)?;
        Self::record_fits(kind, size, cmd.data.len())?;
        if kind != RecordKind::Cyclic && records.len() >= max {
            return Err(Status::NotEnoughMemory);
        }
        let mut at = 0;
        if let EfBody::Records { records, .. } = self.body_mut(id)? {
            if kind == RecordKind::Cyclic {
                // The newest record is record 1; the oldest drops off.
                records.insert(0, cmd.data.to_vec());
                records.truncate(max);
            } else {
                records.push(cmd.data.to_vec());
                at = records.len() - 1;
            }
        }
        ch.record = Some(at);
        reply.state_changed();
        Ok(Status::Success)
    }

    pub(crate) fn erase_record(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        if !cmd.data.is_empty() {
            return Err(Status::WrongLength);
        }
        let mode = cmd.p2 & 0x07;
        if mode != 0b100 && mode != 0b101 {
            return Err(Status::IncorrectP1P2);
        }
        let id = self.record_target(ch, cmd.p2)?;
        self.authorize(ch, id, Op::Update)?;
        let first = self.pick_record(ch, id, cmd.p1, 0b100)?;
        let (kind, ..) = self.records(id)?;
        if let EfBody::Records { records, .. } = self.body_mut(id)? {
            let last = if mode == 0b101 {
                records.len()
            } else {
                first + 1
            };
            for rec in records.iter_mut().take(last).skip(first) {
                // Erased records keep their numbers: zeroed, or empty if variable.
                if kind == RecordKind::LinearVariable {
                    rec.clear();
                } else {
                    rec.fill(0);
                }
            }
        }
        ch.record = Some(first);
        reply.state_changed();
        Ok(Status::Success)
    }

    /// SEARCH RECORD, simple search: the numbers of the records containing
    /// the data, forward (P2 b3..b1 = 100) or backward (101) from record P1.
    pub(crate) fn search_record(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let mode = cmd.p2 & 0x07;
        match mode {
            0b100 | 0b101 => {}
            0b110 => return Err(Status::FunctionNotSupported),
            _ => return Err(Status::IncorrectP1P2),
        }
        if cmd.data.is_empty() {
            return Err(Status::WrongLength);
        }
        let id = self.record_target(ch, cmd.p2)?;
        self.authorize(ch, id, Op::Read)?;
        let (_, _, _, records) = self.records(id)?;
        let n = records.len();
        let start = match cmd.p1 {
            0 if mode == 0b100 => 0,
            0 => n.saturating_sub(1),
            p => p as usize - 1,
        };
        if n == 0 || start >= n {
            return Err(Status::RecordNotFound);
        }
        let contains = |i: &usize| {
            records
                .get(*i)
                .is_some_and(|r| r.windows(cmd.data.len()).any(|w| w == cmd.data))
        };
        let hits: Vec<usize> = if mode == 0b100 {
            (start..n).filter(contains).collect()
        } else {
            (0..=start).rev().filter(contains).collect()
        };
        let first = *hits.first().ok_or(Status::RecordNotFound)?;
        for h in &hits {
            reply.push(&[(*h + 1) as u8]);
        }
        ch.record = Some(first);
        Ok(Status::Success)
    }

    pub(crate) fn create_file(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Err(Status::IncorrectP1P2);
        }
        if cmd.data.is_empty() {
            return Err(Status::WrongLength);
        }
        let spec = parse_fcp(cmd.data).map_err(|e| match e {
            FcpError::TooLarge(_) => Status::NotEnoughMemory,
            _ => Status::IncorrectData,
        })?;
        if spec.fid.is_none() && !matches!(spec.kind, FileKind::Df { name: Some(_), .. }) {
            return Err(Status::IncorrectData);
        }
        for rule in [spec.access.read, spec.access.update, spec.access.delete] {
            if let Access::Pin(r) = rule {
                if self.pin(r).is_none() {
                    return Err(Status::IncorrectData);
                }
            }
        }
        self.authorize(ch, ch.df, Op::Update)?;
        let id = self.state.fs.create(ch.df, spec).map_err(|e| match e {
            FsError::FidExists(_) | FsError::SfiExists(_) => Status::FileAlreadyExists,
            FsError::NameExists(_) => Status::DfNameAlreadyExists,
            FsError::Full | FsError::TooLarge(_) => Status::NotEnoughMemory,
            _ => Status::IncorrectData,
        })?;
        reply.state_changed();
        // The new file becomes the current one.
        self.make_current(ch, id);
        Ok(Status::Success)
    }

    /// The file of DELETE / ACTIVATE / DEACTIVATE: the current file without
    /// data, else as SELECT would find it.
    fn target_file(&self, ch: &Channel, cmd: &Command<'_>) -> Result<FileId, Status> {
        if cmd.p2 != 0 {
            return Err(Status::IncorrectP1P2);
        }
        if cmd.data.is_empty() {
            return match cmd.p1 {
                0x00 => Ok(ch.ef.unwrap_or(ch.df)),
                0x03 => self.resolve(ch, cmd.p1, 0, cmd.data),
                _ => Err(Status::WrongLength),
            };
        }
        self.resolve(ch, cmd.p1, 0, cmd.data)
    }

    pub(crate) fn delete_file(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let id = self.target_file(ch, cmd)?;
        let fs = &self.state.fs;
        let parent = fs.parent(id).ok_or(Status::ConditionsNotSatisfied)?;
        self.authorize(ch, id, Op::Delete)?;
        self.state
            .fs
            .delete(id)
            .map_err(|_| Status::ConditionsNotSatisfied)?;
        reply.state_changed();
        // The parent becomes current when the selection was inside.
        if !self.state.fs.contains(ch.df) {
            ch.df = parent;
            ch.ef = None;
        }
        if ch.ef.is_some_and(|e| !self.state.fs.contains(e)) {
            ch.ef = None;
            ch.df = parent;
        }
        if ch.ef.is_none() {
            ch.record = None;
        }
        Ok(Status::Success)
    }

    pub(crate) fn set_life_cycle(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
        activate: bool,
    ) -> Outcome {
        let id = self.target_file(ch, cmd)?;
        let f = self.state.fs.get(id).ok_or(Status::FileNotFound)?;
        if f.lcs == LifeCycle::Terminated {
            return Err(Status::ConditionsNotSatisfied);
        }
        ch.allows(f.access.update)?;
        let want = if activate {
            LifeCycle::Activated
        } else {
            LifeCycle::Deactivated
        };
        if f.lcs != want {
            if let Some(f) = self.state.fs.get_mut(id) {
                f.lcs = want;
            }
            reply.state_changed();
        }
        if !cmd.data.is_empty() {
            self.make_current(ch, id);
        }
        Ok(Status::Success)
    }
}

/// Bytes a BER length field takes for `n`.
fn header_len(n: usize) -> usize {
    match n {
        0..=0x7F => 1,
        0x80..=0xFF => 2,
        0x100..=0xFFFF => 3,
        _ => 4,
    }
}
