#![no_main]
//! dpkg.log (format sniffed by `parse_reader`), everything recorded.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dkms_hook_fuzz::check_log(data, &[]);
});
