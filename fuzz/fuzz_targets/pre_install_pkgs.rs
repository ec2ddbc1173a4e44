#![no_main]
//! DPkg::Pre-Install-Pkgs info stream (VERSION 2/3) on stdin.
use dkms_hook::apt::parse_pre_install_reader;
use dkms_hook_fuzz::{small_bufread, whole};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let a = parse_pre_install_reader(whole(data));
    let b = parse_pre_install_reader(small_bufread(data));
    match (&a, &b) {
        (Ok(x), Ok(y)) => {
            assert_eq!(x, y, "chunking changed the parsed stream");
            let _ = x.config_value("Dir::Etc");
            let _ = x.config_value("DPkg::Tools::Options::/usr/sbin/dkms-hook::Version");
        }
        (Err(_), Err(_)) => {}
        _ => panic!("chunking changed the result: {a:?} vs {b:?}"),
    }
});
