//! `virtcard`: the command-line edge. Parses arguments, sets up logging,
//! opens cards and hands them to transports; everything else lives in the
//! library crates.
#![forbid(unsafe_code)]

mod cards;
mod cmd;
mod logging;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "virtcard",
    version,
    about = "Virtual smart cards for PC/SC applications and QEMU guests",
    long_about = "virtcard emulates smart cards (a generic ISO 7816-4 file-system card, CAC, PIV) \
and puts them in front of real middleware: through pcscd's vpcd driver every PC/SC application on \
this host sees the card, and through QEMU's ccid-card-passthru a VM guest does.",
    after_help = "Examples:\n  virtcard vpcd                         serve the built-in sample card in reader 'Virtual PCD 00 00'\n  virtcard vpcd --slot 1 --card my.toml  a card described in my.toml, in 'Virtual PCD 00 01'\n  virtcard vpcd --listen 127.0.0.1:35963  wait for vpcd to connect (reversed mode)\n  virtcard -v vpcd                      also log every APDU (PINs redacted)"
)]
struct Cli {
    /// More log output: -v logs every APDU (secrets redacted), -vv everything.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output: errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a card to pcscd through vsmartcard's vpcd driver.
    Vpcd(cmd::vpcd::Args),
    /// Serve cards to QEMU guests (ccid-card-passthru chardev sockets).
    Qemu(cmd::qemu::Args),
    /// Relay a physical card from a PC/SC reader into a vpcd slot (APDU log, rewrite rules, filter).
    Relay(cmd::relay::Args),
    /// A drop-in for libcacard's vscclient, with its stdin commands.
    Vscclient(cmd::vscclient::Args),
    /// Serve every reader and card of a configuration file, controlled through a socket.
    Run(cmd::run::Args),
    /// Control a running `virtcard run`: list, insert, remove, swap, add/remove readers, events.
    Ctl(cmd::ctl::Args),
    /// Create, inspect and check card descriptions and card directories.
    #[command(subcommand)]
    Card(cmd::card::CardCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet);
    let result = match cli.command {
        Cmd::Vpcd(a) => cmd::vpcd::run(a),
        Cmd::Relay(a) => cmd::relay::run(a),
        Cmd::Qemu(a) => cmd::qemu::run(a),
        Cmd::Vscclient(a) => cmd::vscclient::run(a, &logging::set_debug),
        Cmd::Card(c) => cmd::card::run(c),
        Cmd::Run(a) => cmd::run::run(a),
        Cmd::Ctl(a) => cmd::ctl::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtcard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
