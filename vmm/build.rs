//! Builds the guest test programs (vmm/guest, a separate workspace) with a clean environment
//! into OUT_DIR and generates `guests.rs`, which embeds each program's ELF image.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let guest = manifest.join("guest");
    for p in [
        "Cargo.toml",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
        "src",
    ] {
        println!("cargo:rerun-if-changed={}", guest.join(p).display());
    }
    let target_dir = out.join("guest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.env_clear();
    // Only what a cargo invocation needs: the outer build's CARGO_*/RUSTFLAGS/target settings
    // must not leak into a build for a freestanding image.
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "TMPDIR",
    ] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    let status = cmd
        .current_dir(&guest)
        .args(["build", "--release", "--offline", "--bins", "--target-dir"])
        .arg(&target_dir)
        .status()
        .expect("build.rs: cannot run cargo to build the guest test programs");
    assert!(
        status.success(),
        "build.rs: building vmm/guest failed (see the output above)"
    );

    let mut names: Vec<String> = std::fs::read_dir(guest.join("src/bin"))
        .expect("vmm/guest/src/bin")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    let mut src = String::from("/// Guest test programs, by name (vmm/guest/src/bin).\npub const PROGRAMS: &[(&str, &[u8])] = &[\n");
    for n in &names {
        let elf: &Path = &target_dir.join("x86_64-unknown-linux-gnu/release").join(n);
        src += &format!(
            "    ({n:?}, include_bytes!({:?})),\n",
            elf.display().to_string()
        );
    }
    src += "];\n";
    std::fs::write(out.join("guests.rs"), src).unwrap();
}
