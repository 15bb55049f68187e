//! `virtcard card new cac --out DIR`: create a CAC card directory.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use virtcard_cards::cac::{self, Import, ProvisionOptions};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  virtcard card new cac --out ~/cards/cac           three RSA-2048 keys (ID, Email Signature, Email Encryption), generated PIN\n  virtcard card new cac --out c --pin 12345678 --key-size 4096\n  virtcard card new cac --out c --cert id.pem --key id.key --cert sig.pem --key sig.key\n  virtcard card new cac --out c --pkcs12 me.p12 --password secret\n\nThe directory is the card: serve it with `virtcard vpcd --card DIR` or `virtcard qemu ... --card DIR`.\nThe PIN is printed once; it is stored only in DIR/state.json (mode 0600)."
)]
pub struct Args {
    /// Directory to create (mode 0700); it must not already hold a card.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// PIN of 6 to 8 digits [default: 8 random digits, printed once].
    #[arg(long)]
    pub pin: Option<String>,
    /// Wrong PINs allowed before the PIN blocks.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=15))]
    pub max_tries: u8,
    /// RSA size of generated keys (1024 to 4096 bits).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1024..=4096))]
    pub key_size: u32,
    /// Common name of generated certificates (OpenSC shows it as the token label).
    #[arg(long, value_name = "CN")]
    pub name: Option<String>,
    /// Certificate to import; pair each with a --key, in order (repeatable, up to 16).
    #[arg(long = "cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,
    /// Private key of the matching --cert (PEM, DER, PKCS#8, PKCS#12).
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
    /// PKCS#12 file with a key and its certificate (repeatable).
    #[arg(long = "pkcs12", value_name = "FILE")]
    pub pkcs12: Vec<PathBuf>,
    /// Password of encrypted key and PKCS#12 files.
    #[arg(long)]
    pub password: Option<String>,
}

/// Turns the arguments into provisioning options.
pub fn options(args: &Args) -> Result<ProvisionOptions> {
    if args.certs.len() != args.keys.len() {
        bail!(
            "{} --cert but {} --key: give each certificate its key, in the same order",
            args.certs.len(),
            args.keys.len()
        );
    }
    let mut opts = ProvisionOptions {
        max_tries: args.max_tries,
        key_bits: args.key_size,
        common_name: args.name.clone(),
        ..Default::default()
    };
    if let Some(pin) = &args.pin {
        opts = opts.with_pin(pin.clone());
    }
    for (cert, key) in args.certs.iter().zip(&args.keys) {
        opts.imports.push(Import::cert_key(
            cert.clone(),
            key.clone(),
            args.password.clone(),
        ));
    }
    for p in &args.pkcs12 {
        opts.imports
            .push(Import::pkcs12(p.clone(), args.password.clone()));
    }
    Ok(opts)
}

pub fn run(args: Args) -> Result<()> {
    let opts = options(&args)?;
    let report = cac::provision(&args.out, &opts)
        .with_context(|| format!("cannot create a CAC card in {}", args.out.display()))?;
    println!(
        "Created a CAC card in {} (card id {})",
        report.dir.display(),
        report.card_id
    );
    for (i, c) in report.certificates.iter().enumerate() {
        println!(
            "  {:02}:{:02}  {:<17} RSA-{}  {}",
            (i + 1) >> 8,
            (i + 1) & 0xFF,
            c.label,
            c.bits,
            c.subject
        );
    }
    if report.pin_generated {
        println!(
            "PIN: {}  (shown only now; it is kept in {}/state.json)",
            report.pin.as_str(),
            report.dir.display()
        );
    } else {
        println!("PIN: as given with --pin");
    }
    println!(
        "Serve it with: virtcard vpcd --card {}",
        report.dir.display()
    );
    Ok(())
}
