//! The fixed data structures of a CAC: AIDs, the Card Capability Container,
//! the Access Control Applet's tables, and the answers of the GlobalPlatform
//! and Microsoft Plug-and-Play applets. Everything here is built once when the
//! card is opened; the command path only slices prepared buffers.

use super::simpletlv;
use virtcard_codec::ber;

/// DoD CAC registered application provider identifier.
pub const RID_DOD: [u8; 5] = [0xA0, 0x00, 0x00, 0x00, 0x79];

pub const AID_CCC: [u8; 7] = [0xA0, 0x00, 0x00, 0x01, 0x16, 0xDB, 0x00];
pub const AID_ACA: [u8; 7] = [0xA0, 0x00, 0x00, 0x00, 0x79, 0x03, 0x00];
pub const AID_ACF: [u8; 7] = [0xA0, 0x00, 0x00, 0x01, 0x16, 0x30, 0x00];
pub const AID_GP: [u8; 7] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00];
pub const AID_MSFT: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x97, 0x43, 0x49, 0x44, 0x5F, 0x01, 0x00,
];

/// PKI applet `i` (0..16): `A0 00 00 00 79 01 0i`.
pub fn pki_aid(i: usize) -> [u8; 7] {
    [0xA0, 0x00, 0x00, 0x00, 0x79, 0x01, (i & 0x0F) as u8]
}

/// DoD applets whose last two AID bytes are also their only object ID:
/// the PKI Certificate / Credential containers and the two `12 xx` containers
/// carry one opaque (non-SimpleTLV) object each; `02 F0`..`02 F2` carry none.
pub const OPAQUE_CONTAINERS: [[u8; 2]; 5] = [
    [0x02, 0xFB],
    [0x02, 0xFE],
    [0x02, 0xFD],
    [0x12, 0x01],
    [0x12, 0x02],
];
pub const EMPTY_APPLETS: [[u8; 2]; 3] = [[0x02, 0xF0], [0x02, 0xF1], [0x02, 0xF2]];
/// Person Instance and Personnel: generic containers (SimpleTLV objects).
pub const PERSON_CONTAINERS: [[u8; 2]; 2] = [[0x02, 0x00], [0x02, 0x01]];
/// Object IDs of the Access Control File applet.
pub const ACF_OBJECTS: [[u8; 2]; 4] = [[0x30, 0x00], [0x60, 0x10], [0x60, 0x30], [0x90, 0x00]];

/// GSC-IS application types in a Card URL.
pub const APP_TYPE_GENERIC: u8 = 0x01;
pub const APP_TYPE_PKI: u8 = 0x04;

/// Applet information of GET PROPERTIES: family, then a 4-byte version.
pub const APPLET_INFO: [u8; 5] = [0x10, 0x02, 0x06, 0x02, 0x03];

/// A TL or V buffer as READ BUFFER serves it: the content preceded by its own
/// length as two little-endian bytes (offsets count from the prefix).
pub fn prefixed(content: &[u8]) -> Vec<u8> {
    let len = content.len().min(simpletlv::MAX_LEN) as u16;
    let mut out = Vec::with_capacity(content.len() + 2);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&content[..len as usize]);
    out
}

/// One GSC-IS Card URL (17 bytes): RID, application type, object ID,
/// application ID, access profile, PIN ID, access key info, key algorithm.
pub fn card_url(rid: &[u8; 5], app_type: u8, object_id: [u8; 2], app_id: [u8; 2]) -> Vec<u8> {
    let mut u = Vec::with_capacity(17);
    u.extend_from_slice(rid);
    u.push(app_type);
    u.extend_from_slice(&object_id);
    u.extend_from_slice(&app_id);
    // Access profile 00, PIN ID 00, no access key, key algorithm: RSA for PKI.
    u.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
    u.push(if app_type == APP_TYPE_PKI { 0x06 } else { 0x00 });
    u
}

/// The CCC as (tag, value) pairs, in the order the card presents them.
///
/// No `FD` (next CCC) tag: OpenSC follows one as a Card URL and fails the
/// whole CCC if it is empty.
pub fn ccc_objects(card_id: &[u8], pki_count: usize) -> Vec<(u8, Vec<u8>)> {
    let mut cuid = Vec::with_capacity(7 + card_id.len());
    cuid.extend_from_slice(&RID_DOD);
    // Manufacturer ID, card type (CAC v2), then the card ID OpenSC reports as serial.
    cuid.extend_from_slice(&[0x03, 0x02]);
    cuid.extend_from_slice(card_id);
    let mut objs = vec![(0xF0, cuid), (0xF1, vec![0x21]), (0xF2, vec![0x21])];
    for oid in PERSON_CONTAINERS {
        objs.push((0xF3, card_url(&RID_DOD, APP_TYPE_GENERIC, oid, oid)));
    }
    for i in 0..pki_count {
        let id = [0x01, i as u8];
        objs.push((0xF3, card_url(&RID_DOD, APP_TYPE_PKI, id, id)));
    }
    objs.push((0xF4, vec![0x00]));
    objs.push((0xF5, vec![0x10]));
    objs.push((0xF6, vec![0x00]));
    for t in [0xF7, 0xFA, 0xFB, 0xFC, 0xFE] {
        objs.push((t, Vec::new()));
    }
    objs
}

/// Splits (tag, value) pairs into the prefixed TL and V buffers.
pub fn tl_v_buffers(objs: &[(u8, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let mut tl = Vec::new();
    let mut v = Vec::new();
    for (t, val) in objs {
        simpletlv::push_tl(&mut tl, *t, val.len());
        v.extend_from_slice(val);
    }
    (prefixed(&tl), prefixed(&v))
}

/// GSC-IS access control rule types used in the ACR table.
mod acr_type {
    pub const ALWAYS: u8 = 0x00;
    pub const NEVER: u8 = 0x01;
    pub const XAUTH: u8 = 0x02;
    pub const XAUTH_OR_PIN: u8 = 0x03;
    pub const SECURE_CHANNEL_GP: u8 = 0x04;
    pub const PIN_ALWAYS: u8 = 0x05;
    pub const PIN: u8 = 0x06;
    pub const XAUTH_THEN_PIN: u8 = 0x07;
    pub const UPDATE_ONCE: u8 = 0x08;
    pub const PIN_THEN_XAUTH: u8 = 0x09;
    pub const SECURE_CHANNEL_ISO: u8 = 0x0B;
}

/// Access method providers: the cardholder PIN and a GP secure channel.
const AMP_PIN: u8 = 0x00;
const AMP_SECURE_CHANNEL: u8 = 0x01;

/// ACR ids the per-object rules refer to.
pub const ACR_ALWAYS: u8 = 0x00;
pub const ACR_NEVER: u8 = 0x01;
pub const ACR_PIN: u8 = 0x06;

/// One ACR entry: (ACR id, ACR type, access methods as (provider, key reference)).
type AcrEntry = (u8, u8, &'static [(u8, u8)]);

const ACR_ENTRIES: [AcrEntry; 11] = [
    (0x00, acr_type::ALWAYS, &[]),
    (0x01, acr_type::NEVER, &[]),
    (0x02, acr_type::XAUTH, &[(AMP_SECURE_CHANNEL, 0x01)]),
    (
        0x03,
        acr_type::XAUTH_OR_PIN,
        &[(AMP_SECURE_CHANNEL, 0x01), (AMP_PIN, 0x00)],
    ),
    (
        0x04,
        acr_type::SECURE_CHANNEL_GP,
        &[(AMP_SECURE_CHANNEL, 0x01)],
    ),
    (0x05, acr_type::PIN_ALWAYS, &[(AMP_PIN, 0x00)]),
    (ACR_PIN, acr_type::PIN, &[(AMP_PIN, 0x00)]),
    (
        0x07,
        acr_type::XAUTH_THEN_PIN,
        &[(AMP_SECURE_CHANNEL, 0x01), (AMP_PIN, 0x00)],
    ),
    (0x08, acr_type::UPDATE_ONCE, &[]),
    (
        0x09,
        acr_type::PIN_THEN_XAUTH,
        &[(AMP_PIN, 0x00), (AMP_SECURE_CHANNEL, 0x01)],
    ),
    (
        0x11,
        acr_type::SECURE_CHANNEL_ISO,
        &[(AMP_SECURE_CHANNEL, 0x02)],
    ),
];

fn acr_entry_value(e: &AcrEntry) -> Vec<u8> {
    let (id, ty, methods) = e;
    let mut v = vec![*id, *ty, methods.len() as u8];
    for (p, k) in methods.iter() {
        v.extend_from_slice(&[*p, *k]);
    }
    v
}

/// GET ACR P1 `00`: the number of entries (tag `01`) and one `A0` per ACR.
pub fn acr_table() -> Vec<u8> {
    let mut out = Vec::new();
    simpletlv::push(&mut out, 0x01, &[ACR_ENTRIES.len() as u8]);
    for e in &ACR_ENTRIES {
        simpletlv::push(&mut out, 0xA0, &acr_entry_value(e));
    }
    out
}

/// GET ACR P1 `01`: one entry by ACR id.
pub fn acr_entry(id: u8) -> Option<Vec<u8>> {
    let e = ACR_ENTRIES.iter().find(|e| e.0 == id)?;
    let mut out = Vec::new();
    simpletlv::push(&mut out, 0xA0, &acr_entry_value(e));
    Some(out)
}

/// The access rules of one object: read tag list, read value, update, and
/// the cryptographic operation.
#[derive(Clone, Copy, Debug)]
pub struct ObjectRules {
    pub oid: [u8; 2],
    pub read_tl: u8,
    pub read_v: u8,
    pub update: u8,
    pub crypto: u8,
}

/// The access rules of one applet.
#[derive(Clone, Debug)]
pub struct AppletRules {
    pub aid: Vec<u8>,
    pub objects: Vec<ObjectRules>,
}

fn applet_rules_value(a: &AppletRules, only: Option<[u8; 2]>) -> Vec<u8> {
    let objs: Vec<&ObjectRules> = a
        .objects
        .iter()
        .filter(|o| only.is_none_or(|w| o.oid == w))
        .collect();
    let mut v = vec![a.aid.len() as u8];
    v.extend_from_slice(&a.aid);
    v.push(objs.len() as u8);
    for o in objs {
        v.extend_from_slice(&o.oid);
        v.extend_from_slice(&[o.read_tl, o.read_v, o.update, o.crypto]);
    }
    v
}

/// GET ACR P1 `10`: the count (tag `01`) and one `A1` per applet.
pub fn applet_object_table(applets: &[AppletRules]) -> Vec<u8> {
    let mut out = Vec::new();
    simpletlv::push(&mut out, 0x01, &[applets.len() as u8]);
    for a in applets {
        simpletlv::push(&mut out, 0xA1, &applet_rules_value(a, None));
    }
    out
}

/// GET ACR P1 `11`: the rules of the applet with this AID.
pub fn applet_rules_by_aid(applets: &[AppletRules], aid: &[u8]) -> Option<Vec<u8>> {
    let a = applets.iter().find(|a| a.aid == aid)?;
    let mut out = Vec::new();
    simpletlv::push(&mut out, 0xA1, &applet_rules_value(a, None));
    Some(out)
}

/// GET ACR P1 `12`: the rules of the object with this ID (first applet holding it).
pub fn applet_rules_by_oid(applets: &[AppletRules], oid: [u8; 2]) -> Option<Vec<u8>> {
    let a = applets
        .iter()
        .find(|a| a.objects.iter().any(|o| o.oid == oid))?;
    let mut out = Vec::new();
    simpletlv::push(&mut out, 0xA1, &applet_rules_value(a, Some(oid)));
    Some(out)
}

/// GET ACR P1 `20`: access method providers (tag `01` count, `A2` entries of
/// provider id, type, key reference).
pub fn amp_table() -> Vec<u8> {
    let mut out = Vec::new();
    simpletlv::push(&mut out, 0x01, &[2]);
    simpletlv::push(&mut out, 0xA2, &[AMP_PIN, acr_type::PIN, 0x00]);
    simpletlv::push(
        &mut out,
        0xA2,
        &[AMP_SECURE_CHANNEL, acr_type::SECURE_CHANNEL_GP, 0x01],
    );
    out
}

/// GET ACR P1 `21`: the service applet table OpenSC reads when a card has no
/// CCC: applet family (`01`, 5 bytes), applet count (`94`), and one `93` per
/// applet holding an applet id, a status byte, the AID length and the AID.
pub fn service_table(aids: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    simpletlv::push(&mut out, 0x01, &APPLET_INFO);
    simpletlv::push(&mut out, 0x94, &[aids.len() as u8]);
    for (i, aid) in aids.iter().enumerate() {
        let mut v = vec![i as u8, 0x01, aid.len() as u8];
        v.extend_from_slice(aid);
        simpletlv::push(&mut out, 0x93, &v);
    }
    out
}

/// The GlobalPlatform card manager's FCI (27 bytes): the AID, and in the
/// proprietary template the maximum command length and a life-cycle record.
pub fn gp_fci() -> Vec<u8> {
    let mut out = Vec::new();
    ber::push_constructed(&mut out, 0x6F, |o| {
        ber::push(o, 0x84, &AID_GP);
        ber::push_constructed(o, 0xA5, |p| {
            ber::push(p, 0x9F65, &[0xFF]);
            ber::push(p, 0x9F6E, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
        });
    });
    out
}

/// CPLC data (GET DATA `9F7F`), 42 bytes under tag `9F7F`. The IC serial
/// number and batch identifier come from `serial` (6 bytes).
pub fn cplc(serial: &[u8; 6]) -> Vec<u8> {
    let mut v = Vec::with_capacity(42);
    v.extend_from_slice(&[0x47, 0x90]); // IC fabricator
    v.extend_from_slice(&[0x50, 0x40]); // IC type
    v.extend_from_slice(&[0x00, 0x01]); // operating system identifier
    v.extend_from_slice(&[0x50, 0x01]); // OS release date (YDDD)
    v.extend_from_slice(&[0x01, 0x00]); // OS release level
    v.extend_from_slice(&[0x50, 0x01]); // IC fabrication date
    v.extend_from_slice(serial); // IC serial number (4) and batch identifier (2)
    v.extend_from_slice(&[0x00; 2]); // module fabricator
    v.extend_from_slice(&[0x00; 2]); // module packaging date
    v.extend_from_slice(&[0x00; 2]); // ICC manufacturer
    v.extend_from_slice(&[0x00; 2]); // IC embedding date
    v.extend_from_slice(&[0x00; 2]); // pre-personaliser
    v.extend_from_slice(&[0x00; 2]); // pre-personalisation date
    v.extend_from_slice(&[0x00; 4]); // pre-personalisation equipment
    v.extend_from_slice(&[0x00; 2]); // personaliser
    v.extend_from_slice(&[0x00; 2]); // personalisation date
    v.extend_from_slice(&[0x00; 4]); // personalisation equipment
    let mut out = Vec::new();
    ber::push(&mut out, 0x9F7F, &v);
    out
}

/// GlobalPlatform card recognition data (GET DATA `0066`).
pub fn card_recognition_data() -> Vec<u8> {
    // 1.2.840.114283 is GlobalPlatform's OID arc.
    const GP: [u8; 6] = [0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B];
    let oid = |tail: &[u8]| {
        let mut v = GP.to_vec();
        v.extend_from_slice(tail);
        v
    };
    let mut out = Vec::new();
    ber::push_constructed(&mut out, 0x66, |o| {
        ber::push_constructed(o, 0x73, |r| {
            ber::push(r, 0x06, &oid(&[0x01]));
            // Card management type and version: GP 2.1.1.
            ber::push_constructed(r, 0x60, |t| {
                ber::push(t, 0x06, &oid(&[0x02, 0x02, 0x01, 0x01]))
            });
            // Card identification scheme.
            ber::push_constructed(r, 0x63, |t| ber::push(t, 0x06, &oid(&[0x03])));
            // Secure channel protocol 01, option 05.
            ber::push_constructed(r, 0x64, |t| ber::push(t, 0x06, &oid(&[0x04, 0x01, 0x05])));
        });
    });
    out
}

/// The Microsoft Plug-and-Play answer to GET DATA `7F68` (31 bytes): a
/// version, a 16-byte card GUID derived from the card ID, and a product name.
pub fn msft_pnp(card_id: &[u8]) -> Vec<u8> {
    let mut guid = [0u8; 16];
    for (i, b) in card_id.iter().enumerate() {
        if let Some(g) = guid.get_mut(i % 16) {
            *g ^= *b;
        }
    }
    let mut out = Vec::new();
    ber::push_constructed(&mut out, 0x7F68, |o| {
        ber::push(o, 0x02, &[0x01]);
        ber::push(o, 0x04, &guid);
        ber::push(o, 0x50, b"CACv2");
    });
    out
}

/// FCI of an applet selected by AID: `6F { 84 <AID>, A5 {} }`.
pub fn fci(aid: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ber::push_constructed(&mut out, 0x6F, |o| {
        ber::push(o, 0x84, aid);
        ber::push(o, 0xA5, &[]);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_reference() {
        assert_eq!(gp_fci().len(), 27);
        assert_eq!(cplc(&[1, 2, 3, 4, 5, 6]).len(), 45);
        assert_eq!(msft_pnp(&[7; 14]).len(), 31);
        assert_eq!(fci(&AID_CCC).len(), 0x0D);
        assert_eq!(fci(&AID_MSFT).len(), 0x11);
        assert_eq!(card_url(&RID_DOD, APP_TYPE_PKI, [1, 0], [1, 0]).len(), 17);
    }

    #[test]
    fn tables_parse() {
        for t in [acr_table(), amp_table(), service_table(&[AID_CCC.to_vec()])] {
            simpletlv::parse_all(&t).unwrap();
        }
        assert_eq!(
            simpletlv::parse_all(&acr_table()).unwrap().len(),
            1 + ACR_ENTRIES.len()
        );
    }
}
