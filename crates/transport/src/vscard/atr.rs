//! The ATR check QEMU applies to an `ATR` message.
//!
//! Reproduced (not fixed) so that the client can refuse an ATR QEMU would
//! reject, and the simulator can reject exactly what QEMU rejects.

/// Longest ATR QEMU stores.
pub const QEMU_MAX_ATR: usize = 40;

/// Longest ATR the guest's pcsc-lite accepts.
pub const PCSC_MAX_ATR: usize = 33;

/// Why QEMU refuses an ATR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AtrProblem {
    #[error("ATR of {0} bytes is longer than the 40 bytes QEMU accepts")]
    TooLong(usize),
    #[error("ATR of {0} bytes is shorter than TS and T0")]
    TooShort(usize),
    #[error("ATR starts with {0:02X}, QEMU accepts only 3B or 3F")]
    BadTs(u8),
    #[error("ATR of {len} bytes is shorter than the {needed} bytes its T0/TD bytes announce")]
    Inconsistent { len: usize, needed: usize },
}

/// QEMU 7.2's acceptance test for an ATR.
///
/// QEMU follows the Y nibble of T0 and of at most one more TD byte, and it
/// reads that TD byte from the index "interface bytes counted so far + 2",
/// which is not where ISO 7816-3 puts it. A surplus of bytes only warns, so
/// the inaccuracy rarely rejects a valid ATR; it is kept here on purpose.
pub fn qemu_check(atr: &[u8]) -> Result<(), AtrProblem> {
    let len = atr.len();
    if len > QEMU_MAX_ATR {
        return Err(AtrProblem::TooLong(len));
    }
    let (ts, t0) = match atr {
        [ts, t0, ..] => (*ts, *t0),
        _ => return Err(AtrProblem::TooShort(len)),
    };
    if ts != 0x3B && ts != 0x3F {
        return Err(AtrProblem::BadTs(ts));
    }
    let historical = (t0 & 0x0F) as usize;
    let mut interface = 0usize;
    let mut y = t0 >> 4;
    let mut groups = 0;
    while y != 0 && groups < 2 && interface + historical + 2 < len {
        groups += 1;
        interface += (y & 1) as usize + ((y >> 1) & 1) as usize + ((y >> 2) & 1) as usize;
        if y & 0x8 != 0 {
            interface += 1;
            // QEMU reads whatever is at that index (even past the end of the
            // ATR, in its fixed buffer); absent bytes count as zero here.
            y = atr.get(interface + 2).map_or(0, |b| b >> 4);
        } else {
            y = 0;
        }
    }
    let needed = 2 + historical + interface;
    if len < needed {
        return Err(AtrProblem::Inconsistent { len, needed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_good_atrs_pass() {
        for atr in [
            &[
                0x3B, 0x7A, 0x18, 0x00, 0x00, 0x73, 0x66, 0x74, 0x65, 0x20, 0x63, 0x64, 0x31, 0x34,
                0x34,
            ][..],
            &[
                0x3B, 0x89, 0x00, 0x56, 0x43, 0x41, 0x52, 0x44, 0x5F, 0x4E, 0x53, 0x53,
            ],
            &[0x3B, 0x88, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0x09],
            &[
                0x3B, 0xD5, 0x18, 0xFF, 0x80, 0x91, 0xFE, 0x1F, 0xC3, 0x80, 0x73, 0xC8, 0x21, 0x13,
                0x08,
            ],
        ] {
            assert_eq!(qemu_check(atr), Ok(()), "{atr:02X?}");
        }
    }

    #[test]
    fn bad_atrs_fail() {
        assert_eq!(qemu_check(&[0x3C, 0x00]), Err(AtrProblem::BadTs(0x3C)));
        assert_eq!(qemu_check(&[0x3B]), Err(AtrProblem::TooShort(1)));
        assert_eq!(qemu_check(&[0x3B; 41]), Err(AtrProblem::TooLong(41)));
        assert!(matches!(
            qemu_check(&[0x3B, 0x05, 1, 2]),
            Err(AtrProblem::Inconsistent { .. })
        ));
    }
}
