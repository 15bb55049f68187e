//! Transports that put a virtcard card in front of a reader.
//!
//! Each transport is a thin adapter around a [`virtcard_runtime::Card`]: a pure
//! wire codec, a pure session state machine, and a small blocking I/O layer on
//! std threads. Card logic lives in the runtime and the card types, never here.
//!
//! - [`vscard`]: QEMU's VSCard protocol, spoken towards the chardev of a
//!   `ccid-card-passthru` device, so a VM guest sees our card in a USB CCID
//!   reader.
//! - [`vpcd`]: vsmartcard's vpcd protocol, so pcscd shows our card in a
//!   "Virtual PCD" reader to every PC/SC application on the host.
#![forbid(unsafe_code)]

pub mod vpcd;
pub mod vscard;
