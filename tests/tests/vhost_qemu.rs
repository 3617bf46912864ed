//! The vhost-user-blk daemon end to end: a real Linux guest under QEMU (`-M microvm`,
//! memfd memory, `vhost-user-blk`) whose only disk is `imagefs serve`.
//!
//! - a generated image, converted into a directory store: the guest mounts
//!   it read-only and prints type, mode, owner, size and SHA-256 of every
//!   file, compared with the flattened image; the serial (GET_ID), RO flag
//!   and queue count (MQ) as the guest sees them; the recorded trace;
//! - `--writable`: the guest writes and syncs a file; a fresh instance
//!   does not see it, the same instance (its dedicated tier) does, and the
//!   store is unchanged;
//! - `--keep-alive`: two guests one after the other on the same socket
//!   and daemon, then SIGTERM ends the daemon cleanly;
//! - restart without loss: the daemon is killed (SIGKILL) while the guest
//!   hashes every file through a slow origin (Garage behind a delaying
//!   proxy) and a new one takes over the socket; QEMU (`reconnect=1`)
//!   reconnects, the new daemon resubmits what was in flight (inflight
//!   tracking), and the guest finishes with every hash right and no I/O
//!   error;
//! - the real Debian image (`scripts/build-debian-images.sh`), if built,
//!   converted into a Garage bucket and served from `s3://`: every file
//!   hashed in the guest, compared with the flattened image.
//!
//! Needs qemu-system-x86, the guest kernel (scripts/guest-kernel.sh) and
//! the `imagefs` binary (`cargo build -p tools`), and Garage for the
//! Debian case; prints `SKIP:` without them. Uses KVM where it boots a
//! stock kernel, else TCG, and says which.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use manifest::report::ServeStats;
use tests::guest::{self, BootOptions, LIST_SCRIPT, Proc, boot, wait_for_socket};
use vm::{
    Converted, Tools, check_listing, convert_into_garage, generated, generated_source, tools,
};

mod vm;

/// Bound on one guest boot of the generated image (a hang watchdog).
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

fn serve(t: &Tools, c: &Converted, socket: &Path, extra: &[&str], log: &Path) -> Proc {
    let _ = fs::remove_file(socket);
    let mut cmd = Command::new(&t.imagefs);
    cmd.arg("serve")
        .arg(&c.digest)
        .arg("--socket")
        .arg(socket)
        .arg("--store")
        .arg(&c.store)
        .arg("--keys")
        .arg(&c.keys)
        .arg("--stats-json")
        .arg(stats_path(socket))
        .args(extra)
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .env_remove("IMAGEFS_CONFIG");
    let mut daemon = Proc::spawn(&mut cmd, log).expect("start imagefs serve");
    wait_for_socket(socket, &mut daemon, Duration::from_secs(60)).unwrap();
    daemon
}

/// Boots one guest against a fresh `imagefs serve` and returns the
/// script's output and the daemon's (after it exited on the disconnect).
// Each argument is one knob of the boot the tests vary.
#[allow(clippy::too_many_arguments)]
fn run_guest(
    t: &Tools,
    c: &Converted,
    name: &str,
    serve_args: &[&str],
    script: &str,
    rw: bool,
    queues: u16,
    timeout: Duration,
) -> (guest::GuestOutput, ServeStats) {
    let socket = c.dir.path().join(format!("{name}.sock"));
    let mut daemon = serve(
        t,
        c,
        &socket,
        serve_args,
        &c.dir.path().join(format!("{name}.serve.log")),
    );
    let out = boot(
        &t.qemu,
        &t.kernel,
        t.accel,
        &BootOptions {
            socket: &socket,
            rw,
            script,
            queues,
            mem_mib: 512,
            timeout,
        },
        &c.dir.path().join(format!("{name}.console.log")),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}\nimagefs serve said:\n{}", daemon.output()));
    // The frontend is gone: the daemon ends by itself, cleanly.
    let status = daemon
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{name}: imagefs serve still running after QEMU exited"));
    let log = daemon.output();
    assert!(
        status.success(),
        "{name}: imagefs serve failed ({status}):\n{log}"
    );
    assert!(
        out.mounted,
        "{name}: /dev/vda did not mount:\n{}",
        guest::tail(&out.console, 40)
    );
    (out, serve_stats(&socket))
}

/// Where `serve` has the daemon serving `socket` write its JSON report.
fn stats_path(socket: &Path) -> PathBuf {
    socket.with_extension("stats.json")
}

/// The JSON report (`--stats-json`) of the daemon that served `socket`,
/// written as it exited.
fn serve_stats(socket: &Path) -> ServeStats {
    let path = stats_path(socket);
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("imagefs serve wrote no report at {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not a serve report: {e}\n{text}", path.display()))
}

/// What the device did, on one line for the test's log.
fn served(stats: &ServeStats) -> String {
    match &stats.served {
        Some(r) => format!(
            "{} connection(s), {} reads ({} bytes), {} writes, {} flushes, {} rejected, {} I/O errors",
            r.connections, r.reads, r.bytes_read, r.writes, r.flushes, r.rejected, r.io_errors
        ),
        None => "(the device served nothing)".to_string(),
    }
}

#[test]
fn guest_reads_every_file_of_a_generated_image() {
    let Some(t) = tools() else { return };
    let c = generated();
    let trace = c.dir.path().join("trace.jsonl");
    let trace_arg = trace.to_str().unwrap().to_string();
    let (out, stats) = run_guest(
        &t,
        &c,
        "generated",
        &["--queues", "2", "--record-trace", &trace_arg],
        LIST_SCRIPT,
        false,
        2,
        BOOT_TIMEOUT,
    );
    let facts = check_listing("generated", &c, &out);
    let hex = c.digest.trim_start_matches("sha256:");
    assert_eq!(facts.serial, hex[..20], "GET_ID serial");
    assert!(
        facts.read_only,
        "the device should be read-only without --writable"
    );
    assert_eq!(facts.queues, 2, "MQ: hardware queues seen by the guest");
    eprintln!("generated: {}", served(&stats));
    let (header, records) = imagefs::transport::vhost::read_trace(&trace).unwrap();
    assert_eq!(header.image, c.digest);
    assert!(!records.is_empty(), "no reads recorded");
    assert!(
        records
            .iter()
            .all(|r| r.offset + r.len <= header.device_size && r.len > 0),
        "a recorded read lies outside the device"
    );
    let bytes: u64 = records.iter().map(|r| r.len).sum();
    eprintln!(
        "generated: trace of {} reads, {bytes} bytes, over {} queue(s)",
        records.len(),
        records.iter().map(|r| r.queue).max().unwrap_or(0) + 1
    );
}

fn store_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn guest_writes_land_only_in_its_own_instance() {
    let Some(t) = tools() else { return };
    let c = generated();
    let objects = store_files(Path::new(&c.store));
    let instance = c.dir.path().join("instance-1");
    let instance_arg = instance.to_str().unwrap().to_string();
    let write = "echo written-by-the-guest > /mnt/app/new-file && sync && cat /mnt/app/new-file \
                 && dd if=/dev/urandom of=/mnt/etc/blob bs=4096 count=64 2>/dev/null && sync \
                 && echo WROTE";
    let (out, stats) = run_guest(
        &t,
        &c,
        "write",
        &["--writable", "--dedicated", &instance_arg],
        write,
        true,
        1,
        BOOT_TIMEOUT,
    );
    assert_eq!(out.rc, 0, "write script failed:\n{}", out.lines.join("\n"));
    assert!(
        out.lines.iter().any(|l| l == "written-by-the-guest"),
        "{:?}",
        out.lines
    );
    assert!(out.lines.iter().any(|l| l == "WROTE"), "{:?}", out.lines);
    eprintln!("write: {}", served(&stats));

    let look = "if [ -e /mnt/app/new-file ]; then echo PRESENT; cat /mnt/app/new-file; \
                else echo ABSENT; fi";
    let (fresh, _) = run_guest(&t, &c, "fresh", &[], look, false, 1, BOOT_TIMEOUT);
    assert_eq!(
        fresh.lines.first().map(String::as_str),
        Some("ABSENT"),
        "{:?}",
        fresh.lines
    );
    eprintln!("a fresh instance does not see the write: {:?}", fresh.lines);

    let (same, _) = run_guest(
        &t,
        &c,
        "same",
        &["--dedicated", &instance_arg],
        look,
        false,
        1,
        BOOT_TIMEOUT,
    );
    assert_eq!(
        same.lines,
        ["PRESENT", "written-by-the-guest"],
        "the instance's own dedicated tier should keep its flushed writes"
    );
    eprintln!(
        "the same instance (its dedicated tier) still sees it: {:?}",
        same.lines
    );
    assert_eq!(
        store_files(Path::new(&c.store)),
        objects,
        "a guest write reached the store"
    );
}

/// Waits (up to `limit`, a hang watchdog) until the daemon's log has
/// `n` lines containing `what`; false if it exited or the time ran out.
fn wait_for_log(daemon: &mut Proc, what: &str, n: usize, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if daemon.output().matches(what).count() >= n {
            return true;
        }
        if std::time::Instant::now() >= deadline || !matches!(daemon.child.try_wait(), Ok(None)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keep_alive_serves_a_second_guest_and_sigterm_ends_it_cleanly() {
    let Some(t) = tools() else { return };
    let c = generated();
    let socket = c.dir.path().join("keep.sock");
    let mut daemon = serve(
        &t,
        &c,
        &socket,
        &["--keep-alive"],
        &c.dir.path().join("keep.serve.log"),
    );
    const WAITING: &str = "waiting for the next one (--keep-alive)";
    for round in 1..=2 {
        let name = format!("keep-alive guest {round}");
        let out = boot(
            &t.qemu,
            &t.kernel,
            t.accel,
            &BootOptions {
                socket: &socket,
                rw: false,
                script: LIST_SCRIPT,
                queues: 1,
                mem_mib: 512,
                timeout: BOOT_TIMEOUT,
            },
            &c.dir.path().join(format!("keep{round}.console.log")),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}\nimagefs serve said:\n{}", daemon.output()));
        assert!(
            out.mounted,
            "{name}: /dev/vda did not mount:\n{}",
            guest::tail(&out.console, 40)
        );
        check_listing(&name, &c, &out);
        // QEMU has exited and disconnected: the daemon says it waits for
        // the next frontend, and is still running.
        assert!(
            wait_for_log(&mut daemon, WAITING, round, Duration::from_secs(60)),
            "{name}: imagefs serve --keep-alive did not wait for a next frontend:\n{}",
            daemon.output()
        );
        assert!(
            matches!(daemon.child.try_wait(), Ok(None)),
            "{name}: imagefs serve --keep-alive exited after the frontend left:\n{}",
            daemon.output()
        );
        eprintln!(
            "{name}: done; the daemon is still serving {}",
            socket.display()
        );
    }
    let pid = daemon.child.id().to_string();
    let (sent, said) = tests::harness::run(Command::new("kill").args(["-TERM", &pid]));
    assert!(sent, "kill -TERM {pid}: {said}");
    let status = daemon
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("imagefs serve still running 60 s after SIGTERM"));
    let log = daemon.output();
    assert!(
        status.success(),
        "imagefs serve did not end cleanly on SIGTERM ({status}):\n{log}"
    );
    let stats = serve_stats(&socket);
    assert_eq!(
        stats.served.as_ref().map(|r| r.connections),
        Some(2),
        "expected two connections in the report: {}",
        served(&stats)
    );
    assert!(
        !socket.exists(),
        "the socket {} is left behind",
        socket.display()
    );
    eprintln!(
        "keep-alive: SIGTERM ended the daemon cleanly ({status}): {}",
        served(&stats)
    );
}

/// The hits of tier `tier` in a serve report.
fn tier_hits(stats: &ServeStats, tier: &str) -> u64 {
    stats
        .tiers
        .tiers
        .iter()
        .find(|t| t.tier == tier)
        .map_or(0, |t| t.hits)
}

#[test]
fn guest_reads_every_file_of_the_debian_image() {
    let layout = tests::e2e::debian_layout();
    let tags = tests::e2e::layout_tags(&layout).unwrap_or_default();
    let Some(tag) = tags.iter().find(|t| *t == "python").or(tags.first()) else {
        tests::harness::skip(&format!(
            "no Debian image at {} (scripts/build-debian-images.sh)",
            layout.display()
        ));
        return;
    };
    let Some(t) = tools() else { return };
    let Some(g) = vm::garage() else { return };
    let source_arg = format!("oci:{}:{tag}", layout.display());
    let source: chunker::oci::ImageSource = source_arg.parse().unwrap();
    let c = convert_into_garage(&t, &g, &source, &source_arg, "debian", 512 * 1024, 16 << 20);
    let (out, stats) = run_guest(
        &t,
        &c,
        "debian",
        &["--queues", "2"],
        LIST_SCRIPT,
        false,
        2,
        // Hashing every file of the image under TCG takes a while (about
        // 700 files a minute on 2 busy cores).
        Duration::from_secs(3600),
    );
    check_listing(&format!("debian {tag} from {}", c.store), &c, &out);
    eprintln!(
        "debian {tag}: tiers: {}",
        serde_json::to_string(&stats.tiers.tiers).unwrap()
    );
    eprintln!("debian {tag}: {}", served(&stats));
    assert!(
        tier_hits(&stats, "origin") > 0,
        "no chunk came from the S3 origin: {}",
        serde_json::to_string(&stats.tiers).unwrap()
    );
}

/// Lines of the guest's console that mean a request failed.
const IO_ERRORS: [&str; 3] = ["I/O error", "blk_update_request", "Buffer I/O error"];

#[test]
fn a_killed_daemon_is_replaced_and_the_guest_sees_no_error() {
    let Some(t) = tools() else { return };
    let Some(g) = vm::garage() else { return };
    let (_layout, source, source_arg) = generated_source();
    let mut c = convert_into_garage(&t, &g, &source, &source_arg, "restart", 64 * 1024, 4 << 20);
    // Every request to the origin waits 150 ms, so the guest's reads wait
    // on fetches and a kill finds some in flight.
    let proxy = vm::slow_origin(&mut c, &g);
    // No read-ahead: every fetch is one the guest waits for, so a fetch
    // held at the proxy is a guest request in flight.
    let config = c.dir.path().join("no-readahead.toml");
    fs::write(&config, "[read]\nreadahead_chunks = 0\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let args = ["--keep-alive", "--config", &config];
    let socket = c.dir.path().join("restart.sock");
    let log = |n: u32| c.dir.path().join(format!("restart{n}.serve.log"));
    let mut first = serve(&t, &c, &socket, &args, &log(1));
    let vm = tests::qemu::Microvm::new(&t.qemu, t.accel)
        .memory_mib(512)
        .kernel(&t.kernel.kernel, &t.kernel.initrd)
        .vhost_user_blk(&socket, 1)
        .reconnect(1)
        .append(&guest::script_append(LIST_SCRIPT, false));
    let console = c.dir.path().join("restart.console.log");
    let qemu = {
        let console = console.clone();
        std::thread::spawn(move || guest::run(&vm, BOOT_TIMEOUT, &console))
    };

    // Once the guest's script runs (it hashes files), kill the daemon
    // while a fetch is held.
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    let hashing =
        || fs::read_to_string(&console).is_ok_and(|text| text.contains("IMAGEFS-GUEST: BEGIN"));
    while !(proxy.held() >= 1 && hashing()) {
        assert!(
            !qemu.is_finished() && std::time::Instant::now() < deadline,
            "the guest finished (or hung) before a fetch could be interrupted:\n{}",
            first.output()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    first.child.kill().expect("kill -9 imagefs serve");
    let killed = first.child.wait().unwrap();
    eprintln!(
        "restart: killed the daemon ({killed}) with a fetch in flight, after {} origin requests",
        proxy.forwarded()
    );
    let mut second = serve(&t, &c, &socket, &args, &log(2));

    let out = qemu
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("restart: {e}\nthe second daemon said:\n{}", second.output()));
    assert!(
        out.mounted,
        "restart: /dev/vda did not mount:\n{}",
        guest::tail(&out.console, 40)
    );
    check_listing("restart", &c, &out);
    let errors: Vec<&str> = out
        .console
        .lines()
        .filter(|l| IO_ERRORS.iter().any(|e| l.contains(e)))
        .collect();
    assert!(
        errors.is_empty(),
        "restart: the guest saw I/O errors:\n{}",
        errors.join("\n")
    );

    for line in second.output().lines().filter(|l| l.contains("resubmit")) {
        eprintln!("restart: daemon: {line}");
    }
    let pid = second.child.id().to_string();
    let (sent, why) = tests::harness::run(Command::new("kill").args(["-TERM", &pid]));
    assert!(sent, "kill -TERM {pid}: {why}");
    let status = second
        .wait_timeout(Duration::from_secs(60))
        .expect("the second daemon still running 60 s after SIGTERM");
    assert!(
        status.success(),
        "the second daemon failed ({status}):\n{}",
        second.output()
    );
    let stats = serve_stats(&socket);
    eprintln!("restart: {}", served(&stats));
    let report = stats.served.expect("the second daemon's report");
    assert!(
        report.resubmitted >= 1 && report.resubmitted_completed == report.resubmitted,
        "restart: the second daemon should have resubmitted and completed what was in flight: {report:?}\n{}",
        second.output()
    );
}
