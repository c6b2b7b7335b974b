//! Training curves: `metrics.jsonl` of one or more runs → one PNG (plotters, bitmap backend).
//!
//! Eight panels share the step axis: reward mean with a ±std band, format-valid rate, searches
//! per episode, response length (policy tokens), KL to the reference, policy entropy,
//! distinct answers per question (how much a group can tell right from wrong) and episodes
//! per 1,000 policy tokens sampled (what the rollout budget buys: chain samples or tree leaves).
//! Each run gets one colour; every figure is drawn raw (thin) and as a trailing moving
//! average over `smooth` steps (thick), since an 8-episode step is noisy. Steps where the
//! collapse guard tripped get a vertical mark. Missing figures (`null` KL or entropy on steps
//! that ran no forward pass) are skipped, not drawn as zero.
//!
//! The font (DejaVu Sans) is compiled in from the `dejavu` crate, so rendering needs no
//! system fonts. The PNG is written to a temporary file and renamed into place.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

/// Errors from reading metrics or drawing.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A metrics line is not a JSON object.
    #[error("{path}:{line}: not a metrics JSON object: {reason}")]
    Json {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// A metrics file holds no steps.
    #[error("{0}: no metrics lines")]
    Empty(PathBuf),
    /// plotters failed.
    #[error("drawing {path}: {reason}")]
    Draw {
        /// The PNG being drawn.
        path: PathBuf,
        /// plotters' message.
        reason: String,
    },
}

/// One run's metrics, as read from its `metrics.jsonl`.
#[derive(Debug, Clone)]
pub struct RunMetrics {
    /// Legend label (the run directory's name).
    pub label: String,
    /// One JSON object per logged step, in file order.
    pub steps: Vec<Value>,
}

impl RunMetrics {
    /// Reads `run/metrics.jsonl` (or `run` itself when it is a file).
    ///
    /// # Errors
    /// [`PlotError::Io`] when unreadable, [`PlotError::Json`] naming the file and line of a
    /// malformed line, [`PlotError::Empty`] when there is no line.
    pub fn read(run: &Path) -> Result<Self, PlotError> {
        let path = if run.is_dir() {
            run.join("metrics.jsonl")
        } else {
            run.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|source| PlotError::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        let mut steps = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| PlotError::Json {
                path: path.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            if v.get("step").and_then(Value::as_u64).is_none() {
                return Err(PlotError::Json {
                    path: path.clone(),
                    line: i + 1,
                    reason: "no integer \"step\" field".into(),
                });
            }
            steps.push(v);
        }
        if steps.is_empty() {
            return Err(PlotError::Empty(path));
        }
        let label = run
            .file_name()
            .or_else(|| run.parent().and_then(Path::file_name))
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| run.display().to_string());
        Ok(Self { label, steps })
    }

    /// `(step, value)` of a numeric field, skipping steps where it is missing or `null`. The
    /// x value is `run_step` when the line has one (a curriculum's steps count on across
    /// phases), else `step`.
    pub fn series(&self, field: &str) -> Vec<(f64, f64)> {
        self.steps
            .iter()
            .filter_map(|v| {
                let s = x_of(v)?;
                let y = v.get(field)?.as_f64()?;
                y.is_finite().then_some((s, y))
            })
            .collect()
    }

    /// Steps at which the collapse guard tripped.
    pub fn guard_steps(&self) -> Vec<f64> {
        self.steps
            .iter()
            .filter(|v| v.get("guard").is_some_and(|g| !g.is_null()))
            .filter_map(x_of)
            .collect()
    }
}

/// The x value of a metrics line: `run_step` when present, else `step`.
fn x_of(v: &Value) -> Option<f64> {
    v.get("run_step")
        .and_then(Value::as_f64)
        .or_else(|| v.get("step")?.as_f64())
}

/// Trailing moving average over `window` points (`window` ≤ 1 returns the input).
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    if window <= 1 {
        return points.to_vec();
    }
    (0..points.len())
        .map(|i| {
            let lo = (i + 1).saturating_sub(window);
            let w = &points[lo..=i];
            (
                points[i].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect()
}

const PANELS: [(&str, &str); 8] = [
    ("reward_mean", "reward (mean ± std)"),
    ("format_ok_rate", "format-valid rate"),
    ("searches_mean", "searches per episode"),
    ("response_tokens_mean", "response length (tokens)"),
    ("kl", "KL to reference (nats/token)"),
    ("entropy", "policy entropy (nats/token)"),
    ("distinct_answers", "distinct answers per question"),
    ("episodes_per_1k_tokens", "episodes per 1,000 policy tokens"),
];

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws the eight panels for `runs` into a `width`×`height` PNG at `out`, smoothing with a
/// `smooth`-step moving average.
///
/// # Errors
/// [`PlotError::Draw`] when plotters fails, [`PlotError::Io`] when the file cannot be moved
/// into place.
pub fn render(
    runs: &[RunMetrics],
    out: &Path,
    smooth: usize,
    (width, height): (u32, u32),
) -> Result<(), PlotError> {
    // Registering twice is harmless (the second replaces the first).
    let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    // plotters picks the image format from the extension, so the temporary name keeps it.
    let tmp = crate::atomic::temp_path(out).with_extension("png");
    let draw_err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: out.to_path_buf(),
        reason: e.to_string(),
    };
    {
        let root = BitMapBackend::new(&tmp, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let panels = root.split_evenly((2, 4));
        let max_step = runs
            .iter()
            .flat_map(|r| r.series("reward_mean"))
            .map(|p| p.0)
            .fold(1.0, f64::max);
        for (area, (field, title)) in panels.iter().zip(PANELS) {
            let series: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| r.series(field)).collect();
            let bands: Vec<Vec<(f64, f64, f64)>> = runs
                .iter()
                .map(|r| {
                    if field != "reward_mean" {
                        return Vec::new();
                    }
                    let std = r.series("reward_std");
                    r.series(field)
                        .iter()
                        .zip(&std)
                        .map(|(m, s)| (m.0, m.1 - s.1, m.1 + s.1))
                        .collect()
                })
                .collect();
            let ys = series
                .iter()
                .flatten()
                .map(|p| p.1)
                .chain(bands.iter().flatten().flat_map(|b| [b.1, b.2]));
            let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                (a.min(y), b.max(y))
            });
            let (lo, hi) = if lo.is_finite() {
                let pad = ((hi - lo) * 0.05).max(1e-3);
                (lo - pad, hi + pad)
            } else {
                (0.0, 1.0)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(52)
                .build_cartesian_2d(0.0..max_step + 0.5, lo..hi)
                .map_err(|e| draw_err(&e))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .label_style(("sans-serif", 12))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| draw_err(&e))?;
            for (ri, run) in runs.iter().enumerate() {
                let c = COLOURS[ri % COLOURS.len()];
                for &s in &run.guard_steps() {
                    chart
                        .draw_series(LineSeries::new(
                            [(s, lo), (s, hi)],
                            c.mix(0.6).stroke_width(1),
                        ))
                        .map_err(|e| draw_err(&e))?;
                }
                if !bands[ri].is_empty() {
                    let mut poly: Vec<(f64, f64)> = bands[ri].iter().map(|b| (b.0, b.2)).collect();
                    poly.extend(bands[ri].iter().rev().map(|b| (b.0, b.1)));
                    chart
                        .draw_series(std::iter::once(Polygon::new(poly, c.mix(0.12).filled())))
                        .map_err(|e| draw_err(&e))?;
                }
                chart
                    .draw_series(LineSeries::new(
                        series[ri].iter().copied(),
                        c.mix(0.35).stroke_width(1),
                    ))
                    .map_err(|e| draw_err(&e))?;
                // Markers too, so a figure logged on a single step (KL, entropy) is visible.
                chart
                    .draw_series(
                        series[ri]
                            .iter()
                            .map(|&p| Circle::new(p, 2, c.mix(0.6).filled())),
                    )
                    .map_err(|e| draw_err(&e))?;
                let drawn = chart
                    .draw_series(LineSeries::new(
                        moving_average(&series[ri], smooth),
                        c.stroke_width(2),
                    ))
                    .map_err(|e| draw_err(&e))?;
                if runs.len() > 1 {
                    drawn.label(run.label.clone()).legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2))
                    });
                }
            }
            if runs.len() > 1 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK.mix(0.3))
                    .label_font(("sans-serif", 12))
                    .draw()
                    .map_err(|e| draw_err(&e))?;
            }
        }
        root.present().map_err(|e| draw_err(&e))?;
    }
    std::fs::rename(&tmp, out).map_err(|source| PlotError::Io {
        action: "renaming into place",
        path: out.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_trailing() {
        let p = [(1.0, 0.0), (2.0, 2.0), (3.0, 4.0), (4.0, 0.0)];
        let m = moving_average(&p, 2);
        assert_eq!(m, vec![(1.0, 0.0), (2.0, 1.0), (3.0, 3.0), (4.0, 2.0)]);
        assert_eq!(moving_average(&p, 1), p.to_vec());
    }
}
