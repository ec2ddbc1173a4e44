//! The `dkms-hook` binary: a thin shell over the library's [`dkms_hook::cli`].

fn main() {
    std::process::exit(dkms_hook::cli::main());
}
