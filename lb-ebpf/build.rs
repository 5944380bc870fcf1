// Rebuild when bpf-linker changes (aya-template does the same): a new linker may produce a
// different object.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
