//! apt's `DPkg::Pre-Install-Pkgs` info stream, protocol `VERSION 2` and
//! `VERSION 3`: a `VERSION` line, apt's configuration (`key=value`,
//! %-encoded) up to a blank line, then one line per package. Recorded
//! samples: `tests/data/pre-install-pkgs-v3.txt`.

use std::collections::HashMap;
use std::io::BufRead;

use super::{
    read_line_capped, truncate_for_log, AptAction, AptChange, AptHookError, MAX_STREAM_BYTES,
};

/// Parsed `DPkg::Pre-Install-Pkgs` info stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreInstallPkgs {
    /// 2 or 3, from the `VERSION` line.
    pub version: u32,
    /// apt's whole configuration, keys and values %-decoded, in stream order.
    pub config: Vec<(String, String)>,
    /// (package, `.deb` path) of each package to be unpacked (version 3
    /// and 2 name the downloaded file as the line's last field).
    pub debs: Vec<(String, String)>,
    /// One entry per (package, architecture), in order of first appearance.
    pub changes: Vec<AptChange>,
}

impl PreInstallPkgs {
    /// Last value given for `key`. apt's configuration tree is
    /// case-insensitive (`DPkg::` and `Dpkg::` are the same), so is this.
    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.config
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a `VERSION 2` or `VERSION 3` info stream.
///
/// Unparsable package lines are skipped (logged at debug level) rather than
/// failing the whole stream; a stream that ends early yields what was read.
pub fn parse_pre_install_reader<R: BufRead>(mut r: R) -> Result<PreInstallPkgs, AptHookError> {
    let mut buf = Vec::new();
    if !read_line_capped(&mut r, &mut buf)? {
        return Err(AptHookError::Protocol(
            "empty info stream, expected a VERSION line".to_owned(),
        ));
    }
    let first = line_text(&buf);
    let version = parse_version_line(&first).ok_or_else(|| {
        AptHookError::Protocol(format!(
            "info stream does not start with VERSION 2 or VERSION 3: {:?}",
            truncate_for_log(&first)
        ))
    })?;

    let mut out = PreInstallPkgs {
        version,
        config: Vec::new(),
        changes: Vec::new(),
        debs: Vec::new(),
    };

    // Configuration dump, terminated by an empty line.
    loop {
        if !read_line_capped(&mut r, &mut buf)? {
            log::debug!("info stream ended inside the configuration section");
            return Ok(out);
        }
        let line = line_text(&buf);
        if line.is_empty() {
            break;
        }
        match line.split_once('=') {
            // apt %-encodes '=' inside keys, so the first '=' is the separator.
            Some((k, v)) => out.config.push((percent_decode(k), percent_decode(v))),
            None => log::debug!(
                "skipping config line without '=': {:?}",
                truncate_for_log(&line)
            ),
        }
    }

    let mut merger = ChangeMerger::default();
    let mut total = 0usize;
    while read_line_capped(&mut r, &mut buf)? {
        total = total.saturating_add(buf.len());
        if total > MAX_STREAM_BYTES {
            return Err(AptHookError::TooLarge("the info stream"));
        }
        let line = line_text(&buf);
        if line.trim().is_empty() {
            continue;
        }
        match parse_package_line(&line, version) {
            Some(change) => {
                let fields = split_fields(&line, if version >= 3 { 9 } else { 5 });
                if let Some(path) = fields
                    .as_ref()
                    .and_then(|f| f.last())
                    .filter(|p| p.starts_with('/'))
                {
                    out.debs.push((change.package.clone(), (*path).to_string()));
                }
                merger.push(change)
            }
            None => log::debug!(
                "skipping unparsable package line: {:?}",
                truncate_for_log(&line)
            ),
        }
    }
    out.changes = merger.changes;
    Ok(out)
}

/// Line bytes as text without the line terminator; apt may hand us non-UTF-8
/// bytes in config values, which must not abort parsing.
fn line_text(buf: &[u8]) -> String {
    String::from_utf8_lossy(buf)
        .trim_end_matches(['\n', '\r'])
        .to_owned()
}

fn parse_version_line(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    if words.next()? != "VERSION" {
        return None;
    }
    let version: u32 = words.next()?.parse().ok()?;
    if words.next().is_some() || !(2..=3).contains(&version) {
        return None;
    }
    Some(version)
}

/// Undo apt's `QuoteString`: `%XX` becomes the byte 0xXX; anything that is
/// not a complete hex escape is kept literally.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|&c| hex_value(c));
            let lo = bytes.get(i + 2).and_then(|&c| hex_value(c));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Split into `n` whitespace-separated fields, the last one taking the rest
/// of the line (a local .deb path could contain spaces).
fn split_fields(line: &str, n: usize) -> Option<Vec<&str>> {
    let mut fields = Vec::with_capacity(n);
    let mut rest = line.trim();
    while fields.len() + 1 < n {
        let (field, tail) = rest.split_once(char::is_whitespace)?;
        fields.push(field);
        rest = tail.trim_start();
    }
    if rest.is_empty() {
        return None;
    }
    fields.push(rest);
    Some(fields)
}

/// What a package line asks dpkg to do; only removal changes the meaning of
/// the version columns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LineOp {
    Unpack,
    Configure,
    Remove,
}

fn parse_package_line(line: &str, version: u32) -> Option<AptChange> {
    // v3: PKG OLDVER OLDARCH OLDMA CMP NEWVER NEWARCH NEWMA ACTION
    // v2: PKG OLDVER CMP NEWVER ACTION
    let (name_tok, old_ver, old_arch, cmp, new_ver, new_arch, action) = if version >= 3 {
        match split_fields(line, 9)?.as_slice() {
            [n, ov, oa, _oma, c, nv, na, _nma, a] => (*n, *ov, *oa, *c, *nv, *na, *a),
            _ => return None,
        }
    } else {
        match split_fields(line, 5)?.as_slice() {
            [n, ov, c, nv, a] => (*n, *ov, "-", *c, *nv, "-", *a),
            _ => return None,
        }
    };

    if !matches!(cmp, "<" | ">" | "=") {
        return None;
    }
    let op = match action {
        "**REMOVE**" => LineOp::Remove,
        "**CONFIGURE**" => LineOp::Configure,
        // apt writes **ERROR** for an unpack whose file name is not absolute.
        a if a.starts_with('/') || a == "**ERROR**" => LineOp::Unpack,
        _ => return None,
    };

    // apt writes the bare name, but accept an arch-qualified one too.
    let (package, token_arch) = match name_tok.split_once(':') {
        Some((n, a)) if !a.is_empty() => (n, Some(a)),
        Some((n, _)) => (n, None),
        None => (name_tok, None),
    };
    if package.is_empty() {
        return None;
    }

    let old = dash_to_none(old_ver);
    let new = dash_to_none(new_ver);
    let column_arch = if new.is_some() && new_arch != "-" {
        Some(new_arch)
    } else if old_arch != "-" {
        Some(old_arch)
    } else {
        None
    };
    let architecture = column_arch.or(token_arch).map(str::to_owned);

    let (action, new) = if op == LineOp::Remove {
        // Purge is announced as **REMOVE** too; the stream cannot tell them apart.
        (AptAction::Remove, None)
    } else if op == LineOp::Configure {
        (AptAction::Configure, Some(new?))
    } else {
        let new = new?;
        let action = match (&old, cmp) {
            (None, _) => AptAction::Install,
            (Some(_), "<") => AptAction::Upgrade,
            (Some(_), ">") => AptAction::Downgrade,
            _ => AptAction::Reinstall,
        };
        (action, Some(new))
    };

    Some(AptChange {
        package: package.to_owned(),
        architecture,
        old,
        new,
        action,
    })
}

fn dash_to_none(s: &str) -> Option<String> {
    (s != "-").then(|| s.to_owned())
}

/// Collapses the unpack + configure lines of one package into one change.
#[derive(Default)]
struct ChangeMerger {
    changes: Vec<AptChange>,
    index: HashMap<(String, Option<String>), usize>,
}

impl ChangeMerger {
    fn push(&mut self, change: AptChange) {
        let key = (change.package.clone(), change.architecture.clone());
        match self.index.get(&key).and_then(|&i| self.changes.get_mut(i)) {
            Some(slot) => {
                // If a package is both removed and installed in one run, the
                // install is what ends up on disk, so it wins.
                // The configure line that follows an unpack says nothing new.
                let is_removal = |c: &AptChange| c.action == AptAction::Remove;
                let configure_only = change.action == AptAction::Configure;
                if !configure_only && (!is_removal(&change) || is_removal(slot)) {
                    *slot = change;
                }
            }
            None => {
                self.index.insert(key, self.changes.len());
                self.changes.push(change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apt::tests::{change, hello_install};
    use std::io::{self, BufReader, Cursor, Read};

    const V3_SAMPLE: &str = include_str!("../../tests/data/pre-install-pkgs-v3.txt");

    fn parse(text: &str) -> PreInstallPkgs {
        parse_pre_install_reader(Cursor::new(text.as_bytes().to_vec())).expect("parse ok")
    }

    const HEADER_V3: &str = "VERSION 3\nAPT::Architecture=amd64\n\n";

    // ----- Part 1 -----

    #[test]
    fn v3_recorded_sample() {
        let p = parse(V3_SAMPLE);
        assert_eq!(p.version, 3);
        assert_eq!(
            p.changes,
            vec![
                change(
                    "less",
                    Some("amd64"),
                    Some("590-2.1~deb12u2"),
                    None,
                    AptAction::Remove
                ),
                change(
                    "distro-info-data",
                    Some("all"),
                    Some("0.58+deb12u6"),
                    Some("0.58+deb12u7"),
                    AptAction::Upgrade
                ),
                hello_install(),
            ]
        );
        let cmdline = p.config_value("CommandLine::AsString").expect("cmdline");
        assert!(cmdline.contains("apt-get -c"), "{cmdline}");
        assert!(cmdline.ends_with("install hello distro-info-data less-"));
        assert_eq!(p.config_value("APT::Architecture"), Some("amd64"));
        // apt's config tree is case-insensitive.
        assert_eq!(p.config_value("apt::architecture"), Some("amd64"));
        // Last value wins for list keys.
        assert_eq!(
            p.config_value("DPkg::Pre-Install-Pkgs::"),
            Some("/usr/local/lib/hooktest/v3.sh v3")
        );
        assert_eq!(p.config_value("No::Such::Key"), None);
    }

    #[test]
    fn v3_sample_through_bufreader_with_tiny_buffer() {
        let r = BufReader::with_capacity(3, V3_SAMPLE.as_bytes());
        let p = parse_pre_install_reader(r).expect("parse ok");
        assert_eq!(p.changes.len(), 3);
    }

    #[test]
    fn percent_encoded_config_values() {
        let text = "VERSION 3\n\
                    A=one%20two\n\
                    B=bad%zzescape\n\
                    C=short%4\n\
                    D=%\n\
                    E=%2541%41%4a%4A\n\
                    Key%3dWith%3dEquals=v=w\n\
                    NoEquals\n\
                    \n";
        let p = parse(text);
        assert_eq!(p.config_value("A"), Some("one two"));
        assert_eq!(p.config_value("B"), Some("bad%zzescape"));
        assert_eq!(p.config_value("C"), Some("short%4"));
        assert_eq!(p.config_value("D"), Some("%"));
        assert_eq!(p.config_value("E"), Some("%41AJJ"));
        assert_eq!(p.config_value("Key=With=Equals"), Some("v=w"));
        assert_eq!(p.config.len(), 6);
        assert!(p.changes.is_empty());
    }

    #[test]
    fn percent_decode_invalid_utf8_is_lossy() {
        assert_eq!(percent_decode("a%ffb"), "a\u{fffd}b");
        assert_eq!(percent_decode("%%41"), "%A");
        assert_eq!(percent_decode(""), "");
    }

    #[test]
    fn removal_downgrade_reinstall() {
        let text = format!(
            "{HEADER_V3}\
             linux-headers-6.1.0-1-amd64 6.1.176-1 amd64 none > - - none **REMOVE**\n\
             foo 2.0-1 amd64 none > 1.0-1 amd64 none /var/cache/apt/archives/foo_1.0-1_amd64.deb\n\
             bar 3.0 amd64 none = 3.0 amd64 none /var/cache/apt/archives/bar_3.0_amd64.deb\n\
             foo 2.0-1 amd64 none > 1.0-1 amd64 none **CONFIGURE**\n\
             bar 3.0 amd64 none = 3.0 amd64 none **CONFIGURE**\n"
        );
        let p = parse(&text);
        assert_eq!(
            p.changes,
            vec![
                change(
                    "linux-headers-6.1.0-1-amd64",
                    Some("amd64"),
                    Some("6.1.176-1"),
                    None,
                    AptAction::Remove
                ),
                change(
                    "foo",
                    Some("amd64"),
                    Some("2.0-1"),
                    Some("1.0-1"),
                    AptAction::Downgrade
                ),
                change(
                    "bar",
                    Some("amd64"),
                    Some("3.0"),
                    Some("3.0"),
                    AptAction::Reinstall
                ),
            ]
        );
    }

    #[test]
    fn remove_then_install_keeps_install() {
        let text = format!(
            "{HEADER_V3}\
             foo 1.0 amd64 none > - - none **REMOVE**\n\
             foo 1.0 amd64 none < 2.0 amd64 none /tmp/foo_2.0_amd64.deb\n\
             foo 1.0 amd64 none < 2.0 amd64 none **CONFIGURE**\n"
        );
        let p = parse(&text);
        assert_eq!(
            p.changes,
            vec![change(
                "foo",
                Some("amd64"),
                Some("1.0"),
                Some("2.0"),
                AptAction::Upgrade
            )]
        );
    }

    #[test]
    fn multi_arch_lines() {
        // apt writes the bare name and puts the architecture in the columns;
        // an arch-qualified name is accepted as well.
        let text = format!(
            "{HEADER_V3}\
             libc6 2.36-9 amd64 same < 2.36-9+deb12u1 amd64 same /var/cache/apt/archives/libc6_2.36-9+deb12u1_amd64.deb\n\
             libc6 2.36-9 i386 same < 2.36-9+deb12u1 i386 same /var/cache/apt/archives/libc6_2.36-9+deb12u1_i386.deb\n\
             libc6 2.36-9 amd64 same < 2.36-9+deb12u1 amd64 same **CONFIGURE**\n\
             libc6 2.36-9 i386 same < 2.36-9+deb12u1 i386 same **CONFIGURE**\n\
             zlib1g:i386 - - none < 1:1.2.13 i386 same /var/cache/apt/archives/zlib1g_1%3a1.2.13_i386.deb\n\
             libfoo:armhf 1.0 - none > - - none **REMOVE**\n"
        );
        let p = parse(&text);
        let new = Some("2.36-9+deb12u1");
        assert_eq!(
            p.changes,
            vec![
                change(
                    "libc6",
                    Some("amd64"),
                    Some("2.36-9"),
                    new,
                    AptAction::Upgrade
                ),
                change(
                    "libc6",
                    Some("i386"),
                    Some("2.36-9"),
                    new,
                    AptAction::Upgrade
                ),
                change(
                    "zlib1g",
                    Some("i386"),
                    None,
                    Some("1:1.2.13"),
                    AptAction::Install
                ),
                change(
                    "libfoo",
                    Some("armhf"),
                    Some("1.0"),
                    None,
                    AptAction::Remove
                ),
            ]
        );
    }

    #[test]
    fn v2_lines_from_recorded_sample() {
        let text = "VERSION 2\n\
                    APT::Architecture=amd64\n\
                    \n\
                    less 590-2.1~deb12u2 > - **REMOVE**\n\
                    distro-info-data 0.58+deb12u6 < 0.58+deb12u7 /var/cache/apt/archives/distro-info-data_0.58+deb12u7_all.deb\n\
                    hello - < 2.10-3 /var/cache/apt/archives/hello_2.10-3_amd64.deb\n\
                    distro-info-data 0.58+deb12u6 < 0.58+deb12u7 **CONFIGURE**\n\
                    hello - < 2.10-3 **CONFIGURE**\n\
                    old 2 > 1 **CONFIGURE**\n\
                    same 1 = 1 **CONFIGURE**\n";
        let p = parse(text);
        assert_eq!(p.version, 2);
        assert_eq!(
            p.changes,
            vec![
                change(
                    "less",
                    None,
                    Some("590-2.1~deb12u2"),
                    None,
                    AptAction::Remove
                ),
                change(
                    "distro-info-data",
                    None,
                    Some("0.58+deb12u6"),
                    Some("0.58+deb12u7"),
                    AptAction::Upgrade
                ),
                change("hello", None, None, Some("2.10-3"), AptAction::Install),
                change("old", None, Some("2"), Some("1"), AptAction::Configure),
                change("same", None, Some("1"), Some("1"), AptAction::Configure),
            ]
        );
    }

    #[test]
    fn crlf_and_no_trailing_newline() {
        let text = "VERSION 3\r\nA=b%20c\r\n\r\n\
                    hello - - none < 2.10-3 amd64 none /var/cache/apt/archives/hello_2.10-3_amd64.deb\r\n\
                    hello - - none < 2.10-3 amd64 none **CONFIGURE**";
        let p = parse(text);
        assert_eq!(p.config_value("A"), Some("b c"));
        assert_eq!(p.changes, vec![hello_install()]);
    }

    #[test]
    fn truncated_streams() {
        // Cut mid package line: the partial line is dropped.
        let cut = V3_SAMPLE
            .find("hello - - none < 2.10-3 amd64")
            .map(|i| &V3_SAMPLE[..i + "hello - - none < 2.10".len()])
            .expect("sample has hello line");
        let p = parse(cut);
        assert_eq!(p.changes.len(), 2);
        assert!(p.changes.iter().all(|c| c.package != "hello"));

        // Cut inside the config section: no changes, config so far kept.
        let p = parse("VERSION 3\nA=1\nB=");
        assert_eq!(p.config_value("B"), Some(""));
        assert!(p.changes.is_empty());

        // Only the VERSION line.
        let p = parse("VERSION 3");
        assert!(p.config.is_empty() && p.changes.is_empty());
    }

    #[test]
    fn garbage_package_lines_are_skipped() {
        let text = format!(
            "{HEADER_V3}\
             \n\
             garbage\n\
             foo 1 amd64 none ? 2 amd64 none **CONFIGURE**\n\
             foo 1 amd64 none < 2 amd64 none **WHAT**\n\
             foo 1 amd64 none < - - none **CONFIGURE**\n\
             :amd64 - - none < 2 amd64 none **CONFIGURE**\n\
             \u{1F600} - - none < 1 amd64 none **CONFIGURE**\n\
             ok - - none < 1 amd64 none /path with space/ok_1_amd64.deb\n"
        );
        let p = parse(&text);
        assert_eq!(
            p.changes,
            vec![
                change(
                    "\u{1F600}",
                    Some("amd64"),
                    None,
                    Some("1"),
                    AptAction::Configure
                ),
                change("ok", Some("amd64"), None, Some("1"), AptAction::Install),
            ]
        );
    }

    #[test]
    fn non_version_input_is_error() {
        for bad in [
            "",
            "\n",
            "hello\n",
            "VERSION\n",
            "VERSION 1\n",
            "VERSION 4\n",
            "VERSION 3 extra\n",
            "/var/cache/apt/archives/hello_2.10-3_amd64.deb\n",
        ] {
            match parse_pre_install_reader(Cursor::new(bad.as_bytes().to_vec())) {
                Err(AptHookError::Protocol(msg)) => assert!(!msg.is_empty()),
                other => panic!("{bad:?}: expected protocol error, got {other:?}"),
            }
        }
        let bin: &[u8] = &[0xff, 0xfe, 0x00, b'\n'];
        assert!(parse_pre_install_reader(bin).is_err());
    }

    #[test]
    fn read_error_is_io_error() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        let r = BufReader::new(Failing);
        assert!(matches!(
            parse_pre_install_reader(r),
            Err(AptHookError::Io(_))
        ));
    }
}
