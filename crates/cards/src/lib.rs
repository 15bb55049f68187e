//! Card types for virtcard. Each module implements
//! [`virtcard_runtime::CardType`] for one kind of card; the runtime around it
//! handles transmission-level ISO 7816-4 (channels, chaining, GET RESPONSE).
#![forbid(unsafe_code)]

pub mod cac;
pub mod iso7816;
pub mod piv;
pub mod secret;
