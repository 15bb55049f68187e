//! QEMU's VSCard protocol, client side: our card in the USB CCID reader of a
//! VM (`-device usb-ccid -device ccid-card-passthru,chardev=…`).
//!
//! Layers, from the wire up:
//! - [`frame`]: the 12-byte big-endian header, message types 1–9, a
//!   streaming decoder that never panics;
//! - [`session`]: the client's state machine (Init → ReaderRemove/ReaderAdd
//!   → ATR → APDUs → CardRemove → ReaderRemove), pure;
//! - [`client`]: one std thread per QEMU connection (TCP or Unix socket)
//!   with reconnect and backoff, controlled through a [`ClientHandle`];
//! - [`sim`]: QEMU 7.2's side of the protocol, for tests.
//!
//! ```no_run
//! # fn card() -> Box<dyn virtcard_runtime::Card> { unimplemented!() }
//! use virtcard_transport::vscard::{spawn, ClientConfig, Endpoint};
//!
//! let endpoint = Endpoint::Tcp { host: "127.0.0.1".into(), port: 35963 };
//! let client = spawn(ClientConfig::new(endpoint), card())?;
//! client.remove(); // the guest sees the card go away
//! client.insert(); // and come back, freshly reset
//! client.shutdown();
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod atr;
pub mod client;
pub mod frame;
pub mod session;
pub mod sim;

pub use client::{spawn, spawn_observed, ClientConfig, ClientHandle, ClientStatus, Endpoint};
pub use frame::{Decoder, Frame, FrameError, MsgType};
pub use session::{ClientSession, Event, SessionError};
