//! `virtcard card new piv --out DIR`: create a PIV card directory.

use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use virtcard_cards::piv::{self, algorithm, ProvisionOptions, SlotContents};
use virtcard_keystore::{Curve, KeyAlgorithm};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  virtcard card new piv --out ~/cards/piv                         like a new YubiKey: PIN 123456, PUK 12345678,\n                                                                 3DES management key 010203040506070801020304050607080102030405060708\n  virtcard card new piv --out p --generate 9a=rsa2048 --generate 9c=p256\n  virtcard card new piv --out p --key 9a=me.key --cert 9a=me.pem --pin 654321\n  virtcard card new piv --out p --key 9d=me.p12 --password secret\n  virtcard card new piv --out p --management-key-algorithm aes256 --management-key 00112233...\n\nSlots: 9a (PIV Authentication), 9c (Digital Signature), 9d (Key Management), 9e (Card\nAuthentication), 82-95 (retired), f9 (attestation). Algorithms: rsa1024, rsa2048, rsa3072,\nrsa4096, p256, p384. The directory is the card: serve it with `virtcard vpcd --card DIR`."
)]
pub struct Args {
    /// Directory to create (mode 0700); it must not already hold a card.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Serial number answered to GET SERIAL [default: random, 8 digits].
    #[arg(long)]
    pub serial: Option<u32>,
    /// Firmware version answered to GET VERSION (5.3+: GET METADATA, 5.4+: AES
    /// management keys, 5.7+: MOVE KEY).
    #[arg(long, value_name = "X.Y.Z", default_value = piv::DEFAULT_VERSION)]
    pub firmware: String,
    /// PIN, 6 to 8 characters.
    #[arg(long, default_value = "123456")]
    pub pin: String,
    /// PUK, 6 to 8 characters.
    #[arg(long, default_value = "12345678")]
    pub puk: String,
    /// Management key in hex [default: the YubiKey default 3DES key].
    #[arg(long, value_name = "HEX")]
    pub management_key: Option<String>,
    /// Management key algorithm: 3des, aes128, aes192 or aes256.
    #[arg(long, default_value = "3des", value_name = "ALG")]
    pub management_key_algorithm: String,
    /// Wrong PINs allowed before the PIN blocks.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=15))]
    pub pin_retries: u8,
    /// Wrong PUKs allowed before the PUK blocks.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=15))]
    pub puk_retries: u8,
    /// Generate a key on the card: SLOT=ALG, e.g. 9a=rsa2048 (repeatable).
    #[arg(long = "generate", value_name = "SLOT=ALG")]
    pub generate: Vec<String>,
    /// Import a private key: SLOT=FILE (PEM, DER, PKCS#8, PKCS#12; repeatable).
    /// A PKCS#12 file also brings its certificate.
    #[arg(long = "key", value_name = "SLOT=FILE")]
    pub keys: Vec<String>,
    /// Store a certificate: SLOT=FILE (PEM or DER; repeatable).
    #[arg(long = "cert", value_name = "SLOT=FILE")]
    pub certs: Vec<String>,
    /// Password of encrypted key and PKCS#12 files.
    #[arg(long)]
    pub password: Option<String>,
    /// Leave out the CHUID and CCC (a new YubiKey has neither; OpenSC then has
    /// no card serial for its cache).
    #[arg(long)]
    pub no_chuid: bool,
    /// Leave out the attestation key and certificate in slot F9.
    #[arg(long)]
    pub no_attestation: bool,
    /// Answer to reset in hex (must offer T=1) [default: T=0 and T=1, "YubiKey" issuer data].
    #[arg(long, value_name = "HEX")]
    pub atr: Option<String>,
}

fn parse_slot(text: &str) -> Result<u8> {
    let t = text.trim().trim_start_matches("0x");
    u8::from_str_radix(t, 16)
        .ok()
        .filter(|s| matches!(s, 0x9A | 0x9C | 0x9D | 0x9E | 0x82..=0x95 | 0xF9))
        .ok_or_else(|| anyhow!("{text:?} is not a PIV key slot (9a, 9c, 9d, 9e, 82-95, f9)"))
}

fn split_pair<'a>(flag: &str, spec: &'a str) -> Result<(u8, &'a str)> {
    let (slot, rest) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("--{flag} {spec:?}: expected SLOT=VALUE, e.g. 9a=…"))?;
    Ok((parse_slot(slot)?, rest))
}

fn parse_algorithm(text: &str) -> Result<KeyAlgorithm> {
    Ok(match text.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
        "rsa1024" => KeyAlgorithm::Rsa { bits: 1024 },
        "rsa2048" => KeyAlgorithm::Rsa { bits: 2048 },
        "rsa3072" => KeyAlgorithm::Rsa { bits: 3072 },
        "rsa4096" => KeyAlgorithm::Rsa { bits: 4096 },
        "p256" | "eccp256" | "secp256r1" | "prime256v1" => KeyAlgorithm::Ec(Curve::P256),
        "p384" | "eccp384" | "secp384r1" => KeyAlgorithm::Ec(Curve::P384),
        _ => bail!("unknown key algorithm {text:?}: use rsa1024, rsa2048, rsa3072, rsa4096, p256 or p384"),
    })
}

fn slot_entry(slots: &mut Vec<SlotContents>, slot: u8) -> &mut SlotContents {
    let i = match slots.iter().position(|s| s.slot == slot) {
        Some(i) => i,
        None => {
            slots.push(SlotContents {
                slot,
                ..Default::default()
            });
            slots.len() - 1
        }
    };
    &mut slots[i]
}

/// Turns the arguments into provisioning options.
pub fn options(args: &Args) -> Result<ProvisionOptions> {
    let mgmt_alg = match args.management_key_algorithm.to_ascii_lowercase().as_str() {
        "3des" | "tdes" => algorithm::ALG_3DES,
        "aes128" => algorithm::ALG_AES128,
        "aes192" => algorithm::ALG_AES192,
        "aes256" => algorithm::ALG_AES256,
        other => {
            bail!("unknown management key algorithm {other:?}: use 3des, aes128, aes192 or aes256")
        }
    };
    let mut opts = ProvisionOptions {
        serial: args.serial,
        version: args.firmware.clone(),
        pin_retries: args.pin_retries,
        puk_retries: args.puk_retries,
        chuid: !args.no_chuid,
        attestation: !args.no_attestation,
        atr: args.atr.clone(),
        ..Default::default()
    }
    .with_pin(args.pin.as_bytes())
    .with_puk(args.puk.as_bytes());
    match &args.management_key {
        Some(hex_key) => {
            let key = zeroize::Zeroizing::new(
                hex::decode(hex_key.replace([' ', ':'], ""))
                    .map_err(|_| anyhow!("--management-key is not hex"))?,
            );
            opts = opts.with_management_key(mgmt_alg, &key);
        }
        None if mgmt_alg != algorithm::ALG_3DES => {
            bail!("an AES management key needs --management-key HEX")
        }
        None => {}
    }
    for spec in &args.generate {
        let (slot, alg) = split_pair("generate", spec)?;
        slot_entry(&mut opts.slots, slot).generate = Some(parse_algorithm(alg)?);
    }
    for spec in &args.keys {
        let (slot, file) = split_pair("key", spec)?;
        let cred = virtcard_keystore::load_credential(file.as_ref(), args.password.as_deref())?;
        let entry = slot_entry(&mut opts.slots, slot);
        if let Some(cert) = &cred.certificate {
            entry.certificate = Some(cert.to_der().context("certificate to DER")?);
        }
        entry.key = Some(cred.key);
    }
    for spec in &args.certs {
        let (slot, file) = split_pair("cert", spec)?;
        let certs = virtcard_keystore::load_certificates(file.as_ref())?;
        let first = certs
            .first()
            .ok_or_else(|| anyhow!("{file}: no certificate"))?;
        slot_entry(&mut opts.slots, slot).certificate =
            Some(first.to_der().context("certificate to DER")?);
    }
    Ok(opts)
}

pub fn run(args: Args) -> Result<()> {
    let opts = options(&args)?;
    let card = piv::provision(&args.out, &opts)
        .with_context(|| format!("cannot create a PIV card in {}", args.out.display()))?;
    let card = card.card();
    let [a, b, c] = card.version();
    println!(
        "Created a PIV card in {} (serial {}, version {a}.{b}.{c})",
        args.out.display(),
        card.serial()
    );
    for s in &opts.slots {
        let what = match (&s.key, s.generate) {
            (Some(_), _) => "imported key",
            (None, Some(_)) => "generated key",
            (None, None) => "no key",
        };
        let cert = if s.certificate.is_some() {
            ", certificate"
        } else {
            ""
        };
        println!("  slot {:02x}: {what}{cert}", s.slot);
    }
    if args.management_key.is_none() {
        println!("Management key: the YubiKey default (3DES 0102…0708 ×3); change it with yubico-piv-tool -a set-mgm-key");
    }
    println!("Serve it with: virtcard vpcd --card {}", args.out.display());
    Ok(())
}
