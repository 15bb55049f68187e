//! `virtcard card …`: making and checking cards.

use crate::cards::{CARD_FILE, STATE_FILE};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use virtcard_cards::iso7816::{Iso7816Card, SAMPLE_DESCRIPTION};

// Parsed once per run; boxing the larger arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
pub enum CardCmd {
    /// Create a new card directory.
    #[command(subcommand)]
    New(NewCmd),
    /// Check an ISO 7816 card description file and summarise it.
    Check {
        /// The description file (.toml).
        file: PathBuf,
    },
    /// Print the built-in sample card description (a starting point for your own).
    Sample,
}

#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
pub enum NewCmd {
    /// A generic ISO 7816-4 file-system card from a description file.
    Iso7816(NewIsoArgs),
    /// A DoD Common Access Card (CAC) with three RSA keys and certificates.
    Cac(super::card_cac::Args),
    /// A PIV card like a new YubiKey (PIN 123456, PUK 12345678, default
    /// management key), or with imported keys and certificates.
    Piv(super::card_piv::Args),
}

#[derive(clap::Args)]
pub struct NewIsoArgs {
    /// Directory to create.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Card description to start from [default: the built-in sample card].
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
}

pub fn run(cmd: CardCmd) -> Result<()> {
    match cmd {
        CardCmd::New(NewCmd::Iso7816(a)) => new_iso(a),
        CardCmd::New(NewCmd::Cac(a)) => super::card_cac::run(a),
        CardCmd::New(NewCmd::Piv(a)) => super::card_piv::run(a),
        CardCmd::Check { file } => {
            let card = Iso7816Card::from_description_file(&file)?;
            println!(
                "{}: card {:?} is valid ({} files)",
                file.display(),
                card.name(),
                card.file_system().len()
            );
            Ok(())
        }
        CardCmd::Sample => {
            print!("{SAMPLE_DESCRIPTION}");
            Ok(())
        }
    }
}

fn new_iso(a: NewIsoArgs) -> Result<()> {
    if a.out.join(CARD_FILE).exists() || a.out.join(STATE_FILE).exists() {
        bail!(
            "{} already holds a card; choose another --out directory",
            a.out.display()
        );
    }
    let description = match &a.from {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => SAMPLE_DESCRIPTION.to_string(),
    };
    let origin = a
        .from
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the sample card".into());
    // Validate before anything is written.
    let card = Iso7816Card::from_description(&description, &origin)?;
    virtcard_store::create_private_dir(&a.out)?;
    virtcard_store::write_atomic(&a.out.join("description.toml"), description.as_bytes())?;
    virtcard_store::write_atomic(
        &a.out.join(CARD_FILE),
        b"# A generic ISO 7816-4 card; its files and PINs are in description.toml\n# until first use, then in state.json.\ntype = \"iso7816\"\ndescription = \"description.toml\"\n",
    )?;
    println!(
        "created ISO 7816 card {:?} in {}",
        card.name(),
        a.out.display()
    );
    println!("serve it with: virtcard vpcd --card {}", a.out.display());
    Ok(())
}
