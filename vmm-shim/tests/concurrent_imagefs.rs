//! `vmm-shim concurrent`'s harness against the real `imagefs agent` and
//! `imagefs serve`, on the Debian base image converted into a directory
//! store (the origin): N = 1 and 2, one run, every mode, read-ahead off so
//! that the origin's byte counts do not depend on timing.
//!
//! Needs /dev/kvm, the `imagefs` binary of this workspace (`cargo build -p
//! tools`, or `IMAGEFS_BIN`) and the Debian images
//! (`scripts/build-debian-images.sh`); prints `SKIP:` otherwise. A
//! directory origin stands in for Garage: what is measured is how the
//! daemons share fetches, not the origin's protocol.

use std::process::Command;
use std::time::Duration;

use vmm_shim::concurrent::report::{ConcurrentReport, ReportHeader};
use vmm_shim::concurrent::{ConcurrentConfig, Mode, run};
use vmm_shim::{Params, TraceEntry};

mod common;
use common::{debian_base, imagefs};

/// Reads over the first 8 MiB of the device (16 chunks of 512 KiB), some
/// twice, some across chunk boundaries.
fn trace() -> Vec<TraceEntry> {
    (0..40u64)
        .map(|i| TraceEntry {
            offset: (i * 7919 * 4096) % (8 << 20),
            len: 4096 * (1 + i as u32 % 8),
        })
        .collect()
}

#[test]
fn agent_and_serve_share_or_repeat_origin_fetches_as_designed() {
    if let Err(e) = vmm_shim::vm::kvm_available() {
        println!("SKIP: {e}");
        return;
    }
    let Some(imagefs) = imagefs() else {
        println!("SKIP: no imagefs binary (cargo build -p tools, or set IMAGEFS_BIN)");
        return;
    };
    let Some(source) = debian_base() else {
        println!("SKIP: no Debian base image (scripts/build-debian-images.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let keys = dir.path().join("keys");
    let out = Command::new(&imagefs)
        .args(["convert", &source, "--tag", "base", "--store", &store])
        .arg("--keys")
        .arg(&keys)
        .env_remove("IMAGEFS_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = trace();
    let cfg = ConcurrentConfig {
        imagefs,
        image: "base".into(),
        store,
        keys: Some(keys),
        trace: trace.clone(),
        counts: vec![2, 1],
        modes: Mode::ALL.to_vec(),
        runs: 1,
        work: dir.path().join("work"),
        // Read-ahead depends on timing; the test counts origin bytes.
        readahead: Some(0),
        params: Params::default(),
        // A hang watchdog, not a timing assertion.
        timeout: Duration::from_secs(120),
    };
    let results = run(&cfg).unwrap();
    let bytes: u64 = trace.iter().map(|e| u64::from(e.len)).sum();
    let header = ReportHeader {
        image: "base (Debian, directory origin)".into(),
        trace: "the test's synthetic trace".into(),
        reads: trace.len() as u64,
        bytes,
        runs: 1,
        probe: format!("{:?}", Params::default()),
        imagefs: cfg.imagefs.display().to_string(),
        host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    let report = ConcurrentReport::new(header, &results);
    print!("{}", report.render());
    assert_eq!(results.len(), 6, "3 modes x N = 1, 2");
    for r in &results {
        let name = format!("{} N={}", r.mode.name(), r.vms);
        assert!(r.unavailable.is_none(), "{name}: {:?}", r.unavailable);
        assert_eq!(r.rounds.len(), 1, "{name}");
        assert_eq!(r.rounds[0].vms.len(), r.vms, "{name}");
        for vm in &r.rounds[0].vms {
            assert_eq!(vm.bytes_read, bytes, "{name}");
        }
        assert!(r.rounds[0].origin_bytes > 0, "{name}: cold tiers");
    }
    let origin = |m: Mode, n: usize| {
        results
            .iter()
            .find(|r| r.mode == m && r.vms == n)
            .unwrap()
            .rounds[0]
            .origin_bytes
    };
    // N = 1 fetches the trace's chunks once, whoever serves it.
    assert_eq!(origin(Mode::Agent, 1), origin(Mode::Serve, 1));
    assert_eq!(origin(Mode::AgentShared, 1), origin(Mode::Serve, 1));
    // Separate serves share nothing: each fetches every chunk.
    assert_eq!(origin(Mode::Serve, 2), 2 * origin(Mode::Serve, 1));
    // One agent with a shared tier fetches each chunk once, however many
    // VMs read it (single-flight while in flight, the shared tier after).
    assert_eq!(origin(Mode::AgentShared, 2), origin(Mode::AgentShared, 1));
    // Without one, only fetches that overlap in time are shared.
    let (one, two) = (origin(Mode::Agent, 1), origin(Mode::Agent, 2));
    assert!(one <= two && two <= 2 * one, "agent: {one} then {two}");
}
