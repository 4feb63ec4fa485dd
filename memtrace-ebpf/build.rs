use which::which;

/// Building this crate needs the `bpf-linker` binary, a dependency cargo cannot express: rebuild
/// when it changes (aya-template's arrangement). `scripts/setup.sh` installs it.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found: run scripts/setup.sh"),
    }
}
