#![no_main]
//! /var/lib/dpkg/status.
use dkms_hook::dpkg::{by_name, parse_status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let all = parse_status(data, |_| true);
    for p in &all {
        let _ = p.has_files();
    }
    let _ = by_name(all);
    let _ = parse_status(data, |n| n.starts_with("linux-"));
});
