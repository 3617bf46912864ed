use std::time::Duration;

use manifest::report::{FetchCause, FetchEvent, FetchLog, PrefetchStats, ServeStats};

use super::report::{CaseReport, ColdstartReport, GOALS, GoalMetric};
use super::*;

#[test]
fn reads_serve_stats() {
    let mut stats = ServeStats::default();
    for (tier, bytes) in [("shared", 1_572_864), ("origin", 2_621_440)] {
        stats.tiers.tiers.push(manifest::report::TierSnapshot {
            tier: tier.into(),
            hits: 1,
            misses: 0,
            bytes,
            verification_failures: 0,
            errors: 0,
            fills: 0,
            fill_failures: 0,
            latency_buckets: vec![1],
            latency_sum_seconds: 0.0,
            last_error: None,
        });
    }
    stats.reader.store_bytes = 4_194_304;
    let text = serde_json::to_string(&stats).unwrap();
    let (tiers, fetched) = tier_bytes(&serde_json::from_str(&text).unwrap());
    assert_eq!(
        tiers,
        vec![
            ("shared".to_owned(), 1_572_864),
            ("origin".to_owned(), 2_621_440)
        ]
    );
    assert_eq!(fetched, Some(4_194_304));
}

#[test]
fn percentiles_of_no_samples_are_zero() {
    let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
    assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
    assert_eq!(percentile(&[], 0.5), Duration::ZERO);
}

fn sample(ready_ms: u64, fetches: u64, unused: Option<u64>) -> Sample {
    let ms = Duration::from_millis;
    Sample {
        first: ms(1),
        ready: ms(ready_ms),
        p50: ms(1),
        p99: ms(2),
        bytes_read: 1000,
        tiers: vec![("origin".into(), fetches * 100)],
        fetched: Some(fetches * 100),
        fetches: Some(fetches),
        prefetch: unused.map(|u| PrefetchStats {
            queued: fetches,
            prefetched: fetches,
            used: fetches - u,
            unused: u,
            ..PrefetchStats::default()
        }),
        requests: vec![(ms(0), ms(1)), (ms(1), ms(ready_ms))],
        fetch_log: Some(FetchLog {
            events: (0..fetches)
                .map(|i| FetchEvent {
                    chunk: i,
                    cause: if unused.is_some() {
                        FetchCause::Prefetch
                    } else {
                        FetchCause::Demand
                    },
                    start_us: i * 1000,
                    end_us: i * 1000 + 800,
                    bytes: 100,
                })
                .collect(),
            dropped: 0,
        }),
    }
}

fn result(sc: Scenario, profile: Option<ProfileMode>, samples: Vec<Sample>) -> ScenarioResult {
    ScenarioResult {
        scenario: sc,
        profile,
        samples,
        unavailable: None,
    }
}

/// Ratios, unused bytes and goals from known samples; the JSON round-trips.
#[test]
fn report_ratios_goals_and_json() {
    use ProfileMode::{With, Without};
    let results = vec![
        result(
            Scenario::Origin,
            Some(Without),
            vec![
                sample(500, 10, None),
                sample(300, 10, None),
                sample(900, 10, None),
            ],
        ),
        result(Scenario::Origin, Some(With), vec![sample(140, 10, Some(4))]),
        result(
            Scenario::DedicatedWarm,
            Some(Without),
            vec![sample(100, 0, None)],
        ),
        result(
            Scenario::DedicatedWarm,
            Some(With),
            vec![sample(100, 0, Some(0))],
        ),
        ScenarioResult {
            scenario: Scenario::AzWarm,
            profile: Some(With),
            samples: Vec::new(),
            unavailable: Some("no node".into()),
        },
    ];
    let case = CaseReport::from_results("t", "img", &results);
    let origin = case.row(Scenario::Origin, Some(Without)).unwrap();
    assert_eq!(origin.ready_ms.median, 500.0);
    assert_eq!(origin.vs_dedicated, Some(5.0));
    assert_eq!(origin.latencies_ms.len(), 6);
    assert_eq!(origin.fetch_timeline.len(), 10);
    let with = case.row(Scenario::Origin, Some(With)).unwrap();
    assert_eq!(with.unused_bytes, Some(400));
    assert_eq!(with.unused_fraction(), Some(0.4));
    let goals = case.goals();
    assert_eq!(goals.len(), GOALS.len());
    let find = |sc: &str, m: ProfileMode, metric: GoalMetric| {
        goals
            .iter()
            .find(|g| g.scenario == sc && g.profile == m && g.metric == metric)
            .unwrap()
    };
    assert_eq!(
        find("origin", Without, GoalMetric::ReadyVsDedicated).met,
        Some(false)
    );
    assert_eq!(
        find("origin", With, GoalMetric::ReadyVsDedicated).met,
        Some(true)
    );
    assert_eq!(
        find("origin", With, GoalMetric::UnusedOverFetched).met,
        Some(false)
    );
    assert_eq!(
        find("az-warm", With, GoalMetric::ReadyVsDedicated).met,
        None
    );
    let report = ColdstartReport::new(3, "depth 1".into(), "imagefs".into(), vec![case]);
    let text = report.render();
    assert!(
        text.contains("NOT met") && text.contains("not run: no node"),
        "{text}"
    );
    let json = serde_json::to_string(&report).unwrap();
    let back: ColdstartReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
}

/// The PNGs are written from a report (skipped without the font).
#[test]
fn writes_pngs() {
    let results = vec![
        result(
            Scenario::Origin,
            Some(ProfileMode::Without),
            vec![sample(300, 4, None)],
        ),
        result(
            Scenario::Origin,
            Some(ProfileMode::With),
            vec![sample(200, 4, Some(1))],
        ),
        result(
            Scenario::DedicatedWarm,
            Some(ProfileMode::Without),
            vec![sample(100, 0, None)],
        ),
    ];
    let case = CaseReport::from_results("t", "img", &results);
    let report = ColdstartReport::new(1, String::new(), String::new(), vec![case]);
    let dir = tempfile::tempdir().unwrap();
    match plot::write_pngs(&report, dir.path()) {
        Ok(paths) => {
            assert_eq!(paths.len(), 2);
            for p in paths {
                let bytes = std::fs::read(&p).unwrap();
                assert_eq!(&bytes[1..4], b"PNG", "{}", p.display());
            }
        }
        Err(crate::Error::Plot { reason, .. }) if reason.contains("font") => {
            println!("SKIP: {reason}");
        }
        Err(e) => panic!("{e}"),
    }
}
