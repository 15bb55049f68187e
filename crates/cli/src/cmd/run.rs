//! `virtcard run`: every reader and card of a configuration file served by
//! one process, controlled at run time through a Unix socket (`virtcard ctl`).

use super::serve::Serving;
use anyhow::Result;
use std::path::PathBuf;
use virtcard_daemon::{Config, Locations, Options};

#[derive(clap::Args, Debug)]
#[command(after_help = "Default places:\n  \
per user:  $XDG_CONFIG_HOME/virtcard/virtcard.toml, state in $XDG_STATE_HOME/virtcard,\n             \
control socket $XDG_RUNTIME_DIR/virtcard/control.sock\n  \
--system:  /etc/virtcard/virtcard.toml, /var/lib/virtcard, /run/virtcard/control.sock\n\n\
Examples:\n  virtcard run --config virtcard.toml\n  virtcard run --config virtcard.toml --check    validate only\n  \
virtcard ctl --config virtcard.toml list\n\n\
A commented sample configuration is packaging/virtcard.sample.toml. SIGINT or SIGTERM removes every \
card and reader (QEMU guests see them go) and closes every vpcd connection.")]
pub struct Args {
    /// Configuration file [default: see below].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the system service's places (/etc/virtcard, /var/lib/virtcard, /run/virtcard).
    #[arg(long)]
    pub system: bool,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check: bool,
}

/// The default places for `system` or the current user.
pub fn locations(system: bool) -> Result<Locations> {
    if system {
        Ok(Locations::system())
    } else {
        Ok(Locations::user()?)
    }
}

/// The configuration `--config` names, else the default file if it exists,
/// else an empty one (readers can be added with `virtcard ctl add-reader`).
pub fn load(config: Option<&PathBuf>, system: bool) -> Result<Config> {
    let loc = locations(system)?;
    match config {
        Some(f) => Ok(Config::load(f, &loc)?),
        None if loc.config.exists() => Ok(Config::load(&loc.config, &loc)?),
        None => {
            tracing::warn!(
                "no configuration at {}; starting without readers",
                loc.config.display()
            );
            Ok(Config::empty(&loc))
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let config = load(args.config.as_ref(), args.system)?;
    if args.check {
        println!(
            "{}: {} reader(s), control socket {}, state in {}",
            config
                .file
                .as_ref()
                .map_or("(defaults)".into(), |f| f.display().to_string()),
            config.readers.len(),
            config.control_socket.display(),
            config.state_dir.display()
        );
        return Ok(());
    }
    let serving = Serving::start(
        Options::new(&config.state_dir),
        Some(&config.control_socket),
    )?;
    serving.daemon.add_readers(&config.readers)?;
    tracing::info!(
        readers = config.readers.len(),
        socket = %config.control_socket.display(),
        "virtcard running"
    );
    serving.wait();
    tracing::info!("shutting down: removing every card and reader");
    serving.shutdown();
    Ok(())
}
