//! PNGs of a [`ColdstartReport`]: for each trace and scenario, the request
//! latency CDF (every request of every run) and the timeline of the median
//! run (requests completed against time since VM creation), one line per
//! profile mode, with dedicated-warm as the reference.
//!
//! Drawn with `plotters`' bitmap backend; text uses a TrueType font loaded
//! at run time (`$VMM_SHIM_FONT`, default DejaVu Sans from Debian's
//! `fonts-dejavu-core`), so nothing needs fontconfig or freetype.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
fn lines(case: &CaseReport, sc: Scenario) -> Vec<(String, RGBColor, &RowReport)> {
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

fn draw(path: &Path, case: &CaseReport, sc: Scenario) -> std::result::Result<(), String> {
    let series = lines(case, sc);
    let root = BitMapBackend::new(path, (1280, 480)).into_drawing_area();
    let e = |x: DrawingAreaErrorKind<_>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (left, right) = root.split_horizontally(640);

    let max_lat = series
        .iter()
        .filter_map(|s| s.2.latencies_ms.last().copied())
        .fold(1.0f64, f64::max);
    let min_lat = series
        .iter()
        .filter_map(|s| s.2.latencies_ms.first().copied())
        .fold(max_lat, f64::min)
        .max(0.001);
    let mut cdf = ChartBuilder::on(&left)
        .caption(
            format!("{}: {} request latency CDF", case.name, sc.name()),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min_lat * 0.8..max_lat * 1.25).log_scale(), 0f64..1.0)
        .map_err(e)?;
    cdf.configure_mesh()
        .x_desc("latency, ms (log)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(e)?;
    for (label, color, row) in &series {
        let n = row.latencies_ms.len().max(1) as f64;
        let pts = row
            .latencies_ms
            .iter()
            .enumerate()
            .map(|(i, &l)| (l.max(min_lat), (i + 1) as f64 / n));
        let color = *color;
        cdf.draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(e)?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;

    let max_t = series
        .iter()
        .filter_map(|s| s.2.timeline_ms.iter().map(|r| r[1]).reduce(f64::max))
        .fold(1.0f64, f64::max);
    let max_n = series
        .iter()
        .map(|s| s.2.timeline_ms.len())
        .max()
        .unwrap_or(1) as f64;
    let mut tl = ChartBuilder::on(&right)
        .caption(
            format!("{}: {} timeline (median run)", case.name, sc.name()),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_t * 1.05, 0f64..max_n * 1.05)
        .map_err(e)?;
    tl.configure_mesh()
        .x_desc("ms since VM creation")
        .y_desc("requests completed")
        .draw()
        .map_err(e)?;
    for (label, color, row) in &series {
        let mut done: Vec<f64> = row.timeline_ms.iter().map(|r| r[1]).collect();
        done.sort_by(f64::total_cmp);
        let pts = std::iter::once((0.0, 0.0))
            .chain(done.iter().enumerate().map(|(i, &t)| (t, (i + 1) as f64)));
        let color = *color;
        tl.draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(e)?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    tl.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
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
        for sc in Scenario::ALL {
            if lines(case, sc).iter().all(|l| l.2.scenario != sc.name()) {
                continue;
            }
            let path = dir.join(format!("{}-{}.png", case.name, sc.name()));
            draw(&path, case, sc).map_err(|reason| Error::Plot {
                path: path.clone(),
                reason,
            })?;
            out.push(path);
        }
    }
    Ok(out)
}
