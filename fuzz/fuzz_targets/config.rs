#![no_main]
//! /etc/dkms/dkms-hook.conf.
use dkms_hook::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The program reads the file with read_to_string: non-UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Config::parse(text, Path::new("/etc/dkms/dkms-hook.conf")) {
        let _ = c.triggers(dkms_hook::kernel::Role::Kbuild);
        let _ = format!("{c:?}");
    }
});
