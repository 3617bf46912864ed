//! The probe guest against the reference backend, qemu-storage-daemon.
//! Skips with `SKIP:` when /dev/kvm or qemu-storage-daemon is missing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vmm_shim::backend::{BackendProcess, which};
use vmm_shim::{Error, Params, RunConfig, TraceEntry, WaitMode, run_probe};

/// A 16 MiB image: each 512-byte sector holds its sector number (u64 LE)
/// repeated, xored with a per-word counter so no two words match.
fn pattern_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let sectors = 32768u64;
    let mut data = Vec::with_capacity((sectors * 512) as usize);
    for s in 0..sectors {
        for w in 0..64u64 {
            data.extend_from_slice(&(s.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ w).to_le_bytes());
        }
    }
    let path = dir.join("pattern.img");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn skip_reason() -> Option<String> {
    if let Err(e) = vmm_shim::vm::kvm_available() {
        return Some(e);
    }
    if which("qemu-storage-daemon").is_none() {
        return Some(
            "qemu-storage-daemon not installed (Debian qemu-system-x86 / qemu-utils)".into(),
        );
    }
    None
}

macro_rules! skip_unless_ready {
    () => {
        if let Some(r) = skip_reason() {
            println!("SKIP: {r}");
            return;
        }
    };
}

fn config(socket: &Path, trace: Vec<TraceEntry>, params: Params) -> RunConfig {
    RunConfig {
        params,
        keep_data: true,
        // A hang watchdog, not a timing assertion.
        timeout: Duration::from_secs(90),
        ..RunConfig::new(socket.to_path_buf(), trace)
    }
}

fn known_blocks() -> Vec<TraceEntry> {
    vec![
        TraceEntry {
            offset: 0,
            len: 512,
        },
        TraceEntry {
            offset: 4096,
            len: 4096,
        },
        TraceEntry {
            offset: 512 * 12345,
            len: 1024,
        },
        TraceEntry {
            offset: 1 << 20,
            len: 512 << 10,
        }, // four 128 KiB segments
        TraceEntry {
            offset: (16 << 20) - 4096,
            len: 4096,
        }, // the last block
        TraceEntry {
            offset: 0,
            len: 512,
        }, // a repeat
        TraceEntry {
            offset: 7 << 20,
            len: 2 << 20,
        }, // 16 segments: the most per request
    ]
}

fn check_run(socket: &Path, data: &[u8], trace: Vec<TraceEntry>, params: Params) {
    let cfg = config(socket, trace.clone(), params);
    let run = run_probe(&cfg).unwrap_or_else(|e| panic!("probe run failed: {e}"));
    assert_eq!(
        run.outcome.capacity_sectors,
        data.len() as u64 / 512,
        "capacity from config space"
    );
    assert_eq!(run.backend_capacity, data.len() as u64 / 512);
    assert_eq!(run.outcome.completed, trace.len() as u64);
    assert!(
        run.console.contains("probe: trace done"),
        "console: {:?}",
        run.console
    );
    for (i, e) in trace.iter().enumerate() {
        let r = run.results[i];
        assert_eq!(r.status, 0, "entry {i} status");
        assert!(r.tsc_complete >= r.tsc_submit);
        let got = run.data(i).unwrap();
        let want = &data[e.offset as usize..e.offset as usize + e.len as usize];
        assert!(
            got == want,
            "entry {i} ({} +{}) data differs from the image",
            e.offset,
            e.len
        );
    }
    println!(
        "kick path {:?}, {} requests, ready after {:?}",
        run.kick,
        trace.len(),
        run.to_ready()
    );
}

#[test]
fn reads_known_blocks_polling() {
    skip_unless_ready!();
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = pattern_image(dir.path());
    let qsd = BackendProcess::qemu_storage_daemon(&img, &dir.path().join("blk.sock")).unwrap();
    let params = Params {
        wait: WaitMode::Poll,
        ..Params::default()
    };
    check_run(qsd.socket(), &data, known_blocks(), params);
}

#[test]
fn reads_known_blocks_halting_with_depth() {
    skip_unless_ready!();
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = pattern_image(dir.path());
    let qsd = BackendProcess::qemu_storage_daemon(&img, &dir.path().join("blk.sock")).unwrap();
    // Many small reads in flight at once, completed out of order or not.
    let mut trace = known_blocks();
    for i in 0..300u64 {
        trace.push(TraceEntry {
            offset: (i * 7919 % 32000) * 512,
            len: 512 * (1 + (i % 8) as u32),
        });
    }
    let params = Params {
        wait: WaitMode::Halt,
        depth: 8,
        ..Params::default()
    };
    check_run(qsd.socket(), &data, trace, params);
}

#[test]
fn kicks_through_mmio_exits_without_ioeventfd() {
    skip_unless_ready!();
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = pattern_image(dir.path());
    let qsd = BackendProcess::qemu_storage_daemon(&img, &dir.path().join("blk.sock")).unwrap();
    let trace = known_blocks();
    let mut cfg = config(qsd.socket(), trace.clone(), Params::default());
    cfg.ioeventfd = false;
    let run = run_probe(&cfg).unwrap();
    assert_eq!(run.kick, vmm_shim::KickPath::MmioExit);
    for (i, e) in trace.iter().enumerate() {
        assert_eq!(run.results[i].status, 0);
        let want = &data[e.offset as usize..e.offset as usize + e.len as usize];
        assert!(run.data(i).unwrap() == want, "entry {i}");
    }
}

#[test]
fn read_past_the_end_gets_an_error_status() {
    skip_unless_ready!();
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = pattern_image(dir.path());
    let qsd = BackendProcess::qemu_storage_daemon(&img, &dir.path().join("blk.sock")).unwrap();
    let trace = vec![
        TraceEntry {
            offset: data.len() as u64,
            len: 4096,
        },
        TraceEntry {
            offset: 0,
            len: 512,
        },
    ];
    let run = run_probe(&config(qsd.socket(), trace, Params::default())).unwrap();
    assert_ne!(
        run.results[0].status, 0,
        "read past the end must not succeed"
    );
    assert_eq!(run.results[1].status, 0);
    assert!(run.data(1).unwrap() == data[..512]);
}

#[test]
fn missing_socket_is_a_clear_error() {
    if let Err(e) = vmm_shim::vm::kvm_available() {
        println!("SKIP: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-here.sock");
    let err = run_probe(&config(&sock, known_blocks(), Params::default())).unwrap_err();
    assert!(matches!(err, Error::BackendConnect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("nobody-here.sock") && msg.contains("cannot connect"),
        "{msg}"
    );
}

#[test]
fn backend_that_hangs_up_at_once_is_a_clear_error() {
    if let Err(e) = vmm_shim::vm::kvm_available() {
        println!("SKIP: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rude.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        drop(conn);
    });
    let err = run_probe(&config(&sock, known_blocks(), Params::default())).unwrap_err();
    t.join().unwrap();
    assert!(matches!(err, Error::Vhost { .. }), "{err:?}");
    assert!(err.to_string().contains("rude.sock"), "{err}");
}

fn long_trace() -> Vec<TraceEntry> {
    // Far more reads than finish in the seconds before the backend is
    // killed or stopped (each is a real round trip through the backend).
    (0..2_000_000u64)
        .map(|i| TraceEntry {
            offset: (i * 104_729 % 32_000) * 512,
            len: 4096,
        })
        .collect()
}

/// Waits until the guest has completed some reads (so the backend is hit
/// mid-run, not during setup), or the run has ended.
fn wait_for_progress<T>(progress: &AtomicU64, runner: &std::thread::JoinHandle<T>) {
    while progress.load(Ordering::SeqCst) < 100 && !runner.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn backend_killed_mid_run_stops_the_vm() {
    skip_unless_ready!();
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = pattern_image(dir.path());
    let qsd = BackendProcess::qemu_storage_daemon(&img, &dir.path().join("blk.sock")).unwrap();
    let mut cfg = config(qsd.socket(), long_trace(), Params::default());
    cfg.keep_data = false;
    let progress = Arc::new(AtomicU64::new(0));
    cfg.progress = Some(progress.clone());
    let runner = std::thread::spawn(move || run_probe(&cfg));
    wait_for_progress(&progress, &runner);
    qsd.signal(libc::SIGKILL).unwrap();
    let err = runner.join().unwrap().unwrap_err();
    match &err {
        Error::BackendDisconnected {
            completed, total, ..
        } => {
            assert!(completed < total, "{err}");
        }
        other => panic!("want BackendDisconnected, got {other:?}"),
    }
    assert!(err.to_string().contains("blk.sock"), "{err}");
    drop(qsd);
}

#[test]
fn stuck_backend_hits_the_watchdog() {
    skip_unless_ready!();
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = pattern_image(dir.path());
    let qsd = BackendProcess::qemu_storage_daemon(&img, &dir.path().join("blk.sock")).unwrap();
    let mut cfg = config(qsd.socket(), long_trace(), Params::default());
    cfg.keep_data = false;
    cfg.timeout = Duration::from_secs(10);
    let progress = Arc::new(AtomicU64::new(0));
    cfg.progress = Some(progress.clone());
    let runner = std::thread::spawn(move || run_probe(&cfg));
    wait_for_progress(&progress, &runner);
    qsd.signal(libc::SIGSTOP).unwrap();
    let err = runner.join().unwrap().unwrap_err();
    qsd.signal(libc::SIGCONT).unwrap();
    assert!(matches!(err, Error::Timeout { secs: 10, .. }), "{err:?}");
}

#[test]
fn backend_stopped_during_setup_is_an_error_not_a_hang() {
    skip_unless_ready!();
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = pattern_image(dir.path());
    let qsd = BackendProcess::qemu_storage_daemon(&img, &dir.path().join("blk.sock")).unwrap();
    qsd.signal(libc::SIGSTOP).unwrap();
    let mut cfg = config(qsd.socket(), known_blocks(), Params::default());
    cfg.io_timeout = Duration::from_secs(2);
    let err = run_probe(&cfg).unwrap_err();
    qsd.signal(libc::SIGCONT).unwrap();
    assert!(matches!(err, Error::BackendTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("blk.sock"), "{err}");
}
