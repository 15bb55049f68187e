//! The card description: a TOML file naming the card, its PINs, files and
//! data objects. Every mistake is reported with the file, line and column it
//! sits at and what to write instead.

use super::pin::{Pin, Puk};
use super::{CardState, DataObject, STATE_FORMAT};
use crate::secret::Secret;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::ops::Range;
use thiserror::Error;
use toml::Spanned;
use virtcard_codec::Atr;
use virtcard_runtime::fs::{
    Access, AccessRules, EfBody, FileKind, FileSpec, FileSystem, LifeCycle, RecordKind,
    MAX_EF_SIZE, MAX_RECORDS, MF_FID,
};

/// Why a card description cannot be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{origin}: cannot read the card description: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Bytes written as hex (`"3F 00"`, `"3f:00"`), or `{ text = "..." }` for UTF-8 text.
#[derive(Clone, Debug, Default)]
struct Content(Vec<u8>);

/// Parses hex digits, allowing spaces, colons and line breaks between bytes.
pub(crate) fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(&digits);
    hex::decode(digits).map_err(|e| {
        format!("{e}; write bytes as pairs of hex digits such as \"3F 00\", or use {{ text = \"...\" }}")
    })
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hex string such as \"01 02 03\" or a table { text = \"...\" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Content, E> {
                parse_hex(s).map(Content).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Content, A::Error> {
                let mut out = None;
                while let Some(key) = map.next_key::<String>()? {
                    let bytes = match key.as_str() {
                        "text" => map.next_value::<String>()?.into_bytes(),
                        "hex" => {
                            parse_hex(&map.next_value::<String>()?).map_err(de::Error::custom)?
                        }
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}`; use `text` or `hex`"
                            )))
                        }
                    };
                    if out.replace(bytes).is_some() {
                        return Err(de::Error::custom("give either `text` or `hex`, not both"));
                    }
                }
                out.map(Content)
                    .ok_or_else(|| de::Error::custom("empty table; write { text = \"...\" }"))
            }
        }
        d.deserialize_any(V)
    }
}

/// An access condition written as `"always"`, `"never"` or `"pin 81"`.
#[derive(Clone, Copy, Debug)]
struct AccessDesc(Access);

pub(crate) fn parse_access(s: &str) -> Result<Access, String> {
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "always" => return Ok(Access::Always),
        "never" => return Ok(Access::Never),
        _ => {}
    }
    let hint = "expected \"always\", \"never\" or \"pin 81\" (a PIN reference in hex)";
    let Some(rest) = t.strip_prefix("pin") else {
        return Err(format!("`{s}` is not an access rule; {hint}"));
    };
    let rest = rest.trim_start_matches([' ', ':']);
    let rest = rest.strip_prefix("0x").unwrap_or(rest);
    match u8::from_str_radix(rest, 16) {
        Ok(r) if r != 0x00 && r != 0xFF => Ok(Access::Pin(r)),
        _ => Err(format!(
            "`{s}` names no usable PIN reference (01 to FE); {hint}"
        )),
    }
}

impl<'de> Deserialize<'de> for AccessDesc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_access(&s).map(AccessDesc).map_err(de::Error::custom)
    }
}

/// A path of file identifiers from the MF: `"3F00/5000/5001"`.
#[derive(Clone, Debug)]
struct PathDesc(Vec<u16>);

impl<'de> Deserialize<'de> for PathDesc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let hint =
            "write a path of 4-hex-digit file identifiers from the MF, such as \"3F00/5000/5001\"";
        let mut out = Vec::new();
        for part in s.split(['/', ' ']).filter(|p| !p.is_empty()) {
            let fid = (part.len() == 4)
                .then(|| u16::from_str_radix(part, 16).ok())
                .flatten()
                .ok_or_else(|| {
                    de::Error::custom(format!("`{part}` is not a file identifier; {hint}"))
                })?;
            out.push(fid);
        }
        if out.first() != Some(&MF_FID) {
            return Err(de::Error::custom(format!(
                "the path must start at the MF; {hint}"
            )));
        }
        Ok(PathDesc(out))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum FileType {
    Df,
    Transparent,
    LinearFixed,
    LinearVariable,
    Cyclic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PukDesc {
    value: String,
    #[serde(default = "default_puk_tries")]
    max_tries: u8,
}

fn default_puk_tries() -> u8 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinDesc {
    reference: u8,
    value: String,
    #[serde(default = "default_pin_tries")]
    max_tries: u8,
    #[serde(default = "default_min_length")]
    min_length: usize,
    #[serde(default = "default_max_length")]
    max_length: usize,
    padding: Option<u8>,
    puk: Option<Spanned<PukDesc>>,
}

fn default_pin_tries() -> u8 {
    3
}
fn default_min_length() -> usize {
    4
}
fn default_max_length() -> usize {
    16
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataObjectDesc {
    tag: u32,
    value: Content,
    read: Option<AccessDesc>,
    update: Option<AccessDesc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDesc {
    path: PathDesc,
    #[serde(rename = "type")]
    kind: FileType,
    name: Option<Content>,
    sfi: Option<u8>,
    content: Option<Content>,
    size: Option<usize>,
    #[serde(default)]
    fill: u8,
    records: Option<Vec<Content>>,
    record_size: Option<usize>,
    max_records: Option<usize>,
    read: Option<AccessDesc>,
    update: Option<AccessDesc>,
    delete: Option<AccessDesc>,
    #[serde(default)]
    lcs: LifeCycle,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Description {
    name: String,
    atr: Option<Spanned<Content>>,
    #[serde(default, rename = "pin")]
    pins: Vec<Spanned<PinDesc>>,
    #[serde(default, rename = "data_object")]
    data_objects: Vec<Spanned<DataObjectDesc>>,
    #[serde(default, rename = "file")]
    files: Vec<Spanned<FileDesc>>,
}

struct Ctx<'a> {
    src: &'a str,
    origin: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> LoadError {
        let at = span.start.min(self.src.len());
        let before = self.src.get(..at).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        LoadError::Invalid {
            origin: self.origin.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

fn path_string(p: &[u16]) -> String {
    p.iter()
        .map(|f| format!("{f:04X}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// Loads a description; `origin` names it in error messages (usually its path).
pub(crate) fn load(src: &str, origin: &str) -> Result<CardState, LoadError> {
    let ctx = Ctx { src, origin };
    let desc: Description = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err(span, e.message().trim().to_string())
    })?;
    if desc.name.trim().is_empty() {
        return Err(ctx.err(0..0, "`name` is empty; give the card a name"));
    }
    let atr = match &desc.atr {
        Some(a) => {
            Atr::parse(&a.get_ref().0).map_err(|e| {
                ctx.err(
                    a.span(),
                    format!("`atr` is not a usable ATR: {e}; remove it to use the built-in one"),
                )
            })?;
            Some(a.get_ref().0.clone())
        }
        None => None,
    };

    let mut pins: Vec<Pin> = Vec::new();
    for p in &desc.pins {
        let span = p.span();
        let d = p.get_ref();
        if d.reference == 0x00 || d.reference == 0xFF {
            return Err(ctx.err(span, "PIN `reference` must be 0x01 to 0xFE (0x80 to 0xFE: specific to a DF, 0x01 to 0x7F: global)"));
        }
        if pins.iter().any(|q| q.reference == d.reference) {
            return Err(ctx.err(
                span,
                format!(
                    "PIN reference 0x{:02X} is defined twice; give each PIN its own `reference`",
                    d.reference
                ),
            ));
        }
        if !(1..=15).contains(&d.max_tries) {
            return Err(ctx.err(
                span,
                "`max_tries` must be 1 to 15 (the status word 63Cx shows four bits)",
            ));
        }
        if d.min_length == 0 || d.min_length > d.max_length || d.max_length > 127 {
            return Err(ctx.err(span, "need 1 <= `min_length` <= `max_length` <= 127"));
        }
        let value = d.value.as_bytes();
        if !(d.min_length..=d.max_length).contains(&value.len()) {
            return Err(ctx.err(
                span,
                format!(
                    "the PIN `value` has {} characters; `min_length`..`max_length` is {}..{}",
                    value.len(),
                    d.min_length,
                    d.max_length
                ),
            ));
        }
        let puk = match &d.puk {
            Some(k) => {
                let kd = k.get_ref();
                if !(1..=15).contains(&kd.max_tries) {
                    return Err(ctx.err(k.span(), "PUK `max_tries` must be 1 to 15"));
                }
                if kd.value.is_empty() {
                    return Err(ctx.err(k.span(), "PUK `value` is empty"));
                }
                Some(Puk {
                    value: Secret::new(kd.value.as_bytes()),
                    max_tries: kd.max_tries,
                    tries_left: kd.max_tries,
                })
            }
            None => None,
        };
        pins.push(Pin {
            reference: d.reference,
            value: Secret::new(value),
            max_tries: d.max_tries,
            tries_left: d.max_tries,
            min_length: d.min_length,
            max_length: d.max_length,
            padding: d.padding,
            puk,
        });
    }
    let check_access = |a: Option<AccessDesc>, default: Access, span: Range<usize>| {
        let a = a.map_or(default, |x| x.0);
        match a {
            Access::Pin(r) if !pins.iter().any(|p| p.reference == r) => Err(ctx.err(
                span,
                format!("access rule names PIN {r:02X}, which no [[pin]] defines"),
            )),
            _ => Ok(a),
        }
    };

    let mut data_objects: Vec<DataObject> = Vec::new();
    for o in &desc.data_objects {
        let span = o.span();
        let d = o.get_ref();
        if d.tag == 0 || d.tag > 0xFFFF {
            return Err(ctx.err(span, "data object `tag` must be 0x01 to 0xFFFF"));
        }
        if data_objects.iter().any(|x| x.tag == d.tag) {
            return Err(ctx.err(
                span,
                format!("data object tag 0x{:X} is defined twice", d.tag),
            ));
        }
        if d.value.0.len() > MAX_EF_SIZE {
            return Err(ctx.err(
                span,
                format!("data object value exceeds {MAX_EF_SIZE} bytes"),
            ));
        }
        data_objects.push(DataObject {
            tag: d.tag,
            value: d.value.0.clone(),
            read: check_access(d.read, Access::Always, span.clone())?,
            update: check_access(d.update, Access::Never, span)?,
        });
    }

    let mut fs = FileSystem::new();
    let mut order: Vec<&Spanned<FileDesc>> = desc.files.iter().collect();
    // Parents first, whatever order the file lists them in.
    order.sort_by_key(|f| f.get_ref().path.0.len());
    let mut seen: Vec<&[u16]> = Vec::new();
    for f in order {
        let span = f.span();
        let d = f.get_ref();
        let path = d.path.0.as_slice();
        if seen.contains(&path) {
            return Err(ctx.err(
                span,
                format!("file {} is described twice", path_string(path)),
            ));
        }
        seen.push(path);
        let access = AccessRules {
            read: check_access(d.read, Access::Always, span.clone())?,
            update: check_access(d.update, Access::Always, span.clone())?,
            delete: check_access(d.delete, Access::Always, span.clone())?,
        };
        let name = d.name.as_ref().map(|n| n.0.clone());
        if d.kind != FileType::Df && name.is_some() {
            return Err(ctx.err(span, "`name` (a DF name) belongs to files of type \"df\""));
        }
        if name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 16) {
            return Err(ctx.err(span, "a DF `name` has 1 to 16 bytes"));
        }
        let [parent_path @ .., fid] = path else {
            return Err(ctx.err(span, "empty path"));
        };
        if parent_path.is_empty() {
            // The MF itself: only its name, rules and life cycle can be set.
            if d.kind != FileType::Df
                || d.content.is_some()
                || d.records.is_some()
                || d.sfi.is_some()
            {
                return Err(ctx.err(
                    span,
                    "the MF (3F00) is a DF; it takes only `name`, access rules and `lcs`",
                ));
            }
            let mf_id = fs.mf();
            if let Some(mf) = fs.get_mut(mf_id) {
                mf.access = AccessRules {
                    delete: Access::Never,
                    ..access
                };
                mf.lcs = d.lcs;
                mf.kind = FileKind::Df {
                    name,
                    children: Vec::new(),
                };
            }
            continue;
        }
        let parent_bytes: Vec<u8> = parent_path
            .iter()
            .skip(1)
            .flat_map(|f| f.to_be_bytes())
            .collect();
        let parent = fs.walk(fs.mf(), &parent_bytes).map_err(|_| {
            ctx.err(span.clone(), format!("parent {} of this file is not described; add a [[file]] of type \"df\" with that path", path_string(parent_path)))
        })?;
        if fs.get(parent).is_some_and(|p| !p.is_df()) {
            return Err(ctx.err(
                span,
                format!(
                    "parent {} is an EF; files live in DFs",
                    path_string(parent_path)
                ),
            ));
        }
        let kind = file_kind(&ctx, d, name, span.clone())?;
        if d.kind == FileType::Df && d.sfi.is_some() {
            return Err(ctx.err(span, "`sfi` belongs to EFs"));
        }
        let spec = FileSpec {
            fid: Some(*fid),
            sfi: d.sfi,
            lcs: d.lcs,
            access,
            kind,
        };
        fs.create(parent, spec).map_err(|e| {
            ctx.err(
                span.clone(),
                format!("cannot create {}: {e}", path_string(path)),
            )
        })?;
    }
    Ok(CardState {
        format: STATE_FORMAT,
        name: desc.name,
        atr,
        fs,
        pins,
        data_objects,
    })
}

fn file_kind(
    ctx: &Ctx<'_>,
    d: &FileDesc,
    name: Option<Vec<u8>>,
    span: Range<usize>,
) -> Result<FileKind, LoadError> {
    let records_kind = match d.kind {
        FileType::Df => {
            if d.content.is_some() || d.records.is_some() || d.size.is_some() {
                return Err(ctx.err(
                    span,
                    "a DF has no `content`, `size` or `records`; put them in EFs below it",
                ));
            }
            return Ok(FileKind::Df {
                name,
                children: Vec::new(),
            });
        }
        FileType::Transparent => {
            if d.records.is_some() || d.record_size.is_some() || d.max_records.is_some() {
                return Err(ctx.err(span, "`records`, `record_size` and `max_records` belong to record EFs; use `content` for a transparent EF"));
            }
            let mut data = d.content.clone().unwrap_or_default().0;
            if let Some(size) = d.size {
                if size < data.len() {
                    return Err(ctx.err(
                        span,
                        format!(
                            "`size` {size} is smaller than the {} bytes of `content`",
                            data.len()
                        ),
                    ));
                }
                data.resize(size, d.fill);
            }
            if data.len() > MAX_EF_SIZE {
                return Err(ctx.err(
                    span,
                    format!("a transparent EF holds at most {MAX_EF_SIZE} bytes"),
                ));
            }
            return Ok(FileKind::Ef(EfBody::Transparent { data }));
        }
        FileType::LinearFixed => RecordKind::LinearFixed,
        FileType::LinearVariable => RecordKind::LinearVariable,
        FileType::Cyclic => RecordKind::Cyclic,
    };
    if d.content.is_some() || d.size.is_some() {
        return Err(ctx.err(span, "record EFs take `records`, not `content` or `size`"));
    }
    let records: Vec<Vec<u8>> = d
        .records
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.0)
        .collect();
    let longest = records.iter().map(Vec::len).max();
    let record_size = match (d.record_size, longest) {
        (Some(s), _) => s,
        (None, Some(l)) if l > 0 => l,
        _ => {
            return Err(ctx.err(
                span,
                "set `record_size` (there are no records to take it from)",
            ))
        }
    };
    let max_records = match d.max_records {
        Some(m) => m,
        None if !records.is_empty() => records.len(),
        None => return Err(ctx.err(span, "set `max_records` (there are no records to count)")),
    };
    if max_records == 0 || max_records > MAX_RECORDS || records.len() > max_records {
        return Err(ctx.err(
            span,
            format!(
                "`max_records` must be 1 to {MAX_RECORDS} and at least the number of `records`"
            ),
        ));
    }
    for (i, r) in records.iter().enumerate() {
        let fits = match records_kind {
            RecordKind::LinearVariable => r.len() <= record_size && !r.is_empty(),
            RecordKind::LinearFixed | RecordKind::Cyclic => r.len() == record_size,
        };
        if !fits {
            return Err(ctx.err(
                span,
                format!(
                    "record {} has {} bytes; record_size is {record_size} ({})",
                    i + 1,
                    r.len(),
                    if records_kind == RecordKind::LinearVariable {
                        "the longest allowed"
                    } else {
                        "every record has exactly this length"
                    }
                ),
            ));
        }
    }
    if record_size.saturating_mul(max_records) > MAX_EF_SIZE {
        return Err(ctx.err(
            span,
            format!("record_size x max_records exceeds {MAX_EF_SIZE} bytes"),
        ));
    }
    Ok(FileKind::Ef(EfBody::Records {
        kind: records_kind,
        record_size,
        max_records,
        records,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> (usize, String) {
        match load(src, "test.toml") {
            Err(LoadError::Invalid {
                line,
                message,
                origin,
                ..
            }) => {
                assert_eq!(origin, "test.toml");
                (line, message)
            }
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("loaded"),
        }
    }

    #[test]
    fn errors_name_the_line() {
        let (line, msg) = err("name = \"x\"\n\n[[file]]\npath = \"3F00/50\"\ntype = \"df\"\n");
        assert_eq!(line, 4);
        assert!(msg.contains("not a file identifier"), "{msg}");
        let (line, msg) =
            err("name = \"x\"\n[[file]]\npath = \"3F00/5000/5001\"\ntype = \"transparent\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("parent 3F00/5000"), "{msg}");
        let (line, msg) = err("name = \"x\"\n[[file]]\npath = \"3F00/5001\"\ntype = \"transparent\"\ncontent = \"0G\"\n");
        assert_eq!(line, 5);
        assert!(msg.contains("hex"), "{msg}");
        let (line, msg) = err("name = \"x\"\n[[file]]\npath = \"3F00/5001\"\ntype = \"transparent\"\nread = \"pin 81\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("PIN 81"), "{msg}");
        let (line, msg) =
            err("name = \"x\"\n[[file]]\npath = \"3F00/5001\"\ntype = \"transparnt\"\n");
        assert_eq!(line, 4);
        assert!(msg.contains("unknown variant"), "{msg}");
        let (_, msg) = err("name = \"x\"\ncolour = 1\n");
        assert!(msg.contains("unknown field"), "{msg}");
        let (line, msg) = err("name = \"x\"\n[[file]]\npath = \"3F00/5001\"\ntype = \"linear-fixed\"\nrecords = [\"01\", \"0203\"]\n");
        assert_eq!(line, 2);
        assert!(msg.contains("record 1 has 1 bytes"), "{msg}");
    }

    #[test]
    fn loads_text_and_hex() {
        let s = load(
            "name = \"x\"\n[[file]]\npath = \"3F00/5001\"\ntype = \"transparent\"\ncontent = { text = \"hi\" }\nsize = 4\nfill = 0xFF\n",
            "t",
        )
        .unwrap();
        let mf = s.fs.mf();
        let id = s.fs.child_by_fid(mf, 0x5001).unwrap();
        assert_eq!(
            s.fs.get(id).unwrap().ef(),
            Some(&EfBody::Transparent {
                data: b"hi\xFF\xFF".to_vec()
            })
        );
        assert_eq!(parse_hex("3F 00:0a").unwrap(), vec![0x3F, 0, 10]);
        assert_eq!(parse_access("PIN 0x81"), Ok(Access::Pin(0x81)));
        assert_eq!(parse_access("pin:01"), Ok(Access::Pin(1)));
        assert!(parse_access("pin ff").is_err());
    }
}
