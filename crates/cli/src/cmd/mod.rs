//! One module per subcommand.

pub mod card;
pub mod card_cac;
pub mod card_piv;
pub mod ctl;
pub mod hotplug;
pub mod qemu;
pub mod relay;
pub mod run;
pub mod serve;
pub mod vpcd;
pub mod vscclient;
