#![no_main]
//! Installed module files (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`): the
//! bounded decoders of `verify::module_file`. The first byte picks the
//! format; the rest is the file. Under small limits (64 KiB out, 1 MiB of
//! decoder memory) every input ends in facts or a refusal, never a panic or
//! more than the cap; and the read buffer's size does not change the answer.
use dkms_hook::verify::module_file::{read_module, MAX_VERMAGIC};
use dkms_hook::verify::{Compression, Limits, Refusal};
use dkms_hook_fuzz::{small_bufread, whole};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { output: 64 << 10, memory: 1 << 20 };

fuzz_target!(|input: &[u8]| {
    let Some((&sel, data)) = input.split_first() else { return };
    let kind = [Compression::None, Compression::Xz, Compression::Zstd, Compression::Gzip]
        [usize::from(sel % 4)];
    let a = read_module(whole(data), kind, LIMITS);
    let b = read_module(small_bufread(data), kind, LIMITS);
    if let Ok(facts) = &a {
        assert!(facts.vermagic.as_ref().is_none_or(|v| v.len() <= MAX_VERMAGIC));
        assert!(!facts.signed || facts.vermagic.is_some());
    }
    if kind == Compression::None {
        // Plain bytes: refused exactly when over the cap.
        assert_eq!(data.len() as u64 > LIMITS.output, matches!(a, Err(Refusal::TooLarge { .. })));
    }
    match (&a, &b) {
        (Ok(x), Ok(y)) => assert_eq!(x, y, "chunking changed the facts"),
        // A stream both corrupt and over the cap stops at whichever the
        // decoder meets first, which depends on how much it was given.
        (Err(Refusal::TooLarge { .. }), Err(_)) | (Err(_), Err(Refusal::TooLarge { .. })) => {}
        (Err(x), Err(y)) => assert_eq!(
            std::mem::discriminant(x),
            std::mem::discriminant(y),
            "chunking changed the refusal: {x} vs {y}"
        ),
        _ => panic!("chunking changed the outcome: {a:?} vs {b:?}"),
    }
});
