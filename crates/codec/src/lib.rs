//! Pure ISO 7816-4 codecs.
//!
//! Everything here turns bytes into typed values and back, with no I/O and no
//! panics on any input: command and response APDUs ([`apdu`]), status words
//! ([`status`]), BER-TLV ([`ber`]) and answer-to-reset bytes ([`atr`]).
//! Card logic and transports build on these types; nothing here knows about
//! either.
#![forbid(unsafe_code)]

pub mod apdu;
pub mod atr;
pub mod ber;
pub mod status;

pub use apdu::{ApduError, Class, Command, Ne};
pub use atr::{Atr, AtrBuilder, AtrError, Capabilities};
pub use status::Status;
