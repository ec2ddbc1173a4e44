//! Checked names: every name read from a log, the file system, apt or our
//! own state files becomes one of these types before it touches a path or
//! an argument vector, and is checked again when read back (they
//! deserialize through the same check).
//!
//! | type | alphabet |
//! |---|---|
//! | [`PackageName`] | Debian Policy §5.6.1: `[a-z0-9][a-z0-9+.-]+` |
//! | [`KernelRelease`], [`ModuleName`], [`ModuleVersion`], [`DkmsArch`] | `[A-Za-z0-9][A-Za-z0-9._+~-]*`, no `..` |
//!
//! No `/`, no leading `-` (never taken for an option), no spaces.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A checked name type: `new` validates, `as_str` reads, serde goes
/// through `new` too.
macro_rules! checked_name {
    ($($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr;)+) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: &str) -> Result<$name, Error> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok($name(s.to_string()))
                } else {
                    Err(Error::InvalidName {
                        kind: $kind,
                        name: s.to_string(),
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                $name::new(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }
    )+};
}

/// `[A-Za-z0-9][A-Za-z0-9._+~-]*` of at most `max` bytes, without `..`.
fn word(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && !s.contains("..")
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._+~-".contains(&c))
}

checked_name! {
    /// A Debian package name, safe in a path such as `info/P.list`.
    PackageName, "package", |s| {
        s.len() >= 2
            && s.len() <= 255
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(&c))
    };
    /// A kernel release (`uname -r`), e.g. `6.1.0-50-amd64`.
    KernelRelease, "kernel release", |s| word(s, 200);
    /// A dkms module name, e.g. `acpi-call`.
    ModuleName, "dkms module", |s| word(s, 128);
    /// A dkms module version, e.g. `1.2.2`.
    ModuleVersion, "dkms module version", |s| word(s, 128);
    /// dkms's architecture directory, e.g. `x86_64`.
    DkmsArch, "architecture", |s| word(s, 32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(ModuleName::new("acpi-call").is_ok());
        assert!(ModuleName::new("nvidia-current").is_ok());
        assert!(ModuleVersion::new("550.54.14").is_ok());
        assert!(KernelRelease::new("6.12.38+deb13-amd64").is_ok());
        for bad in ["", "..", "a/b", "a b", "-x", "x..y", "a\u{1b}b"] {
            assert!(ModuleName::new(bad).is_err(), "{bad}");
            assert!(KernelRelease::new(bad).is_err(), "{bad}");
        }
        for bad in ["", "a", "../etc", "a/b", "Foo", "x y", "-x"] {
            assert!(PackageName::new(bad).is_err(), "{bad}");
        }
        assert!(PackageName::new("linux-headers-6.12.38+deb13-amd64").is_ok());
        let back: Result<ModuleName, _> = serde_json::from_str("\"../../tmp\"");
        assert!(back.is_err(), "checked again when read back");
    }
}
