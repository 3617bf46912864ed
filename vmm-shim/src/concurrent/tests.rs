//! The report's aggregation and rendering (pure: made-up rounds).

use std::time::Duration;

use super::report::{ConcurrentReport, GoalMetric, REPORT_FORMAT, ReportHeader};
use super::{CellResult, Mode, Round, VmSample, origin_of};

fn vm(ms: u64, prefetched: bool) -> VmSample {
    VmSample {
        ready: Duration::from_millis(ms),
        bytes_read: 4096,
        prefetched,
    }
}

fn round(ready_ms: &[u64], origin: u64) -> Round {
    Round {
        vms: ready_ms.iter().map(|&m| vm(m, false)).collect(),
        origin_bytes: origin,
        origin_objects: origin / 1000,
        shared_fetches: 0,
        decrypts: 0,
    }
}

fn cell(mode: Mode, n: usize, rounds: Vec<Round>) -> CellResult {
    CellResult {
        mode,
        vms: n,
        rounds,
        unavailable: None,
    }
}

fn header() -> ReportHeader {
    ReportHeader {
        image: "python".into(),
        trace: "t.trace".into(),
        reads: 2,
        bytes: 8192,
        runs: 3,
        probe: "depth 1".into(),
        imagefs: "imagefs".into(),
        host_cpus: 2,
    }
}

#[test]
fn cells_aggregate_every_vm_of_every_run_and_the_median_run_of_bytes() {
    let results = vec![
        cell(
            Mode::Agent,
            1,
            vec![
                round(&[100], 1000),
                round(&[120], 3000),
                round(&[110], 2000),
            ],
        ),
        cell(
            Mode::Agent,
            2,
            vec![round(&[150, 300], 2000), round(&[140, 160], 2500)],
        ),
    ];
    let r = ConcurrentReport::new(header(), &results);
    assert_eq!(r.format, REPORT_FORMAT);
    let one = &r.cells[0];
    assert_eq!((one.runs, one.vms), (3, 1));
    assert_eq!(one.ready_median_ms, 110.0);
    assert_eq!(one.ready_max_ms, 120.0);
    assert_eq!(one.origin_bytes, 2000, "the median run's, not the mean");
    assert_eq!(one.origin_bytes_runs, [1000, 3000, 2000]);
    assert_eq!(one.ready_vs_n1, Some(1.0));
    let two = &r.cells[1];
    // Four VMs: 140 150 160 300; nearest-rank median is the lower middle.
    assert_eq!(two.ready_median_ms, 150.0);
    assert_eq!(two.ready_max_ms, 300.0);
    assert_eq!(two.ready_ms, [vec![150.0, 300.0], vec![140.0, 160.0]]);
    assert_eq!(two.origin_bytes, 2000);
    let ratio = two.ready_vs_n1.unwrap();
    assert!((ratio - 150.0 / 110.0).abs() < 1e-9, "{ratio}");
    assert_eq!(two.origin_vs_n1, Some(1.0));
}

#[test]
fn ratios_are_against_n1_of_the_same_mode_only() {
    let results = vec![
        cell(Mode::Serve, 1, vec![round(&[100], 1000)]),
        cell(Mode::Serve, 4, vec![round(&[200, 200, 200, 400], 4000)]),
        // The agent's N = 1 failed: its other cells have no ratio.
        CellResult {
            mode: Mode::Agent,
            vms: 1,
            rounds: Vec::new(),
            unavailable: Some("agent: no socket".into()),
        },
        cell(Mode::Agent, 4, vec![round(&[50, 60, 70, 80], 1000)]),
    ];
    let r = ConcurrentReport::new(header(), &results);
    assert_eq!(r.cells[1].ready_vs_n1, Some(2.0));
    assert_eq!(r.cells[1].origin_vs_n1, Some(4.0));
    assert_eq!(r.cells[3].ready_vs_n1, None);
    assert_eq!(r.cells[3].origin_vs_n1, None);
    let text = r.render();
    assert!(text.contains("not run: agent: no socket"), "{text}");
    // The agent's goal cannot be judged without N = 1; serve has none.
    assert_eq!(r.goals.len(), 1, "{:?}", r.goals);
    assert_eq!(r.goals[0].met, None);
    assert!(text.contains("not measured"), "{text}");
}

#[test]
fn goals_check_origin_growth_and_ready_at_eight() {
    let results = vec![
        cell(Mode::Agent, 1, vec![round(&[100], 1000)]),
        cell(Mode::Agent, 2, vec![round(&[120, 130], 1000)]),
        cell(Mode::Agent, 8, vec![round(&[160; 8], 1500)]),
        cell(Mode::Serve, 1, vec![round(&[100], 1000)]),
        cell(Mode::Serve, 8, vec![round(&[900; 8], 8000)]),
    ];
    let r = ConcurrentReport::new(header(), &results);
    let find = |n: usize, m: GoalMetric| {
        r.goals
            .iter()
            .find(|g| g.vms == n && g.metric == m && g.mode == Mode::Agent)
            .unwrap_or_else(|| panic!("no goal N={n} {m:?}: {:?}", r.goals))
    };
    assert_eq!(find(2, GoalMetric::OriginVsN1).met, Some(true));
    assert_eq!(find(8, GoalMetric::OriginVsN1).met, Some(false));
    let ready = find(8, GoalMetric::ReadyVsN1);
    assert_eq!(ready.value, Some(1.6));
    assert_eq!(ready.met, Some(false));
    assert!(r.goals.iter().all(|g| g.mode == Mode::Agent));
    let text = r.render();
    assert!(
        text.contains("NOT met") && text.contains(" met\n"),
        "{text}"
    );
    // The JSON round-trips to the same report.
    let json = serde_json::to_string(&r).unwrap();
    let back: ConcurrentReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    assert!(json.contains("\"mode\":\"agent\""), "{json}");
}

#[test]
fn the_table_has_one_line_per_cell_with_its_figures() {
    let mut rounds = vec![round(&[100, 300], 2_500_000)];
    rounds[0].vms[1].prefetched = true;
    rounds[0].shared_fetches = 7;
    rounds[0].decrypts = 9;
    let results = vec![cell(Mode::AgentShared, 2, rounds)];
    let text = ConcurrentReport::new(header(), &results).render();
    let line = text
        .lines()
        .find(|l| l.starts_with("agent-shared"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "agent-shared",
            "2",
            "1",
            "100.0",
            "300.0",
            "-",
            "2.50",
            "-",
            "2500",
            "7",
            "9",
            "1/2"
        ],
        "{text}"
    );
    assert!(text.contains("2 host CPUs"), "{text}");
}

#[test]
fn origin_bytes_come_from_the_origin_tier_only() {
    let json = r#"{"tiers":[
        {"tier":"shared-local","hits":3,"misses":0,"bytes":300,"verification_failures":0,
         "errors":0,"fills":0,"fill_failures":0,"latency_buckets":[],"latency_sum_seconds":0.0,
         "last_error":null},
        {"tier":"origin","hits":2,"misses":0,"bytes":200,"verification_failures":0,
         "errors":0,"fills":0,"fill_failures":0,"latency_buckets":[],"latency_sum_seconds":0.0,
         "last_error":null}],
        "shared_fetches":0,"unavailable":0,"latency_bounds_seconds":[]}"#;
    let t: manifest::report::TiersReport = serde_json::from_str(json).unwrap();
    assert_eq!(origin_of(&t), (200, 2));
    assert_eq!(origin_of(&manifest::report::TiersReport::default()), (0, 0));
}
