//! The static reading, for `--root` where nothing of the inspected tree is
//! run: a file of plain assignments is decided with the checks of
//! [`super::shell::DRIVER`]; anything else is undecided.

use std::collections::{BTreeMap, HashMap};

use super::{DkmsVersion, Verdict};
use crate::kernel::KernelRelease;

/// The values a file of plain assignments gives, or the line that makes it
/// a script. Keys are `NAME` → index → value (`NAME=x` is index 0, as in
/// bash).
type Vars = BTreeMap<String, BTreeMap<usize, String>>;

fn read_plain(dkms: DkmsVersion, files: &[(String, Vec<u8>)]) -> Result<Vars, String> {
    let mut vars = Vars::new();
    for (path, bytes) in files {
        let text = String::from_utf8_lossy(bytes);
        for (n, line) in text.split('\n').enumerate() {
            let script = || format!("{path}:{}: a shell statement", n + 1);
            // A CR before the newline is part of the last word for bash;
            // dkms 3.1.5+ strips it from each value, older dkms keeps it.
            let (line, cr) = match line.strip_suffix('\r') {
                Some(l) => (l, true),
                None => (line, false),
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.contains('\r') {
                return Err(script());
            }
            let (lhs, rhs) = line.split_once('=').ok_or_else(script)?;
            let (name, index) = match lhs.split_once('[') {
                Some((n, i)) => (
                    n,
                    i.strip_suffix(']')
                        .and_then(|i| i.parse().ok())
                        .ok_or_else(script)?,
                ),
                None => (lhs, 0),
            };
            let valid_name = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let mut value = plain_word(rhs).ok_or_else(script)?;
            if cr && !dkms.at_least(3, 1, 5) && !rhs.contains('#') {
                value.push('\r');
            }
            if !valid_name {
                return Err(script());
            }
            vars.entry(name.to_string())
                .or_default()
                .insert(index, value);
        }
    }
    Ok(vars)
}

/// One shell word without anything bash would run: `"…"`, `'…'` or bare.
/// Expansions (`$x`) are kept as text; a value that matters and holds one
/// is undecided later. A trailing comment is allowed after whitespace.
fn plain_word(s: &str) -> Option<String> {
    let (word, rest) = if let Some(r) = s.strip_prefix('"') {
        // Inside double quotes a backslash only escapes $ ` " \ (bash);
        // before anything else it stays.
        let mut w = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '`') => return None,
                (_, '\\') => match chars.next()? {
                    (_, c @ ('$' | '`' | '"' | '\\')) => w.push(c),
                    (_, c) => {
                        w.push('\\');
                        w.push(c);
                    }
                },
                (_, c) => w.push(c),
            }
        };
        if w.contains("$(") {
            return None;
        }
        return finish(w, &r[end + 1..]);
    } else if let Some(r) = s.strip_prefix('\'') {
        let end = r.find('\'')?;
        (&r[..end], &r[end + 1..])
    } else {
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        let w = &s[..end];
        if w.contains(|c: char| "`\\;&|<>()\"'*?[]{}~".contains(c)) || w.contains("$(") {
            return None;
        }
        (w, &s[end..])
    };
    finish(word.to_string(), rest)
}

/// The word, when nothing but a comment follows it.
fn finish(word: String, rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    (rest.is_empty() || rest.starts_with('#')).then_some(word)
}

/// dkms's `VER`: every number padded to three digits, separators dropped,
/// so that the result compares as a string.
fn ver(s: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    let flush = |d: &mut String, out: &mut String| {
        if !d.is_empty() {
            if d.len() < 3 {
                out.push_str(&"0".repeat(3 - d.len()));
            }
            out.push_str(d);
            d.clear();
        }
    };
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out.retain(|c| c != ' ');
    out
}

/// The checks of [`DRIVER`] on a file of plain assignments, for `--root`
/// where nothing may be executed. Undecided when the file is a script or a
/// value needs bash (an expansion, a pattern Rust's regex may read
/// differently from POSIX ERE).
pub fn decide_static(
    dkms: DkmsVersion,
    files: &[(String, Vec<u8>)],
    kernel: &KernelRelease,
    arch: &str,
    config: Option<&KernelConfigFile>,
) -> Verdict {
    match decide_plain(dkms, files, kernel.as_str(), arch, config) {
        Ok(true) => Verdict::Excluded,
        Ok(false) => Verdict::Builds,
        Err(why) => Verdict::Undecided(why),
    }
}

/// A kernel's config as `BUILD_EXCLUSIVE_CONFIG` asks it (dkms's
/// `config_excludes`, `grep -q "^NAME=[ym]"`): each name is looked up once
/// however many modules ask (a real config is a few hundred kB).
pub struct KernelConfigFile {
    bytes: Vec<u8>,
    asked: std::cell::RefCell<HashMap<String, bool>>,
}

impl KernelConfigFile {
    pub fn new(bytes: Vec<u8>) -> KernelConfigFile {
        KernelConfigFile {
            bytes,
            asked: Default::default(),
        }
    }

    /// Whether a line `NAME=y…` or `NAME=m…` is in it.
    pub fn sets(&self, name: &str) -> bool {
        if let Some(&set) = self.asked.borrow().get(name) {
            return set;
        }
        let key = format!("{name}=");
        let text = &self.bytes[..];
        let set = memchr::memmem::find_iter(text, key.as_bytes()).any(|at| {
            (at == 0 || text.get(at - 1) == Some(&b'\n'))
                && matches!(text.get(at + key.len()), Some(b'y' | b'm'))
        });
        self.asked.borrow_mut().insert(name.to_string(), set);
        set
    }
}

fn decide_plain(
    dkms: DkmsVersion,
    files: &[(String, Vec<u8>)],
    k: &str,
    arch: &str,
    config: Option<&KernelConfigFile>,
) -> Result<bool, String> {
    let vars = read_plain(dkms, files)?;
    let get = |name: &str, i: usize| -> Result<Option<&str>, String> {
        match vars.get(name).and_then(|m| m.get(&i)) {
            Some(v) if v.is_empty() => Ok(None),
            Some(v) if v.contains('$') => Err(format!("{name} needs bash: {v:?}")),
            Some(v) => Ok(Some(v.as_str())),
            None => Ok(None),
        }
    };
    let matches = |re: &str, s: &str| -> Result<bool, String> {
        // Patterns both POSIX ERE and Rust's regex read alike.
        let portable = !re.contains('\\') || {
            let mut cs = re.chars();
            let mut ok = true;
            while let Some(c) = cs.next() {
                if c == '\\' && cs.next().is_none_or(|n| n.is_ascii_alphanumeric()) {
                    ok = false;
                }
            }
            ok
        };
        if !portable || re.contains("(?") || re.contains("[[=") || re.contains("[[.") {
            return Err(format!("pattern {re:?} needs bash"));
        }
        regex::Regex::new(re)
            .map(|r| r.is_match(s))
            .map_err(|_| format!("pattern {re:?} needs bash"))
    };
    let config_excludes = |list: &str| -> Result<bool, String> {
        let Some(text) = config else {
            return Ok(false); // `-e "${kernel_config}"` failed: no check
        };
        for kconf in list.split_whitespace() {
            let (want, name) = match kconf.strip_prefix('!') {
                Some(n) => (false, n),
                None => (true, kconf),
            };
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("BUILD_EXCLUSIVE_CONFIG entry {kconf:?} needs bash"));
            }
            let set = text.sets(name);
            if set != want {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let too_old = |min: &str| ver(k) < ver(min);
    let too_new = |max: &str| ver(k) > ver(max);
    let obsolete_by = get("OBSOLETE_BY", 0)?;
    if !dkms.at_least(3, 3, 0) {
        let mut exclude = get("build_exclude", 0)?.is_some();
        let mut max = get("BUILD_EXCLUSIVE_KERNEL_MAX", 0)?;
        if dkms.at_least(3, 1, 8) && max.is_none() {
            max = obsolete_by;
        }
        if let Some(re) = get("BUILD_EXCLUSIVE_KERNEL", 0)? {
            exclude |= !matches(re, k)?;
        }
        if dkms.at_least(3, 0, 11) {
            exclude |= get("BUILD_EXCLUSIVE_KERNEL_MIN", 0)?.is_some_and(too_old);
            exclude |= max.is_some_and(too_new);
        }
        if let Some(re) = get("BUILD_EXCLUSIVE_ARCH", 0)? {
            exclude |= !matches(re, arch)?;
        }
        if let Some(list) = get("BUILD_EXCLUSIVE_CONFIG", 0)? {
            exclude |= config_excludes(list)?;
        }
        return Ok(exclude);
    }
    let num_modules = [
        "BUILT_MODULE_NAME",
        "BUILT_MODULE_LOCATION",
        "DEST_MODULE_NAME",
        "DEST_MODULE_LOCATION",
    ]
    .iter()
    .filter_map(|n| vars.get(*n)?.keys().max().map(|i| i + 1))
    .max()
    .unwrap_or(0);
    let mut global_max = get("BUILD_EXCLUSIVE_KERNEL_MAX", 0)?;
    if obsolete_by.is_some() && global_max.is_none() {
        let mut per_module = false;
        for i in 0..num_modules {
            per_module |= get("BUILD_EXCLUSIVE_KERNEL_MAX", i)?.is_some();
        }
        if !per_module {
            global_max = obsolete_by;
        }
    }
    let keys = [
        "BUILD_EXCLUSIVE_KERNEL",
        "BUILD_EXCLUSIVE_KERNEL_MIN",
        "BUILD_EXCLUSIVE_KERNEL_MAX",
        "BUILD_EXCLUSIVE_ARCH",
        "BUILD_EXCLUSIVE_CONFIG",
    ];
    // `$X` is element 0, so the "global" values are element 0, with
    // `OBSOLETE_BY` standing in for an unset `_KERNEL_MAX`.
    let global = |key: &str| -> Result<Option<&str>, String> {
        if key == "BUILD_EXCLUSIVE_KERNEL_MAX" {
            Ok(global_max)
        } else {
            get(key, 0)
        }
    };
    let mut directives = false;
    let mut buildable = 0;
    for i in 0..num_modules {
        let mut any_global = false;
        for key in keys {
            any_global |= global(key)?.is_some();
        }
        if any_global {
            directives = true;
        } else {
            for key in keys {
                directives |= get(key, i)?.is_some();
            }
        }
        let excluded = |g: bool| -> Result<bool, String> {
            let val = |key: &str| if g { global(key) } else { get(key, i) };
            Ok(val("BUILD_EXCLUSIVE_KERNEL")?
                .map(|re| matches(re, k).map(|m| !m))
                .transpose()?
                .unwrap_or(false)
                || val("BUILD_EXCLUSIVE_KERNEL_MIN")?.is_some_and(too_old)
                || val("BUILD_EXCLUSIVE_KERNEL_MAX")?.is_some_and(too_new)
                || val("BUILD_EXCLUSIVE_ARCH")?
                    .map(|re| matches(re, arch).map(|m| !m))
                    .transpose()?
                    .unwrap_or(false))
        };
        let config_out = |list: Option<&str>| list.map_or(Ok(false), config_excludes);
        let out = excluded(true)?
            || excluded(false)?
            || config_out(global("BUILD_EXCLUSIVE_CONFIG")?)?
            || config_out(get("BUILD_EXCLUSIVE_CONFIG", i)?)?;
        if !out {
            buildable += 1;
        }
    }
    Ok(buildable == 0 && directives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_config_is_asked_as_grep_asks_it() {
        let c = KernelConfigFile::new(
            b"CONFIG_A=y\n# CONFIG_B is not set\nXCONFIG_C=y\n CONFIG_H=y\nCONFIG_D=m\nCONFIG_E=n\nCONFIG_F=\"y\"\nCONFIG_AB=y\nCONFIG_G=y"
                .to_vec(),
        );
        for (name, set) in [
            ("CONFIG_A", true),
            ("CONFIG_B", false),
            ("CONFIG_C", false),
            ("CONFIG_H", false),
            ("CONFIG_D", true),
            ("CONFIG_E", false),
            ("CONFIG_F", false),
            ("CONFIG_G", true),
            ("CONFIG_X", false),
        ] {
            assert_eq!(c.sets(name), set, "{name}");
            assert_eq!(c.sets(name), set, "{name}, asked again");
        }
    }

    #[test]
    fn ver_pads_numbers_as_dkms_does() {
        assert_eq!(
            ver("2.6.9-1cvs200409091247"),
            "002.006.009-001cvs200409091247"
        );
        assert!(ver("6.1.0-57-amd64") < ver("6.1.0-60"));
        assert!(ver("6.12.1") > ver("6.9.0"));
    }
}
