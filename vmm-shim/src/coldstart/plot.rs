//! PNGs of a [`ColdstartReport`]: for each trace and scenario, the request
//! latency CDF (every request of every run) and the guest's requests
//! completed against time since VM creation (median run), one line per
//! profile mode with dedicated-warm as the reference; and, for the imagefs
//! scenarios, the fetch timeline of the median run of each mode: every
//! fetch from the chunk store as a bar from start to end, coloured by who
//! asked (demand, read-ahead, prefetch), from `serve --record-fetches`.
//!
//! Drawn with `plotters`' bitmap backend; text uses a TrueType font loaded
//! at run time (`$VMM_SHIM_FONT`, default DejaVu Sans from Debian's
//! `fonts-dejavu-core`), so nothing needs fontconfig or freetype.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use manifest::report::{FetchCause, FetchEvent};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::report::{CaseReport, ColdstartReport, RowReport};
use super::{ProfileMode, Scenario};
use crate::error::{Error, Result};

/// The font used when `$VMM_SHIM_FONT` is not set.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn font_ready() -> std::result::Result<(), String> {
    static READY: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let path = std::env::var_os("VMM_SHIM_FONT").unwrap_or(DEFAULT_FONT.into());
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "font {}: {e} (install fonts-dejavu-core or set VMM_SHIM_FONT)",
                    Path::new(&path).display()
                )
            })?;
            // Registered once for the process: plotters keeps a 'static slice.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| {
                format!(
                    "font {}: not a usable TrueType font",
                    Path::new(&path).display()
                )
            })
        })
        .clone()
}

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(120, 120, 120),
];

/// The lines of one picture: label, colour, row.
fn lines(case: &CaseReport, sc: Scenario) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let modes: [Option<ProfileMode>; 3] =
        [Some(ProfileMode::Without), Some(ProfileMode::With), None];
    for (i, m) in modes.iter().enumerate() {
        if let Some(r) = case.row(sc, *m).filter(|r| r.runs > 0) {
            out.push((r.label(), COLORS[i], r));
        }
    }
    if sc != Scenario::DedicatedWarm
        && let Some(r) = case
            .row(Scenario::DedicatedWarm, Some(ProfileMode::Without))
            .filter(|r| r.runs > 0)
    {
        out.push((format!("{} (reference)", r.label()), COLORS[2], r));
    }
    out
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Line<'r> = (String, RGBColor, &'r RowReport);

fn err<E: std::error::Error + Send + Sync>(x: DrawingAreaErrorKind<E>) -> String {
    x.to_string()
}

fn legend(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// A chart on `area` with the caption and label areas every panel uses.
fn panel<'a, 'b>(area: &'a Area<'b>, caption: String) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50);
    builder
}

/// The legend box every panel draws (lower right).
fn legend_box<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// One labelled line per entry of `series`, its points from `points`,
/// then the legend.
fn draw_lines<'a, 'r, X, I>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    series: &[Line<'r>],
    points: impl Fn(&'r RowReport) -> I,
) -> std::result::Result<(), String>
where
    X: Ranged<ValueType = f64>,
    I: IntoIterator<Item = (f64, f64)>,
{
    for (label, color, row) in series {
        chart
            .draw_series(LineSeries::new(points(row), color.stroke_width(2)))
            .map_err(err)?
            .label(label.as_str())
            .legend(legend(*color));
    }
    legend_box(chart)
}

/// Request latency CDF, every request of every run.
fn cdf(
    area: &Area<'_>,
    case: &CaseReport,
    sc: Scenario,
    series: &[Line<'_>],
) -> std::result::Result<(), String> {
    let max_lat = series
        .iter()
        .filter_map(|s| s.2.latencies_ms.last().copied())
        .fold(1.0f64, f64::max);
    let min_lat = series
        .iter()
        .filter_map(|s| s.2.latencies_ms.first().copied())
        .fold(max_lat, f64::min)
        .max(0.001);
    let mut chart = panel(
        area,
        format!(
            "{}: {} request latency CDF (all runs)",
            case.name,
            sc.name()
        ),
    )
    .build_cartesian_2d((min_lat * 0.8..max_lat * 1.25).log_scale(), 0f64..1.0)
    .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(err)?;
    draw_lines(&mut chart, series, |row| {
        let n = row.latencies_ms.len().max(1) as f64;
        row.latencies_ms
            .iter()
            .enumerate()
            .map(move |(i, &l)| (l.max(min_lat), (i + 1) as f64 / n))
    })
}

/// Requests completed against time since VM creation (median run).
fn completions(
    area: &Area<'_>,
    case: &CaseReport,
    sc: Scenario,
    series: &[Line<'_>],
) -> std::result::Result<(), String> {
    let max_t = series
        .iter()
        .filter_map(|s| s.2.timeline_ms.iter().map(|r| r[1]).reduce(f64::max))
        .fold(1.0f64, f64::max);
    let max_n = series
        .iter()
        .map(|s| s.2.timeline_ms.len())
        .max()
        .unwrap_or(1) as f64;
    let mut chart = panel(
        area,
        format!("{}: {} guest requests (median run)", case.name, sc.name()),
    )
    .build_cartesian_2d(0f64..max_t * 1.05, 0f64..max_n * 1.05)
    .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("ms since VM creation")
        .y_desc("requests completed")
        .draw()
        .map_err(err)?;
    draw_lines(&mut chart, series, |row| {
        let mut done: Vec<f64> = row.timeline_ms.iter().map(|r| r[1]).collect();
        done.sort_by(f64::total_cmp);
        std::iter::once((0.0, 0.0)).chain(
            done.into_iter()
                .enumerate()
                .map(|(i, t)| (t, (i + 1) as f64)),
        )
    })
}

const CAUSES: [(FetchCause, &str, RGBColor); 3] = [
    (FetchCause::Demand, "demand", RGBColor(31, 119, 180)),
    (FetchCause::Readahead, "read-ahead", RGBColor(255, 127, 14)),
    (
        FetchCause::Prefetch,
        "prefetch (profile)",
        RGBColor(44, 160, 44),
    ),
];

/// Each fetch of the median run as a bar from its start to its end, in
/// order of start, coloured by cause.
fn fetches(
    area: &Area<'_>,
    case: &CaseReport,
    row: &RowReport,
    max_t: f64,
) -> std::result::Result<(), String> {
    let mut events: Vec<&FetchEvent> = row.fetch_timeline.iter().collect();
    events.sort_by_key(|e| (e.start_us, e.end_us));
    let ms = |us: u64| us as f64 / 1e3;
    let mut chart = panel(
        area,
        format!(
            "{}: {} fetches (median run, {})",
            case.name,
            row.label(),
            events.len()
        ),
    )
    .build_cartesian_2d(
        0f64..max_t * 1.05,
        0f64..(events.len().max(1) as f64) * 1.05,
    )
    .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("ms since imagefs serve opened the image")
        .y_desc("fetch (by start)")
        .draw()
        .map_err(err)?;
    for (cause, name, color) in CAUSES {
        let bars: Vec<PathElement<(f64, f64)>> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.cause == cause)
            .map(|(i, e)| {
                let y = i as f64 + 0.5;
                PathElement::new(
                    vec![
                        (ms(e.start_us), y),
                        (ms(e.end_us).max(ms(e.start_us) + 0.05), y),
                    ],
                    color.stroke_width(2),
                )
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        let n = bars.len();
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(format!("{name}: {n}"))
            .legend(legend(color));
    }
    legend_box(&mut chart)
}

fn draw(
    path: &Path,
    case: &CaseReport,
    sc: Scenario,
    series: &[Line<'_>],
) -> std::result::Result<(), String> {
    // The fetch panels: this scenario's imagefs rows (not the reference).
    let fetch_rows: Vec<&RowReport> = series
        .iter()
        .map(|l| l.2)
        .filter(|r| r.scenario == sc.name() && r.profile.is_some())
        .collect();
    let height = if fetch_rows.is_empty() { 480 } else { 960 };
    let root = BitMapBackend::new(path, (1280, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(480);
    let (left, right) = top.split_horizontally(640);
    cdf(&left, case, sc, series)?;
    completions(&right, case, sc, series)?;
    if !fetch_rows.is_empty() {
        let max_t = fetch_rows
            .iter()
            .flat_map(|r| r.fetch_timeline.iter().map(|e| e.end_us as f64 / 1e3))
            .fold(1.0f64, f64::max);
        let panels = bottom.split_evenly((1, fetch_rows.len()));
        for (area, row) in panels.iter().zip(&fetch_rows) {
            fetches(area, case, row, max_t)?;
        }
    }
    root.present().map_err(err)
}

/// Writes `DIR/<trace>-<scenario>.png` for every trace and scenario that
/// ran; the paths written.
pub fn write_pngs(report: &ColdstartReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    font_ready().map_err(|reason| Error::Plot {
        path: dir.to_path_buf(),
        reason,
    })?;
    let mut out = Vec::new();
    for case in &report.cases {
        for sc in Scenario::ALL.into_iter().chain(Scenario::FLEET) {
            let series = lines(case, sc);
            if series.iter().all(|l| l.2.scenario != sc.name()) {
                continue;
            }
            let path = dir.join(format!("{}-{}.png", case.name, sc.name()));
            draw(&path, case, sc, &series).map_err(|reason| Error::Plot {
                path: path.clone(),
                reason,
            })?;
            out.push(path);
        }
    }
    Ok(out)
}
