//! The one integration-test binary: the real `dkms-hook` run on fixture roots.

mod apt;
mod architecture;
mod attacks;
mod bad_input;
mod blocked;
mod dkms_conf;
mod fixture;
mod followup;
mod guard;
mod list_cache;
mod messages;
mod preflight;
mod rebuild;
mod replay;
mod rollback;
mod unattended;
mod unrelated;
mod verify;

/// SECURITY.md names, for each promise, the tests that attack it: every
/// name must be a test that exists (`module::test` in this binary, or
/// `module::tests::test` beside the code).
#[test]
fn security_md_names_only_existing_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let mut checked = 0;
    for name in text.split('`').skip(1).step_by(2) {
        let parts: Vec<&str> = name.split("::").collect();
        let (file, test) = match parts[..] {
            [m, "tests", t] if t != "…" => (root.join(format!("src/{m}.rs")), t),
            [m, sub, "tests", t] => (root.join(format!("src/{m}/{sub}.rs")), t),
            [m, t]
                if m.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && root.join(format!("tests/integration/{m}.rs")).exists() =>
            {
                (root.join(format!("tests/integration/{m}.rs")), t)
            }
            _ => continue,
        };
        if !test
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue; // a constant such as rebuild::DKMS
        }
        let src = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            src.contains(&format!("fn {test}()")),
            "SECURITY.md names {name}, which {} does not define",
            file.display()
        );
        checked += 1;
    }
    assert!(checked > 30, "only {checked} test names found");
}
