//! Identifiers from SP 800-73-4 and the YubiKey PIV extensions.

use virtcard_keystore::{Curve, KeyAlgorithm};

/// The PIV application AID including its version (SP 800-73-4 §2.2).
pub const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];
/// The PIX part that the Application Property Template names.
pub const PIV_PIX: [u8; 6] = [0x00, 0x00, 0x10, 0x00, 0x01, 0x00];

pub const DEFAULT_PIN: &[u8] = b"123456";
pub const DEFAULT_PUK: &[u8] = b"12345678";
pub const DEFAULT_MGMT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

pub const ALG_3DES: u8 = 0x03;
pub const ALG_AES128: u8 = 0x08;
pub const ALG_AES192: u8 = 0x0A;
pub const ALG_AES256: u8 = 0x0C;
pub const ALG_RSA1024: u8 = 0x06;
pub const ALG_RSA2048: u8 = 0x07;
pub const ALG_RSA3072: u8 = 0x05;
pub const ALG_RSA4096: u8 = 0x16;
pub const ALG_ECCP256: u8 = 0x11;
pub const ALG_ECCP384: u8 = 0x14;

pub const KEY_MGMT: u8 = 0x9B;
pub const KEY_ATTEST: u8 = 0xF9;
pub const REF_PIN: u8 = 0x80;
pub const REF_PUK: u8 = 0x81;

pub const PIN_DEFAULT: u8 = 0x00;
pub const PIN_NEVER: u8 = 0x01;
pub const PIN_ONCE: u8 = 0x02;
pub const PIN_ALWAYS: u8 = 0x03;
pub const TOUCH_DEFAULT: u8 = 0x00;
pub const TOUCH_NEVER: u8 = 0x01;
pub const TOUCH_ALWAYS: u8 = 0x02;
pub const TOUCH_CACHED: u8 = 0x03;

pub const ORIGIN_GENERATED: u8 = 0x01;
pub const ORIGIN_IMPORTED: u8 = 0x02;

pub const TAG_DISCOVERY: u32 = 0x7E;
pub const TAG_CHUID: u32 = 0x5FC102;
pub const TAG_CCC: u32 = 0x5FC107;
pub const TAG_ATTESTATION_CERT: u32 = 0x5FFF01;

/// Largest data object the card stores (the whole `53` content).
pub const MAX_OBJECT: usize = 16 * 1024;

/// Slots that hold asymmetric keys.
pub fn is_key_slot(slot: u8) -> bool {
    matches!(slot, 0x9A | 0x9C | 0x9D | 0x9E | 0x82..=0x95 | KEY_ATTEST)
}

/// The certificate object of a key slot.
pub fn cert_tag(slot: u8) -> Option<u32> {
    match slot {
        0x9A => Some(0x5FC105),
        0x9C => Some(0x5FC10A),
        0x9D => Some(0x5FC10B),
        0x9E => Some(0x5FC101),
        0x82..=0x95 => Some(0x5FC10D + (slot - 0x82) as u32),
        KEY_ATTEST => Some(TAG_ATTESTATION_CERT),
        _ => None,
    }
}

/// Data objects GET/PUT DATA accept (the discovery object is built in).
pub fn is_object_tag(tag: u32) -> bool {
    matches!(tag, 0x5FC101..=0x5FC123 | 0x7F61 | 0x5FFF00..=0x5FFF15)
}

/// Objects SP 800-73-4 lets only a PIN holder read (biometrics, printed information).
pub fn object_needs_pin(tag: u32) -> bool {
    matches!(tag, 0x5FC103 | 0x5FC108 | 0x5FC109 | 0x5FC121)
}

/// The policy a slot uses when generation or import leaves it at "default".
pub fn default_pin_policy(slot: u8) -> u8 {
    match slot {
        0x9C => PIN_ALWAYS,
        0x9E | KEY_ATTEST => PIN_NEVER,
        _ => PIN_ONCE,
    }
}

pub fn key_algorithm(alg: u8) -> Option<KeyAlgorithm> {
    Some(match alg {
        ALG_RSA1024 => KeyAlgorithm::Rsa { bits: 1024 },
        ALG_RSA2048 => KeyAlgorithm::Rsa { bits: 2048 },
        ALG_RSA3072 => KeyAlgorithm::Rsa { bits: 3072 },
        ALG_RSA4096 => KeyAlgorithm::Rsa { bits: 4096 },
        ALG_ECCP256 => KeyAlgorithm::Ec(Curve::P256),
        ALG_ECCP384 => KeyAlgorithm::Ec(Curve::P384),
        _ => return None,
    })
}

pub fn piv_algorithm(alg: KeyAlgorithm) -> Option<u8> {
    Some(match alg {
        KeyAlgorithm::Rsa { bits: 1024 } => ALG_RSA1024,
        KeyAlgorithm::Rsa { bits: 2048 } => ALG_RSA2048,
        KeyAlgorithm::Rsa { bits: 3072 } => ALG_RSA3072,
        KeyAlgorithm::Rsa { bits: 4096 } => ALG_RSA4096,
        KeyAlgorithm::Ec(Curve::P256) => ALG_ECCP256,
        KeyAlgorithm::Ec(Curve::P384) => ALG_ECCP384,
        KeyAlgorithm::Rsa { .. } => return None,
    })
}

/// Management key length in bytes.
pub fn mgmt_key_len(alg: u8) -> Option<usize> {
    match alg {
        ALG_3DES => Some(24),
        ALG_AES128 => Some(16),
        ALG_AES192 => Some(24),
        ALG_AES256 => Some(32),
        _ => None,
    }
}

/// Block size of a management key algorithm: the witness and challenge length.
pub fn mgmt_block_len(alg: u8) -> Option<usize> {
    match alg {
        ALG_3DES => Some(8),
        ALG_AES128 | ALG_AES192 | ALG_AES256 => Some(16),
        _ => None,
    }
}
