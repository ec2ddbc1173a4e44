#![no_main]
//! dpkg `.list` files: `FileList::touches`, checked against a naive
//! line-by-line reference. Input: first line is the directory, the rest the list.
use dkms_hook::dpkg::FileList;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fn naive(data: &[u8], dir: &[u8]) -> bool {
    data.split(|&b| b == b'\n').any(|l| {
        l == dir || (l.starts_with(dir) && l.get(dir.len()) == Some(&b'/'))
    })
}

fuzz_target!(|input: &[u8]| {
    let (dir, data) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (&b"/usr/lib/linux-kbuild-6.1"[..], input),
    };
    let list = FileList {
        path: PathBuf::from("/var/lib/dpkg/info/fuzz.list"),
        data: data.to_vec(),
        modified: None,
    };
    // Callers pass in-root absolute paths without a trailing slash.
    let mut dirs: Vec<&[u8]> = vec![b"/usr/lib/linux-kbuild-6.1", b"/usr/src/linux-headers-6.1.0-50-amd64", b"/usr"];
    if dir.len() > 1 && dir[0] == b'/' && !dir.ends_with(b"/") {
        dirs.push(dir);
    }
    for d in dirs {
        assert_eq!(
            list.touches(d),
            naive(data, d),
            "touches({:?}) disagrees with the line-by-line reading",
            String::from_utf8_lossy(d)
        );
    }
});
