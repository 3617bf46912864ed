//! The Linux guest path: Debian's stock kernel and the project's initramfs
//! (scripts/guest-kernel.sh), /dev/vda served by qemu-storage-daemon from an
//! ext4 image made with mke2fs. On hosts whose KVM cannot run a stock kernel
//! (this machine's kvm_pvm) the boot does not reach userspace within the
//! limit and the test says so with `SKIP:`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmm_shim::backend::{BackendProcess, which};
use vmm_shim::linux::{LinuxConfig, boot};

fn guest_kernel() -> Result<(PathBuf, PathBuf), String> {
    if let (Some(k), Some(i)) = (
        std::env::var_os("VMM_SHIM_KERNEL"),
        std::env::var_os("VMM_SHIM_INITRD"),
    ) {
        return Ok((k.into(), i.into()));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/guest-kernel.sh");
    if !script.exists() {
        return Err(format!("{} not found", script.display()));
    }
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} printed no {k}", script.display()))
    };
    Ok((get("KERNEL=")?, get("INITRD=")?))
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn linux_guest_mounts_the_device_or_skips() {
    if let Err(e) = vmm_shim::vm::kvm_available() {
        println!("SKIP: {e}");
        return;
    }
    if which("qemu-storage-daemon").is_none() || which("mke2fs").is_none() {
        println!("SKIP: qemu-storage-daemon or mke2fs not installed");
        return;
    }
    let (kernel, initrd) = match guest_kernel() {
        Ok(k) => k,
        Err(e) => {
            println!("SKIP: no guest kernel: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), "vmm-shim linux guest ok\n").unwrap();
    let img = dir.path().join("fs.img");
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success(), "mke2fs failed");
    let qsd = BackendProcess::qemu_storage_daemon(&img, &dir.path().join("blk.sock")).unwrap();
    let limit = Duration::from_secs(30);
    let cfg = LinuxConfig {
        kernel: kernel.clone(),
        initramfs: Some(initrd),
        cmdline: format!("imagefs.cmd={}", base64(b"cat /mnt/hello.txt\n")),
        socket: Some(qsd.socket().to_path_buf()),
        ram_mib: 512,
        marker: "IMAGEFS-GUEST: END".into(),
        timeout: limit,
    };
    let run = boot(&cfg).unwrap_or_else(|e| panic!("boot of {} failed: {e}", kernel.display()));
    if !run.reached_marker {
        println!(
            "SKIP: this host's KVM did not boot the stock kernel {} to userspace within {limit:?} \
             (expected under kvm_pvm, which cannot boot a stock kernel); entry {:#x}, vCPU stopped at rip {:?}; \
             {} console bytes, last lines: {:?}",
            kernel.display(),
            run.entry,
            run.rip.map(|r| format!("{r:#x}")),
            run.console.len(),
            run.console_tail(3)
        );
        return;
    }
    assert!(
        run.console.contains("IMAGEFS-GUEST: mounted /dev/vda"),
        "{}",
        run.console
    );
    assert!(
        run.console.contains("vmm-shim linux guest ok"),
        "{}",
        run.console
    );
    assert!(
        run.console.contains("IMAGEFS-GUEST: END rc=0"),
        "{}",
        run.console
    );
    println!("Linux guest booted and read /dev/vda in {:?}", run.elapsed);
}
