//! A SoftHSM token in a temporary directory, shared by one test process
//! (a PKCS#11 module is initialised once per process, with the configuration
//! it finds then).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use virtcard_keystore::pkcs11::SOFTHSM_MODULE;

pub const PIN: &str = "246810";
pub const LABEL: &str = "virtcard-test";

pub struct Hsm {
    /// Kept for debugging a failed run: the token files live here.
    #[allow(dead_code)]
    pub dir: PathBuf,
}

/// Why the test cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    if !Path::new(SOFTHSM_MODULE).exists() {
        return Some(format!("{SOFTHSM_MODULE} is missing (softhsm2)"));
    }
    let ok = Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    (!ok).then(|| "softhsm2-util is not installed".into())
}

/// The process's SoftHSM: a fresh token directory and configuration;
/// `extra` goes into softhsm2.conf (e.g. `slots.mechanisms = -CKM_RSA_X_509`).
pub fn hsm(extra: &str) -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::create_dir_all(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n{extra}\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", LABEL, "--pin", PIN])
            .args(["--so-pin", "12345678"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Hsm { dir }
    })
}
