//! Shared pieces of the OpenSC, key-store, relay and QEMU end-to-end tests:
//! a SoftHSM token in a temporary directory, `virtcard` child processes with
//! their logs, OpenSC/OpenSSL checks through a private pcscd, and the bridge
//! from the QEMU simulator's guest side into a vpcd slot.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtcard_runtime::{Card, Link};
use virtcard_testkit::Pcscd;
use virtcard_transport::vpcd::{Mode, Timing, VpcdReader};
use virtcard_transport::vscard::sim::{GuestAnswer, QemuSim};

pub const OPENSC: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The card's own PIN (checked by the emulated card).
pub const CARD_PIN: &str = "12345678";
/// The token's user PIN (read by virtcard from a file).
pub const TOKEN_PIN: &str = "987654";

/// SoftHSM 2.6 ignores its `-MECH` deny-list syntax, so "no raw RSA" lists
/// what is allowed.
pub const NO_RAW_RSA: &str = "slots.mechanisms = CKM_RSA_PKCS,CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_SHA_1,CKM_SHA256,CKM_SHA384,CKM_SHA512";

pub fn have(tool: &str) -> bool {
    virtcard_testkit::have(tool)
}

/// Why these tests cannot run here, if they cannot.
pub fn missing(extra_tools: &[&str]) -> Option<String> {
    let mut tools = vec!["pkcs11-tool", "pkcs15-tool", "openssl", "pcscd", "unshare"];
    tools.extend_from_slice(extra_tools);
    virtcard_testkit::missing_prerequisite(
        &tools,
        &[
            (OPENSC, "opensc-pkcs11"),
            (virtcard_testkit::VPCD_DRIVER, "vsmartcard-vpcd"),
        ],
    )
}

/// Runs a command; returns success and stdout+stderr.
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn run_ok(cmd: &mut Command) -> String {
    let (ok, out) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{out}");
    out
}

/// A SoftHSM installation of its own: configuration and token directory.
pub struct SoftHsm {
    pub dir: PathBuf,
    pub conf: PathBuf,
}

impl SoftHsm {
    pub fn new(root: &Path, extra_conf: &str) -> SoftHsm {
        let dir = root.join("softhsm");
        std::fs::create_dir_all(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n{extra_conf}\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        SoftHsm { dir, conf }
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    pub fn init_token(&self, label: &str) {
        run_ok(self.command("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            TOKEN_PIN,
            "--so-pin",
            "11223344",
        ]));
    }

    pub fn delete_token(&self, label: &str) {
        run_ok(
            self.command("softhsm2-util")
                .args(["--delete-token", "--token", label]),
        );
    }

    /// pkcs11-tool on this SoftHSM, logged in to `label`.
    pub fn p11(&self, label: &str, args: &[&str]) -> String {
        run_ok(
            self.command("pkcs11-tool")
                .args(["--module", SOFTHSM, "--token-label", label])
                .args(["--login", "--pin", TOKEN_PIN])
                .args(args),
        )
    }
}

/// An RSA key and self-signed certificate made with openssl in `dir`, and
/// the secret numbers a leak check looks for.
pub struct Credential {
    pub key_der: PathBuf,
    pub cert_der: PathBuf,
    pub secrets: Vec<Vec<u8>>,
}

pub fn make_credential(dir: &Path, name: &str, cn: &str, bits: u32) -> Credential {
    let pem = dir.join(format!("{name}.key.pem"));
    let key_der = dir.join(format!("{name}.key.der"));
    let cert_der = dir.join(format!("{name}.crt.der"));
    let bits_s = format!("rsa:{bits}");
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        &bits_s,
        "-nodes",
        "-days",
        "30",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        pem.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        cert_der.to_str().unwrap(),
    ]));
    run_ok(Command::new("openssl").args([
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        pem.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        key_der.to_str().unwrap(),
    ]));
    let rsa = openssl::rsa::Rsa::private_key_from_pem(&std::fs::read(&pem).unwrap()).unwrap();
    let secrets = [rsa.d(), rsa.p().unwrap(), rsa.q().unwrap()]
        .iter()
        .map(|n| n.to_vec())
        .collect();
    Credential {
        key_der,
        cert_der,
        secrets,
    }
}

/// Puts a key (and its certificate, same CKA_ID) on the token, then deletes
/// the key files: from here on the key exists only inside the token.
pub fn put_on_token(hsm: &SoftHsm, label: &str, c: &Credential, id: &str, name: &str) {
    hsm.p11(
        label,
        &[
            "--write-object",
            c.key_der.to_str().unwrap(),
            "--type",
            "privkey",
            "--id",
            id,
            "--label",
            name,
            "--usage-sign",
            "--usage-decrypt",
        ],
    );
    hsm.p11(
        label,
        &[
            "--write-object",
            c.cert_der.to_str().unwrap(),
            "--type",
            "cert",
            "--id",
            id,
            "--label",
            name,
        ],
    );
    let _ = std::fs::remove_file(&c.key_der);
    let pem = c.key_der.with_extension("pem");
    let _ = std::fs::remove_file(pem);
}

/// A `virtcard` child process whose stderr goes to a log file; killed when
/// dropped.
pub struct Virtcard {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Virtcard {
    pub fn spawn(args: &[&str], envs: &[(&str, &Path)], log: PathBuf) -> Virtcard {
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_virtcard"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("virtcard starts");
        Virtcard {
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running (a start-up error ends it).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Virtcard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The guest's view of QEMU's emulated reader, as a card vpcd can serve.
pub struct Guest {
    sim: Arc<QemuSim>,
    atr: Vec<u8>,
}

impl Guest {
    pub fn boxed(sim: &Arc<QemuSim>) -> Box<dyn Card> {
        let atr = sim
            .with_host(|h| h.atr().map(<[u8]>::to_vec))
            .expect("a card is in QEMU's reader");
        Box::new(Guest {
            sim: sim.clone(),
            atr,
        })
    }
}

impl Card for Guest {
    fn atr(&self) -> &[u8] {
        &self.atr
    }
    fn power_on(&mut self) {}
    fn power_off(&mut self) {}
    fn reset(&mut self) {}
    fn is_powered(&self) -> bool {
        true
    }
    fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>) {
        response.clear();
        match self.sim.guest_transmit(command, Duration::from_secs(10)) {
            Some(GuestAnswer::Data(r)) if r.len() >= 2 => response.extend_from_slice(&r),
            _ => response.extend_from_slice(&[0x6F, 0x00]),
        }
    }
    fn set_link(&mut self, _link: Link) {}
    fn kind(&self) -> &str {
        "qemu-guest"
    }
}

/// Bridges the guest's view of QEMU's reader (a card must be in it) into
/// vpcd slot `slot` of `pcscd`, so that OpenSC there plays the guest's
/// middleware.
pub fn bridge_guest(pcscd: &Pcscd, slot: u16, sim: &Arc<QemuSim>) -> VpcdReader {
    let addr = format!("127.0.0.1:{}", pcscd.port(slot)).parse().unwrap();
    VpcdReader::spawn(
        Mode::Connect(addr),
        Timing::default(),
        Some(Guest::boxed(sim)),
    )
    .unwrap()
}

/// OpenSC tools against one reader of a private pcscd.
pub struct OpenSc<'a> {
    pub pcscd: &'a Pcscd,
    pub work: PathBuf,
    /// vpcd slot of the reader.
    pub reader: u16,
}

impl<'a> OpenSc<'a> {
    pub fn new(pcscd: &'a Pcscd, work: &Path, reader: u16) -> Self {
        std::fs::create_dir_all(work).unwrap();
        OpenSc {
            pcscd,
            work: work.to_path_buf(),
            reader,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    pub fn tool(&self, program: &str, args: &[&str]) -> (bool, String) {
        run(self.pcscd.command(program).args(args))
    }

    /// pkcs11-tool through OpenSC on this reader's slot.
    pub fn p11(&self, args: &[&str]) -> (bool, String) {
        let name = Pcscd::reader_name(self.reader);
        let mut all = vec!["--module", OPENSC, "--slot-description", &name];
        all.extend_from_slice(args);
        self.tool("pkcs11-tool", &all)
    }

    pub fn p11_ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.p11(args);
        assert!(
            ok,
            "pkcs11-tool {args:?} failed:\n{out}\npcscd log tail:\n{}",
            tail(&self.pcscd.log(), 40)
        );
        out
    }

    /// Waits until OpenSC sees a token in this reader.
    pub fn wait_for_token(&self, vc: Option<&Virtcard>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, out) = self.tool("pkcs11-tool", &["--module", OPENSC, "-T"]);
            let name = Pcscd::reader_name(self.reader);
            if out.lines().any(|l| l.contains(&name)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no token appeared:\n{out}\nvirtcard log:\n{}\npcscd log tail:\n{}",
                vc.map(|v| v.log()).unwrap_or_default(),
                tail(&self.pcscd.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn openssl(&self, args: &[&str]) -> String {
        run_ok(Command::new("openssl").args(args))
    }

    /// Reads certificate `id` from the card; returns its DER and public key PEM path.
    pub fn certificate(&self, id: &str) -> (Vec<u8>, PathBuf) {
        let der = self.path(&format!("r{}-cert{id}.der", self.reader));
        let pem = self.path(&format!("r{}-pub{id}.pem", self.reader));
        self.p11_ok(&[
            "--read-object",
            "--type",
            "cert",
            "--id",
            id,
            "-o",
            der.to_str().unwrap(),
        ]);
        self.openssl(&[
            "x509",
            "-inform",
            "DER",
            "-in",
            der.to_str().unwrap(),
            "-pubkey",
            "-noout",
            "-out",
            pem.to_str().unwrap(),
        ]);
        (std::fs::read(&der).unwrap(), pem)
    }

    /// Signs with the card and verifies with openssl; returns the signature.
    pub fn sign_and_verify(&self, id: &str, mechanism: &str, verify_opts: &[&str]) -> Vec<u8> {
        let data = self.path("data.txt");
        std::fs::write(&data, b"virtcard token-backed signature\n").unwrap();
        let sig = self.path(&format!("r{}-sig-{id}-{mechanism}.bin", self.reader));
        self.p11_ok(&[
            "--login",
            "--pin",
            CARD_PIN,
            "--sign",
            "--id",
            id,
            "-m",
            mechanism,
            "-i",
            data.to_str().unwrap(),
            "-o",
            sig.to_str().unwrap(),
        ]);
        let (_, pubkey) = self.certificate(id);
        let mut args = vec!["dgst", "-sha256"];
        args.extend_from_slice(verify_opts);
        args.extend_from_slice(&[
            "-verify",
            pubkey.to_str().unwrap(),
            "-signature",
            sig.to_str().unwrap(),
            data.to_str().unwrap(),
        ]);
        let out = self.openssl(&args);
        assert!(out.contains("Verified OK"), "{mechanism} with {id}: {out}");
        std::fs::read(&sig).unwrap()
    }

    /// Encrypts to the card's certificate with openssl, decrypts on the card.
    pub fn decrypt(&self, id: &str) {
        let msg = self.path("plain.txt");
        std::fs::write(&msg, b"token-held decryption key\n").unwrap();
        let ct = self.path("cipher.bin");
        let pt = self.path("decrypted.txt");
        let (_, pubkey) = self.certificate(id);
        self.openssl(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            pubkey.to_str().unwrap(),
            "-in",
            msg.to_str().unwrap(),
            "-out",
            ct.to_str().unwrap(),
        ]);
        self.p11_ok(&[
            "--login",
            "--pin",
            CARD_PIN,
            "--decrypt",
            "--id",
            id,
            "-m",
            "RSA-PKCS",
            "-i",
            ct.to_str().unwrap(),
            "-o",
            pt.to_str().unwrap(),
        ]);
        assert_eq!(std::fs::read(&pt).unwrap(), b"token-held decryption key\n");
    }

    /// Lists the card's objects (three certificates, one per name in
    /// `names`), then uses the three keys ([`OpenSc::use_keys`]). Returns
    /// the object listing.
    pub fn use_three_keys(&self, names: &[&str]) -> String {
        let objects = self.p11_ok(&["--login", "--pin", CARD_PIN, "-O"]);
        assert_eq!(
            objects.matches("Certificate Object").count(),
            3,
            "{objects}"
        );
        for name in names {
            assert!(objects.contains(name), "{objects}");
        }
        self.use_keys();
        objects
    }

    /// Signs with key 0001 (PKCS#1 v1.5) and 0002 (PSS), verifying with
    /// openssl, and decrypts with 0003 and 0001: the CAC's three keys.
    pub fn use_keys(&self) {
        self.sign_and_verify("0001", "SHA256-RSA-PKCS", &[]);
        self.sign_and_verify(
            "0002",
            "SHA256-RSA-PKCS-PSS",
            &[
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:auto",
            ],
        );
        self.decrypt("0003");
        self.decrypt("0001");
    }
}

/// A CAC card directory with 2048-bit keys, `common_name` in its
/// certificates and PIN [`CARD_PIN`].
pub fn provision_cac(dir: &Path, common_name: &str) {
    virtcard_cards::cac::provision(
        dir,
        &virtcard_cards::cac::ProvisionOptions {
            key_bits: 2048,
            common_name: Some(common_name.into()),
            ..Default::default()
        }
        .with_pin(CARD_PIN.into()),
    )
    .unwrap();
}

/// Checks that none of `secrets` is in the files under `work`, in the
/// log of `virtcard`, or in pcscd's log.
pub fn assert_nothing_leaked(secrets: &[Vec<u8>], work: &Path, virtcard: &Virtcard, pcscd: &Pcscd) {
    let mut files = files_under(work);
    files.push(virtcard.log.clone());
    assert_no_key_material(secrets, &files, &[("pcscd log", pcscd.log())]);
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Fails if any of `secrets` (raw, or as hex in either case) or a PEM private
/// key appears in `haystacks` (files) or `texts`.
pub fn assert_no_key_material(secrets: &[Vec<u8>], files: &[PathBuf], texts: &[(&str, String)]) {
    let mut needles: Vec<Vec<u8>> = Vec::new();
    for s in secrets {
        // 16-byte windows catch partial dumps too.
        let piece = &s[s.len() / 2..s.len() / 2 + 16];
        needles.push(piece.to_vec());
        needles.push(hex::encode(piece).into_bytes());
        needles.push(hex::encode_upper(piece).into_bytes());
        let spaced: String = piece.iter().map(|b| format!("{b:02X} ")).collect();
        needles.push(spaced.trim_end().as_bytes().to_vec());
    }
    needles.push(b"PRIVATE KEY".to_vec());
    let check = |name: &str, hay: &[u8]| {
        for n in &needles {
            assert!(
                !hay.windows(n.len()).any(|w| w == &n[..]),
                "key material found in {name}"
            );
        }
    };
    for f in files {
        check(
            &f.display().to_string(),
            &std::fs::read(f).unwrap_or_default(),
        );
    }
    for (name, t) in texts {
        check(name, t.as_bytes());
    }
}
