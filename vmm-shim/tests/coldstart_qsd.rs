//! The cold-start harness end to end with the scenario that needs no
//! imagefs binary: qemu-storage-daemon serving a raw image (`--raw`).

use std::time::Duration;

use vmm_shim::Params;
use vmm_shim::backend::which;
use vmm_shim::coldstart::{ColdstartConfig, ProfileMode, Scenario, render, run};
use vmm_shim::probe::TraceEntry;

#[test]
fn qsd_scenario_runs_and_reports() {
    if let Err(e) = vmm_shim::vm::kvm_available() {
        println!("SKIP: {e}");
        return;
    }
    if which("qemu-storage-daemon").is_none() {
        println!("SKIP: qemu-storage-daemon not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, vec![7u8; 4 << 20]).unwrap();
    let trace: Vec<TraceEntry> = (0..64u64)
        .map(|i| TraceEntry {
            offset: (i * 37 % 1000) * 4096,
            len: 4096,
        })
        .collect();
    let cfg = ColdstartConfig {
        // Never started: the qsd scenario with --raw needs no imagefs.
        imagefs: "/nonexistent/imagefs".into(),
        image: "unused".into(),
        store: "unused".into(),
        keys: None,
        trace,
        runs: 2,
        work: dir.path().join("work"),
        scenarios: vec![Scenario::Qsd, Scenario::Origin],
        profiles: vec![ProfileMode::Without],
        readahead: None,
        prefetch_concurrency: None,
        params: Params::default(),
        timeout: Duration::from_secs(60),
        raw: Some(raw),
    };
    let results = run(&cfg).unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results[0].unavailable.is_none(),
        "{:?}",
        results[0].unavailable
    );
    assert_eq!(results[0].samples.len(), 2);
    for s in &results[0].samples {
        assert_eq!(s.bytes_read, 64 * 4096);
        assert!(s.first <= s.ready && s.p50 <= s.p99);
    }
    // The imagefs scenario cannot start its daemon and says why.
    let why = results[1].unavailable.as_deref().unwrap();
    assert!(why.contains("imagefs serve"), "{why}");
    let table = render(&results);
    print!("{table}");
    assert!(table.contains("qsd") && table.contains("origin          without not run"));
}
