//! One module per subcommand.

pub mod card;
pub mod card_cac;
pub mod qemu;
pub mod relay;
pub mod vpcd;
pub mod vscclient;
