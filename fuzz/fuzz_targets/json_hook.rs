#![no_main]
//! apt JSON hook protocol: `serve_json_hook` over the bytes as the socket
//! (whole reads and tiny reads must give the same session), plus
//! `parse_message` on the text.
use dkms_hook::apt::{parse_message, serve_json_hook};
use dkms_hook_fuzz::{Chunked, Duplex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut big = Duplex { input: Chunked::new(data, usize::MAX), output: Vec::new() };
    let a = serve_json_hook(&mut big);
    let mut small = Duplex { input: Chunked::new(data, 1 + data.len() % 7), output: Vec::new() };
    let b = serve_json_hook(&mut small);
    match (&a, &b) {
        (Ok(x), Ok(y)) => {
            assert_eq!(x, y, "read chunking changed the session");
            assert_eq!(big.output, small.output, "read chunking changed the replies");
            let _ = x.should_warn();
        }
        (Err(_), Err(_)) => {}
        _ => panic!("read chunking changed the result: {a:?} vs {b:?}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.split('\n') {
            let _ = parse_message(line);
        }
    }
});
