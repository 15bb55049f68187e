//! The daemon's TOML configuration: any text must load or give an error
//! that names a line and column inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use virtcard_daemon::{Config, ConfigError, Locations};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let defaults = Locations {
        config: PathBuf::from("/etc/virtcard/virtcard.toml"),
        state_dir: PathBuf::from("/var/lib/virtcard"),
        control_socket: PathBuf::from("/run/virtcard/control"),
    };
    match Config::parse(text, Path::new("/etc/virtcard/virtcard.toml"), &defaults) {
        Ok(config) => {
            for reader in &config.readers {
                assert!(!reader.name.is_empty(), "a reader without a name");
            }
        }
        Err(ConfigError::Invalid { line, column, .. }) => {
            assert!(line >= 1 && column >= 1);
            assert!(
                line <= text.lines().count().max(1) + 1,
                "line {line} past the text"
            );
        }
        Err(e) => panic!("parsing text gave a read error: {e}"),
    }
});
