#![no_main]
//! apt history.log (seeded with history logs; same sniffing entry point),
//! once unfiltered and once through `ChangeSet::only` as `replay` does.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dkms_hook_fuzz::check_log(data, &[]);
    dkms_hook_fuzz::check_log(data, &["linux-kbuild-6.1", "dkms", "acpi-call-dkms"]);
});
