//! The host agent with real guests (QEMU `-M microvm`, vhost-user-blk,
//! TCG or KVM):
//!
//! - **three at once**: three guests through one `imagefs agent` (a
//!   shared local tier, a directory origin) boot at the same moment from
//!   the same image and hash every file; every listing equals the
//!   flattened image, and the origin served each distinct chunk once: its
//!   hits equal the objects the shared tier holds, while the VMs together
//!   asked the store for at least twice that;
//! - **kill -9 mid-run** (`agent_kill_9_*`): see that test.
//!
//! Needs qemu-system-x86, the guest kernel (scripts/guest-kernel.sh) and
//! the `imagefs` binary built with RocksDB (`cargo build -p tools`);
//! prints `SKIP:` without them.

mod vm;

use std::path::Path;
use std::time::Duration;

use imagefs::transport::api::client::ApiClient;
use manifest::agent::{VmInfo, VmSpec};
use tests::guest::{self, BootOptions, GuestOutput, LIST_SCRIPT, boot, compare, parse_listing};
use vm::{AgentProc, Converted, Tools};

/// Bound on one guest run (a hang watchdog, not a timing assertion).
const GUEST_TIMEOUT: Duration = Duration::from_secs(900);

/// Kernel log lines that mean the guest saw a failed request.
const IO_ERRORS: [&str; 4] = [
    "I/O error",
    "blk_update_request",
    "Buffer I/O error",
    "EXT4-fs error",
];

fn spec(id: &str, c: &Converted) -> VmSpec {
    VmSpec {
        id: id.into(),
        image: c.digest.clone(),
        writable: false,
        dedicated: None,
        queues: None,
    }
}

fn boot_vm(
    t: &Tools,
    vm: &VmInfo,
    script: &str,
    rw: bool,
    log: &Path,
) -> Result<GuestOutput, String> {
    boot(
        &t.qemu,
        &t.kernel,
        t.accel,
        &BootOptions {
            socket: &vm.socket,
            rw,
            script,
            queues: 1,
            mem_mib: 512,
            timeout: GUEST_TIMEOUT,
        },
        log,
    )
}

/// The guest's listing equals the flattened image's, and its kernel
/// logged no I/O error.
fn check_guest(name: &str, c: &Converted, out: &GuestOutput) {
    assert!(
        out.mounted,
        "{name}: /dev/vda did not mount:\n{}",
        guest::tail(&out.console, 40)
    );
    assert_eq!(
        out.rc,
        0,
        "{name}: the script failed:\n{}",
        out.lines.join("\n")
    );
    let (listing, _) = parse_listing(&out.lines).unwrap();
    let diff = compare(&c.reference, &listing);
    assert!(
        diff.is_empty(),
        "{name}: differs from the flattened image:\n  {}",
        diff.join("\n  ")
    );
    for bad in IO_ERRORS {
        assert!(
            !out.console.contains(bad),
            "{name}: the guest kernel logged `{bad}`:\n{}",
            guest::tail(&out.console, 40)
        );
    }
    let files = listing.values().filter(|e| e.sha256.is_some()).count();
    eprintln!(
        "{name}: {} paths listed ({files} files hashed), equal to the flattened image, in {:.1} s",
        listing.len(),
        out.took.as_secs_f64()
    );
}

#[test]
fn three_guests_through_one_agent_read_every_file_and_share_every_fetch() {
    let Some(t) = vm::tools() else { return };
    let c = vm::generated();
    let dir = c.dir.path();
    let shared = dir.join("shared");
    let agent = AgentProc::start(
        &t,
        &c,
        &[
            "--shared",
            shared.to_str().unwrap(),
            "--shared-capacity",
            "1G",
        ],
        &dir.join("agent.log"),
    )
    .unwrap();
    let client = ApiClient::new(&agent.api);
    let vms: Vec<VmInfo> = ["g1", "g2", "g3"]
        .iter()
        .map(|id| client.start_vm(&spec(id, &c)).unwrap())
        .collect();
    let outs: Vec<Result<GuestOutput, String>> = std::thread::scope(|s| {
        let running: Vec<_> = vms
            .iter()
            .map(|vm| {
                let (t, log) = (&t, dir.join(format!("{}.console.log", vm.id)));
                s.spawn(move || boot_vm(t, vm, LIST_SCRIPT, false, &log))
            })
            .collect();
        running.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (vm, out) in vms.iter().zip(&outs) {
        let out = out
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}\nthe agent said:\n{}", vm.id, agent.proc.output()));
        check_guest(&vm.id, &c, out);
    }

    let host = client.tiers().unwrap();
    let tier = |name: &str| {
        host.tiers
            .tiers
            .iter()
            .find(|t| t.tier == name)
            .unwrap_or_else(|| panic!("no tier {name}: {host:?}"))
            .clone()
    };
    let origin = tier("origin");
    let distinct = host.shared.expect("the shared tier's usage").objects;
    let asked: u64 = client
        .list()
        .unwrap()
        .iter()
        .map(|vm| vm.reader.store_fetches)
        .sum();
    eprintln!(
        "three guests: the VMs asked the store for {asked} chunks; the origin served {} \
         ({} bytes); the shared tier holds {distinct} distinct chunks; {} gets joined another's fetch",
        origin.hits, origin.bytes, host.tiers.shared_fetches
    );
    assert!(distinct > 0, "nothing was fetched");
    assert_eq!(
        origin.hits, distinct,
        "the origin must serve each distinct chunk once, host-wide"
    );
    assert!(
        asked >= 2 * distinct,
        "the three VMs should each have asked for the chunks they read ({asked} asks, {distinct} distinct)"
    );
}
