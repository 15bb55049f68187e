//! Log output on stderr; `RUST_LOG` overrides the verbosity flags, and the
//! level can change at run time (vscclient's `debug` command).

use std::sync::OnceLock;
use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn filter_for(verbose: u8, quiet: bool) -> EnvFilter {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    EnvFilter::new(level)
}

pub fn init(verbose: u8, quiet: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| filter_for(verbose, quiet));
    let (layer, handle) = reload::Layer::new(filter);
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(fmt::layer().with_writer(std::io::stderr).with_target(false));
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = HANDLE.set(handle);
    }
}

/// vscclient's debug levels: 0 quiet, 1..=10 APDUs and messages, above 10 everything.
pub fn set_debug(level: u32) {
    let verbose = match level {
        0 => 0,
        1..=10 => 1,
        _ => 2,
    };
    if let Some(h) = HANDLE.get() {
        let _ = h.reload(filter_for(verbose, false));
    }
}
