//! Builds the probe guest (`probe/probe.c`) with the system's gcc into a flat
//! binary that the VMM embeds. Only the host target is installed, so the guest
//! is ordinary freestanding x86-64 code linked at a fixed address by
//! `probe/probe.ld` and turned into raw bytes by objcopy.

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    assert!(status.success(), "{shown} failed with {status}");
}

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets this"));
    let probe = dir.join("probe");
    for f in ["probe.c", "probe.h", "probe.ld"] {
        println!("cargo:rerun-if-changed={}", probe.join(f).display());
    }
    let elf = out.join("probe.elf");
    let cc = std::env::var("PROBE_CC").unwrap_or_else(|_| "gcc".to_owned());
    run(Command::new(&cc)
        .args([
            "-O2",
            "-ffreestanding",
            "-fno-pic",
            "-fno-pie",
            "-no-pie",
            "-nostdlib",
            "-static",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fno-builtin",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", probe.join("probe.ld").display()))
        .arg("-o")
        .arg(&elf)
        .arg(probe.join("probe.c")));
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(out.join("probe.bin")));
}
