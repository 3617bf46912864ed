//! The probe guest and the cold-start harness against the real
//! `imagefs serve`, on the Debian base image converted into a directory
//! store: the probe reads known blocks and the VMM checks them against
//! `imagefs export`; then every cold-start scenario runs once.
//!
//! Needs /dev/kvm, qemu-storage-daemon, the `imagefs` binary of this
//! workspace (`cargo build -p tools`, or `IMAGEFS_BIN`) and the Debian
//! images (`scripts/build-debian-images.sh`); prints `SKIP:` otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use manifest::report::FetchCause;
use vmm_shim::backend::{BackendProcess, which};
use vmm_shim::coldstart::{ColdstartConfig, ProfileMode, Scenario, render, run};
use vmm_shim::{Params, RunConfig, TraceEntry, run_probe};

mod common;
use common::{debian_base, imagefs};

struct Ready {
    imagefs: PathBuf,
    dir: tempfile::TempDir,
    raw: PathBuf,
}

impl Ready {
    fn store(&self) -> String {
        self.dir.path().join("store").display().to_string()
    }
    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }
    /// One run of each of `scenarios` in each of `profiles`, replaying
    /// `trace` on the base image.
    fn coldstart(
        &self,
        trace: &[TraceEntry],
        scenarios: Vec<Scenario>,
        profiles: Vec<ProfileMode>,
    ) -> ColdstartConfig {
        ColdstartConfig {
            imagefs: self.imagefs.clone(),
            image: "base".into(),
            store: self.store(),
            keys: Some(self.keys()),
            trace: trace.to_vec(),
            runs: 1,
            work: self.dir.path().join("work"),
            scenarios,
            profiles,
            // Read-ahead depends on timing; the tests count where chunks came from.
            readahead: Some(0),
            prefetch_concurrency: None,
            params: Params::default(),
            timeout: Duration::from_secs(120),
            raw: Some(self.raw.clone()),
        }
    }
}

fn run_imagefs(imagefs: &Path, args: &[&str]) {
    let out = Command::new(imagefs)
        .args(args)
        .env_remove("IMAGEFS_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imagefs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Converts the Debian base image into a fresh store and exports it; `None`
/// after a SKIP line when something needed is missing.
fn prepare() -> Option<Ready> {
    let missing = if let Err(e) = vmm_shim::vm::kvm_available() {
        Some(e)
    } else if which("qemu-storage-daemon").is_none() {
        Some("qemu-storage-daemon not installed".into())
    } else {
        None
    };
    if let Some(why) = missing {
        println!("SKIP: {why}");
        return None;
    }
    let Some(imagefs) = imagefs() else {
        println!("SKIP: no imagefs binary (cargo build -p tools, or set IMAGEFS_BIN)");
        return None;
    };
    let Some(source) = debian_base() else {
        println!("SKIP: no Debian base image (scripts/build-debian-images.sh)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = Ready {
        raw: dir.path().join("base.raw"),
        imagefs,
        dir,
    };
    let (store, keys) = (r.store(), r.keys().display().to_string());
    run_imagefs(
        &r.imagefs,
        &[
            "convert", &source, "--tag", "base", "--store", &store, "--keys", &keys,
        ],
    );
    let raw = r.raw.display().to_string();
    run_imagefs(
        &r.imagefs,
        &[
            "export", "base", "--store", &store, "--keys", &keys, "--output", &raw,
        ],
    );
    Some(r)
}

/// Reads at the device's start, across chunk boundaries (512 KiB chunks),
/// of odd sizes, and near the end.
fn known_blocks(size: u64) -> Vec<TraceEntry> {
    let chunk = 512 * 1024;
    let mut t = vec![
        TraceEntry {
            offset: 0,
            len: 4096,
        },
        TraceEntry {
            offset: 1024,
            len: 1024,
        },
        TraceEntry {
            offset: chunk - 4096,
            len: 8192,
        },
        TraceEntry {
            offset: 3 * chunk - 32768,
            len: 65536,
        },
        TraceEntry {
            offset: size - 4096,
            len: 4096,
        },
    ];
    t.extend((0..48u64).map(|i| TraceEntry {
        offset: (i * 7919 * 4096) % (size - 65536),
        len: 4096 * (1 + i as u32 % 16),
    }));
    t
}

#[test]
fn probe_reads_known_blocks_through_imagefs_serve() {
    let Some(r) = prepare() else { return };
    let image = std::fs::read(&r.raw).unwrap();
    let trace = known_blocks(image.len() as u64);
    let socket = r.dir.path().join("blk.sock");
    let mut cmd = Command::new(&r.imagefs);
    cmd.args(["serve", "base", "--stats", "--store", &r.store()])
        .arg("--keys")
        .arg(r.keys())
        .arg("--socket")
        .arg(&socket)
        .env_remove("IMAGEFS_CONFIG");
    let mut serve = BackendProcess::spawn(cmd, "imagefs serve", &socket).unwrap();
    let cfg = RunConfig {
        params: Params::default(),
        keep_data: true,
        // A hang watchdog, not a timing assertion.
        timeout: Duration::from_secs(120),
        ..RunConfig::new(socket.clone(), trace.clone())
    };
    let run = run_probe(&cfg).unwrap_or_else(|e| panic!("{e}\n{}", serve.log_tail()));
    assert_eq!(run.outcome.completed, trace.len() as u64);
    for (i, e) in trace.iter().enumerate() {
        assert_eq!(run.results[i].status, 0, "entry {i} status");
        let want = &image[e.offset as usize..(e.offset + u64::from(e.len)) as usize];
        assert!(
            run.data(i).unwrap() == want,
            "entry {i} ({} +{}) differs from imagefs export",
            e.offset,
            e.len
        );
    }
    // The VMM has gone: the daemon ends by itself.
    assert!(
        serve.wait_exit(Duration::from_secs(30)),
        "imagefs serve did not exit after the VM"
    );
    println!(
        "{} reads through imagefs serve equal the exported image\n{}",
        trace.len(),
        serve.log()
    );
}

#[test]
fn coldstart_runs_every_scenario_against_imagefs_serve() {
    let Some(r) = prepare() else { return };
    let size = std::fs::metadata(&r.raw).unwrap().len();
    let trace = known_blocks(size);
    let cfg = r.coldstart(&trace, Scenario::ALL.to_vec(), ProfileMode::ALL.to_vec());
    let results = run(&cfg).unwrap();
    print!("{}", render(&results));
    let bytes: u64 = trace.iter().map(|e| u64::from(e.len)).sum();
    for res in &results {
        let name = res.scenario.name();
        assert!(res.unavailable.is_none(), "{name}: {:?}", res.unavailable);
        assert_eq!(res.samples.len(), 1, "{name}");
        assert_eq!(res.samples[0].bytes_read, bytes, "{name}");
    }
    let tier = |s: Scenario, t: &str| {
        let r = results.iter().find(|r| r.scenario == s).unwrap();
        r.samples[0]
            .tiers
            .iter()
            .find(|(n, _)| n == t)
            .map_or(0, |(_, b)| *b)
    };
    // Each scenario's chunks came from the tier it prepared.
    assert!(tier(Scenario::Origin, "origin") > 0);
    assert!(tier(Scenario::AzWarm, "az") > 0);
    assert_eq!(tier(Scenario::AzWarm, "origin"), 0);
    assert!(tier(Scenario::SharedWarm, "shared-local") > 0);
    assert_eq!(tier(Scenario::SharedWarm, "origin"), 0);
    let dedicated = results
        .iter()
        .find(|r| r.scenario == Scenario::DedicatedWarm)
        .unwrap();
    assert_eq!(
        dedicated.samples[0].fetched,
        Some(0),
        "dedicated-warm fetched"
    );
    // With a profile (recorded by the harness's own unmeasured run), the
    // measured start queued its chunks; without one, nothing prefetched.
    let row = |s: Scenario, m: ProfileMode| {
        results
            .iter()
            .find(|r| r.scenario == s && r.profile == Some(m))
            .unwrap()
    };
    for sc in [Scenario::Origin, Scenario::AzWarm, Scenario::SharedWarm] {
        let p = row(sc, ProfileMode::With).samples[0].prefetch.clone();
        assert!(
            p.as_ref().is_some_and(|p| p.queued > 0),
            "{}: {p:?}",
            sc.name()
        );
        let p = &row(sc, ProfileMode::Without).samples[0].prefetch;
        assert!(p.is_none(), "{}: {p:?}", sc.name());
    }
    // serve --record-fetches logged every fetch, each with its cause.
    for m in ProfileMode::ALL {
        let s = &row(Scenario::Origin, m).samples[0];
        let log = s.fetch_log.as_ref().expect("a fetch log");
        assert_eq!(Some(log.events.len() as u64), s.fetches, "{m:?}");
        let prefetched = log
            .events
            .iter()
            .filter(|e| e.cause == FetchCause::Prefetch)
            .count() as u64;
        let demand = log
            .events
            .iter()
            .filter(|e| e.cause == FetchCause::Demand)
            .count() as u64;
        let want = s.prefetch.as_ref().map_or(0, |p| p.prefetched);
        assert_eq!(prefetched, want, "{m:?}");
        // Read-ahead is off: every other fetch is a demand read's.
        assert_eq!(prefetched + demand, log.events.len() as u64, "{m:?}");
    }
}

/// The AZ-fleet scenarios (issue 16): five real cache nodes, erasure-coded
/// and replicated, healthy and with one node SIGSTOPped; every start reads
/// the whole trace and its chunks come from the fleet, none from the
/// origin, stopped node or not.
#[test]
fn coldstart_az_fleet_scenarios() {
    let Some(r) = prepare() else { return };
    let size = std::fs::metadata(&r.raw).unwrap().len();
    let trace = known_blocks(size);
    let cfg = r.coldstart(&trace, Scenario::FLEET.to_vec(), vec![ProfileMode::Without]);
    let results = run(&cfg).unwrap();
    print!("{}", render(&results));
    assert_eq!(results.len(), Scenario::FLEET.len());
    let bytes: u64 = trace.iter().map(|e| u64::from(e.len)).sum();
    for res in &results {
        let name = res.scenario.name();
        assert!(res.unavailable.is_none(), "{name}: {:?}", res.unavailable);
        let s = &res.samples[0];
        assert_eq!(s.bytes_read, bytes, "{name}");
        let tier = |t: &str| s.tiers.iter().find(|(n, _)| n == t).map_or(0, |x| x.1);
        assert!(tier("az") > 0, "{name}: {:?}", s.tiers);
        assert_eq!(tier("origin"), 0, "{name}: {:?}", s.tiers);
    }
}
