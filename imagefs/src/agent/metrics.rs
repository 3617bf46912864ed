//! The agent's Prometheus text (`GET /metrics`): per-VM request counters
//! and read latency, per-VM reader counters, the fair gate, the shared
//! plaintext cache, and the shared tiers' own counters and latency
//! histograms.

use std::sync::Arc;

use telemetry::prometheus::{Kind, Text};

use super::fair::FairGate;
use super::vm::Vm;
use crate::lazy::SharedPlain;
use crate::tiers::Tiers;

/// Upper bounds (microseconds) of the per-VM read latency buckets.
const READ_BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// The whole exposition.
pub(super) fn render(
    vms: &[Arc<Vm>],
    tiers: &Tiers,
    gate: &FairGate,
    plain: Option<&SharedPlain>,
) -> String {
    let mut text = Text::new();
    text.family("imagefs_agent_vms", Kind::Gauge, "VMs served.")
        .sample(&[], vms.len() as u64);
    text.family(
        "imagefs_agent_fetch_slots_in_use",
        Kind::Gauge,
        "Fetch slots of the fair gate held now, host-wide.",
    )
    .sample(&[], gate.holding() as u64);
    if let Some(plain) = plain {
        let s = plain.stats();
        text.family(
            "imagefs_agent_plain_cache_bytes",
            Kind::Gauge,
            "Decrypted chunk bytes the VMs share now (memory_cache).",
        )
        .sample(&[], s.bytes);
        let mut f = text.family(
            "imagefs_agent_plain_cache_total",
            Kind::Counter,
            "Lookups of the shared plaintext cache by outcome, host-wide.",
        );
        for (event, n) in [
            ("hit", s.hits),
            ("joined", s.joined),
            ("fetch", s.fetches),
            ("key_mismatch", s.key_mismatches),
            ("eviction", s.evictions),
        ] {
            f.sample(&[("event", event)], n);
        }
    }

    let infos: Vec<_> = vms.iter().map(|vm| (vm, vm.info())).collect();
    {
        let mut f = text.family(
            "imagefs_vm_connected",
            Kind::Gauge,
            "1 while the VM's frontend is connected.",
        );
        for (vm, _) in &infos {
            f.sample(
                &[("vm", vm.id())],
                u64::from(vm.service().stats().connected()),
            );
        }
    }
    {
        let mut f = text.family(
            "imagefs_vm_requests_total",
            Kind::Counter,
            "Guest requests by kind.",
        );
        for (vm, info) in &infos {
            let s = &info.served;
            for (kind, n) in [
                ("read", s.reads),
                ("write", s.writes),
                ("flush", s.flushes),
                ("get_id", s.get_ids),
                ("rejected", s.rejected),
                ("io_error", s.io_errors),
                ("resubmitted", s.resubmitted),
            ] {
                f.sample(&[("vm", vm.id()), ("kind", kind)], n);
            }
        }
    }
    {
        let mut f = text.family(
            "imagefs_vm_bytes_total",
            Kind::Counter,
            "Bytes the guest read and wrote.",
        );
        for (vm, info) in &infos {
            f.sample(
                &[("vm", vm.id()), ("direction", "read")],
                info.served.bytes_read,
            );
            f.sample(
                &[("vm", vm.id()), ("direction", "write")],
                info.served.bytes_written,
            );
        }
    }
    {
        let mut f = text.family(
            "imagefs_vm_chunk_reads_total",
            Kind::Counter,
            "Chunk reads of the VM's image by where they were served from.",
        );
        for (vm, info) in &infos {
            let r = &info.reader;
            for (source, n) in [
                ("dedicated", r.dedicated_hits),
                ("memory", r.memory_hits),
                ("hole", r.hole_reads),
                ("store", r.store_fetches),
                ("shared_plain", r.shared_plain_hits),
                ("shared_plain_flight", r.shared_plain_joins),
                ("shared_flight", r.shared_fetches),
                ("readahead", r.readahead_fetches),
                ("error", r.fetch_errors),
            ] {
                f.sample(&[("vm", vm.id()), ("source", source)], n);
            }
        }
    }
    {
        let bounds: Vec<f64> = READ_BOUNDS_US.iter().map(|&us| us as f64 / 1e6).collect();
        let mut f = text.family(
            "imagefs_vm_read_seconds",
            Kind::Histogram,
            "Guest read service time, from the queue to completion.",
        );
        for (vm, _) in &infos {
            let (counts, sum_us) = vm.service().stats().read_latency(&READ_BOUNDS_US);
            f.histogram(&[("vm", vm.id())], &bounds, &counts, sum_us as f64 / 1e6);
        }
    }
    let mut out = text.finish();
    out.push_str(&tiers.store.render_prometheus());
    out
}
