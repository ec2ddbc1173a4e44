//! The `dkms-hook` binary: a thin shell over the library's [`dkms_hook::cli`].

fn main() -> std::process::ExitCode {
    // Exit statuses are 0–3 and 100 (cli::args), all within a u8.
    std::process::ExitCode::from(u8::try_from(dkms_hook::cli::main()).unwrap_or(1))
}
