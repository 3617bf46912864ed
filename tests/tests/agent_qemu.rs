//! The host agent with real guests (QEMU `-M microvm`, vhost-user-blk,
//! TCG or KVM):
//!
//! - **three at once**: three guests through one `imagefs agent` (a
//!   shared local tier, a directory origin) boot at the same moment from
//!   the same image and hash every file; every listing equals the
//!   flattened image, and the origin served each distinct chunk once: its
//!   hits equal the objects the shared tier holds, while the VMs together
//!   asked the store for at least twice that;
//! - **kill -9 mid-run**: two guests (one read-only, one writable that
//!   flushed a file first) hash every file through one agent whose origin
//!   (Garage) answers through a proxy holding each request 150 ms; the
//!   agent is killed with SIGKILL while a fetch is held and started again
//!   on the same state file; QEMU (`reconnect=1`) reconnects, the agent
//!   resubmits what was in flight, and both guests finish with every hash
//!   right, no I/O error in the guest kernel's log, and the writer reads
//!   its flushed file back from the device.
//!
//! Needs qemu-system-x86, the guest kernel (scripts/guest-kernel.sh) and
//! the `imagefs` binary built with RocksDB (`cargo build -p tools`);
//! prints `SKIP:` without them.

mod vm;

use std::path::Path;
use std::time::Duration;

use imagefs::transport::api::client::ApiClient;
use manifest::agent::{VmInfo, VmSpec};
use tests::guest::{self, BootOptions, GuestOutput, LIST_SCRIPT, boot};
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
        domain: None,
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
    vm::check_listing(name, c, out);
    for bad in IO_ERRORS {
        assert!(
            !out.console.contains(bad),
            "{name}: the guest kernel logged `{bad}`:\n{}",
            guest::tail(&out.console, 40)
        );
    }
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
    let readers: Vec<_> = client
        .list()
        .unwrap()
        .iter()
        .map(|vm| vm.reader.clone())
        .collect();
    // Store gets (each one get + check + decrypt), and every ask for a
    // chunk's plaintext, from the store or the agent's shared plaintext
    // cache (hit, or waited for another VM's get).
    let fetched: u64 = readers.iter().map(|r| r.store_fetches).sum();
    let asked: u64 = readers
        .iter()
        .map(|r| r.store_fetches + r.shared_plain_hits + r.shared_plain_joins)
        .sum();
    eprintln!(
        "three guests: the VMs asked for {asked} chunks and got {fetched} from the store; the \
         origin served {} ({} bytes); the shared tier holds {distinct} distinct chunks; {} gets \
         joined another's fetch",
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
    assert_eq!(
        fetched, distinct,
        "with the shared plaintext cache, each distinct chunk is got and decrypted once, host-wide"
    );
}

/// A guest of `vm` whose frontend reconnects, running `script` on a
/// thread; its console goes to `log`.
fn spawn_guest(
    t: &Tools,
    vm: &VmInfo,
    script: &str,
    rw: bool,
    log: &Path,
) -> std::thread::JoinHandle<Result<GuestOutput, String>> {
    let machine = tests::qemu::Microvm::new(&t.qemu, t.accel)
        .memory_mib(512)
        .kernel(&t.kernel.kernel, &t.kernel.initrd)
        .vhost_user_blk(&vm.socket, 1)
        .reconnect(1)
        .append(&guest::script_append(script, rw));
    let log = log.to_path_buf();
    std::thread::spawn(move || guest::run(&machine, GUEST_TIMEOUT, &log))
}

fn console(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn agent_kill_9_mid_run_loses_no_guest_io_and_keeps_flushed_writes() {
    let Some(t) = vm::tools() else { return };
    let Some(g) = vm::garage() else { return };
    let (_layout, source, source_arg) = vm::generated_source();
    let mut c = vm::convert_into_garage(
        &t,
        &g,
        &source,
        &source_arg,
        "agent-kill",
        64 * 1024,
        4 << 20,
    );
    let proxy = vm::slow_origin(&mut c, &g);
    let dir = c.dir.path().to_path_buf();
    // No read-ahead (and no stored profile, so no prefetch): every fetch
    // is one a guest waits for, so a fetch held at the proxy is a guest
    // request in flight.
    let config = dir.join("agent.toml");
    std::fs::write(&config, "[read]\nreadahead_chunks = 0\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut agent = AgentProc::start(&t, &c, &args, &dir.join("agent-1.log")).unwrap();
    let client = ApiClient::new(&agent.api);
    let ro = client.start_vm(&spec("reader", &c)).unwrap();
    let rw = client
        .start_vm(&VmSpec {
            writable: true,
            dedicated: Some(dir.join("writer-dedicated")),
            ..spec("writer", &c)
        })
        .unwrap();

    // The writer flushes a file before it hashes, and reads it back from
    // the device (page cache dropped) after the restart.
    const WRITTEN: &str = "flushed-before-the-kill";
    let writer_script = format!(
        "echo {WRITTEN} > /mnt/written && sync && echo WROTE\n{LIST_SCRIPT}\n\
         echo 3 > /proc/sys/vm/drop_caches\necho \"READBACK $(cat /mnt/written)\"\n"
    );
    let (ro_log, rw_log) = (
        dir.join("reader.console.log"),
        dir.join("writer.console.log"),
    );
    let reader = spawn_guest(&t, &ro, LIST_SCRIPT, false, &ro_log);
    let writer = spawn_guest(&t, &rw, &writer_script, true, &rw_log);

    let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
    let hashing = |log: &Path| console(log).contains("IMAGEFS-GUEST: BEGIN");
    while !(hashing(&ro_log) && console(&rw_log).contains("WROTE") && proxy.held() >= 1) {
        assert!(
            !reader.is_finished() && !writer.is_finished() && std::time::Instant::now() < deadline,
            "a guest finished (or hung) before a fetch could be interrupted:\n{}",
            agent.proc.output()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    agent.proc.child.kill().expect("kill -9 imagefs agent");
    let killed = agent.proc.child.wait().unwrap();
    let at_kill = (console(&ro_log).len(), console(&rw_log).len());
    eprintln!(
        "kill: the agent ended ({killed}) with {} origin fetch(es) held, after {} forwarded",
        proxy.held(),
        proxy.forwarded()
    );
    let agent = AgentProc::start(&t, &c, &args, &dir.join("agent-2.log")).unwrap();
    let said = agent.proc.output();
    assert!(said.contains("2 VM(s) restored"), "{said}");

    let ro_out = reader
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("reader: {e}\n{}", agent.proc.output()));
    let rw_out = writer
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("writer: {e}\n{}", agent.proc.output()));
    check_guest("reader", &c, &ro_out);
    // The writer's listing has its own file besides the image's.
    let mut lines = rw_out.lines.clone();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("WROTE"),
        "{lines:?}"
    );
    let readback = lines.pop().unwrap_or_default();
    assert_eq!(
        readback,
        format!("READBACK {WRITTEN}"),
        "the flushed write after the restart"
    );
    lines.retain(|l| l != "WROTE" && !l.ends_with(" /written"));
    check_guest(
        "writer",
        &c,
        &GuestOutput {
            lines,
            ..rw_out.clone()
        },
    );
    eprintln!("writer: read its flushed file back from the device after the restart: {readback}");

    for (name, log, from) in [
        ("reader", &ro_log, at_kill.0),
        ("writer", &rw_log, at_kill.1),
    ] {
        let after: Vec<String> = console(log)[from..]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(4)
            .map(str::to_string)
            .collect();
        eprintln!(
            "{name}: guest console after the kill:\n  {}",
            after.join("\n  ")
        );
    }
    for line in agent
        .proc
        .output()
        .lines()
        .filter(|l| l.contains("resubmit"))
    {
        eprintln!("agent after the restart: {line}");
    }
    let vms = client.list().unwrap();
    let resubmitted: u64 = vms.iter().map(|v| v.served.resubmitted).sum();
    let completed: u64 = vms.iter().map(|v| v.served.resubmitted_completed).sum();
    let io_errors: u64 = vms.iter().map(|v| v.served.io_errors).sum();
    eprintln!(
        "after the restart: {resubmitted} requests resubmitted, {completed} completed, {io_errors} I/O errors"
    );
    assert!(
        resubmitted >= 1,
        "nothing was in flight to resubmit: {vms:?}"
    );
    assert_eq!(
        completed, resubmitted,
        "every resubmitted request completes"
    );
    assert_eq!(io_errors, 0);

    let pid = agent.proc.child.id().to_string();
    let (sent, why) = tests::harness::run(std::process::Command::new("kill").args(["-TERM", &pid]));
    assert!(sent, "kill -TERM {pid}: {why}");
    let mut agent = agent;
    let status = agent
        .proc
        .wait_timeout(Duration::from_secs(60))
        .expect("the agent still running 60 s after SIGTERM");
    assert!(
        status.success(),
        "the agent failed ({status}):\n{}",
        agent.proc.output()
    );
}
