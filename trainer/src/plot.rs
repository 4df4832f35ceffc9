//! `loss.png`: the run's curves as a person reads them at a glance.
//!
//! Top panel: train loss and eval loss against the optimizer step, the y axis fitted to the
//! points of training (steps > 0) so that a loss moving by 1 % fills the panel as well as one
//! moving by 70 %. The evaluation before training (step 0) is drawn when it lies near that
//! range; far above it (a random base starts far higher than anything after step 10) it is
//! marked at the top edge with its value in the legend instead of squashing the curve.
//! Middle panel: the learning rate. Bottom panel, only when the history has any: every other
//! evaluation scalar (`eval_accuracy`, ...), whatever its name.
//!
//! The text is drawn with DejaVu Sans, embedded in the binary (licence in
//! `trainer/assets/fonts/LICENSE-DejaVu.txt`), so the plot never depends on system fonts.

use anyhow::Result;
use plotters::prelude::*;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Evaluation fields that are not a metric of the model (timings) or are drawn elsewhere.
const NOT_EVAL_METRICS: &[&str] = &[
    "eval_loss",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
];

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut ok = true;
    ONCE.call_once(|| {
        ok = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok();
    });
    anyhow::ensure!(ok, "the embedded DejaVu Sans font could not be parsed");
    Ok(())
}

/// `(step, value)` of every history row that has the numeric field `key`.
pub fn series(history: &[Map<String, Value>], key: &str) -> Vec<(i64, f64)> {
    history
        .iter()
        .filter_map(|row| {
            let step = row.get("step")?.as_i64()?;
            let v = row.get(key)?.as_f64()?;
            v.is_finite().then_some((step, v))
        })
        .collect()
}

/// Names of the evaluation scalars to draw in the bottom panel, in first-seen order.
pub fn extra_eval_metrics(history: &[Map<String, Value>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for row in history {
        for (k, v) in row {
            if k.starts_with("eval_")
                && v.is_number()
                && !NOT_EVAL_METRICS.contains(&k.as_str())
                && !out.contains(k)
            {
                out.push(k.clone());
            }
        }
    }
    out
}

/// The y range of the loss panel and whether the step-0 evaluation lies outside it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossRange {
    pub lo: f64,
    pub hi: f64,
    /// The pre-training evaluation, when it is drawn as an off-scale marker.
    pub off_scale_start: Option<f64>,
}

/// Fits the loss axis to the points after step 0; the step-0 evaluation is kept in range
/// when it is at most half the trained range above it (and always when it is the only point).
pub fn loss_range(train: &[(i64, f64)], eval: &[(i64, f64)]) -> Option<LossRange> {
    let all: Vec<(i64, f64)> = train.iter().chain(eval).copied().collect();
    let trained: Vec<f64> = all.iter().filter(|p| p.0 > 0).map(|p| p.1).collect();
    let start = eval.iter().find(|p| p.0 == 0).map(|p| p.1);
    let values: Vec<f64> = if trained.is_empty() {
        all.iter().map(|p| p.1).collect()
    } else {
        trained
    };
    let (mut lo, mut hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    if !lo.is_finite() {
        return None;
    }
    let mut off_scale_start = None;
    if let Some(s) = start {
        let span = (hi - lo).max(1e-3 * hi.abs().max(1e-6));
        if s > hi + 0.5 * span {
            off_scale_start = Some(s);
        } else {
            lo = lo.min(s);
            hi = hi.max(s);
        }
    }
    // A flat curve still gets a visible band around it.
    let span = (hi - lo).max(1e-3 * hi.abs().max(1e-6));
    let pad = 0.08 * span;
    Some(LossRange {
        lo: lo - pad,
        hi: hi + pad,
        off_scale_start,
    })
}

/// Decimals that tell apart ticks about a tenth of `span` apart.
fn decimals(span: f64) -> usize {
    if span <= 0.0 || !span.is_finite() {
        return 3;
    }
    (-(span / 8.0).log10()).ceil().clamp(0.0, 8.0) as usize
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const EVAL_COLOR: RGBColor = RGBColor(214, 39, 40);
const LR_COLOR: RGBColor = RGBColor(44, 160, 44);
const EXTRA_COLORS: [RGBColor; 4] = [
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// The curves of a history, and the image size they need.
struct Figure {
    train: Vec<(i64, f64)>,
    eval: Vec<(i64, f64)>,
    lr: Vec<(i64, f64)>,
    extras: Vec<(String, Vec<(i64, f64)>)>,
    range: LossRange,
    max_x: i64,
}

const WIDTH: u32 = 1000;
const TITLE_H: u32 = 50;
const LOSS_H: u32 = 430;
const LR_H: u32 = 210;
const EXTRA_H: u32 = 230;

impl Figure {
    fn new(history: &[Map<String, Value>]) -> Option<Figure> {
        let train = series(history, "loss");
        let eval = series(history, "eval_loss");
        let range = loss_range(&train, &eval)?;
        let extras = extra_eval_metrics(history)
            .into_iter()
            .map(|k| {
                let s = series(history, &k);
                (k, s)
            })
            .collect();
        let max_x = history
            .iter()
            .filter_map(|r| r.get("step")?.as_i64())
            .max()
            .unwrap_or(1)
            .max(1);
        Some(Figure {
            train,
            eval,
            lr: series(history, "learning_rate"),
            extras,
            range,
            max_x,
        })
    }

    fn size(&self) -> (u32, u32) {
        let lr = if self.lr.is_empty() { 0 } else { LR_H };
        let extra = if self.extras.is_empty() { 0 } else { EXTRA_H };
        (WIDTH, TITLE_H + LOSS_H + lr + extra)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, plotters::coord::Shift>,
        title: &str,
    ) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let area = root.titled(title, (FAMILY, 24))?;
        let (loss_area, rest) = area.split_vertically(LOSS_H);
        draw_loss(&loss_area, &self.train, &self.eval, self.range, self.max_x)?;
        let rest = if self.lr.is_empty() {
            rest
        } else {
            let (lr_area, rest) = rest.split_vertically(LR_H);
            draw_lr(&lr_area, &self.lr, self.max_x)?;
            rest
        };
        if !self.extras.is_empty() {
            draw_extras(&rest, &self.extras, self.max_x)?;
        }
        root.present()?;
        Ok(())
    }
}

/// Draws `loss.png` from the log history rows (as written to `metrics.jsonl`).
pub fn plot_history(path: &Path, history: &[Map<String, Value>], title: &str) -> Result<()> {
    let Some(fig) = Figure::new(history) else {
        return Ok(());
    };
    register_font()?;
    let root = BitMapBackend::new(path, fig.size()).into_drawing_area();
    fig.draw(root, title)
        .map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
}

/// The figure as RGB pixels (row-major, 3 bytes each) with its width and height.
pub fn render_rgb(
    history: &[Map<String, Value>],
    title: &str,
) -> Result<Option<(Vec<u8>, u32, u32)>> {
    let Some(fig) = Figure::new(history) else {
        return Ok(None);
    };
    register_font()?;
    let (w, h) = fig.size();
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        fig.draw(root, title)
            .map_err(|e| anyhow::anyhow!("cannot draw the figure: {e}"))?;
    }
    Ok(Some((buf, w, h)))
}

/// One panel's chart: optimizer steps `0..max_x` across, `lo..hi` up.
type Panel<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordi64, plotters::coord::types::RangedCoordf64>,
>;

/// A panel with the figure's margins, grid and fonts, its y axis described as `y_desc` with
/// `y_labels` ticks (plotters' default where `None`) formatted by `y_fmt`.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    max_x: i64,
    (lo, hi): (f64, f64),
    y_desc: &str,
    y_labels: Option<usize>,
    y_fmt: &dyn Fn(&f64) -> String,
) -> std::result::Result<Panel<'a, DB>, Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(30)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0i64..max_x, lo..hi)?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .x_desc("optimizer step")
        .y_desc(y_desc)
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .y_label_formatter(y_fmt)
        .x_label_formatter(&|x| x.to_string());
    if let Some(n) = y_labels {
        mesh.y_labels(n);
    }
    mesh.draw()?;
    Ok(chart)
}

/// The panel's legend box at `position`.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Panel<'a, DB>,
    position: SeriesLabelPosition,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font((FAMILY, 15))
        .draw()?;
    Ok(())
}

fn draw_loss<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    train: &[(i64, f64)],
    eval: &[(i64, f64)],
    range: LossRange,
    max_x: i64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let dec = decimals(range.hi - range.lo);
    let mut chart = panel(area, max_x, (range.lo, range.hi), "loss", None, &|y| {
        format!("{y:.dec$}")
    })?;
    if !train.is_empty() {
        chart
            .draw_series(LineSeries::new(
                train.iter().copied(),
                TRAIN_COLOR.stroke_width(2),
            ))?
            .label("train loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 22, y)], TRAIN_COLOR.stroke_width(2)));
    }
    let shown: Vec<(i64, f64)> = eval
        .iter()
        .copied()
        .filter(|p| !(p.0 == 0 && range.off_scale_start.is_some()))
        .collect();
    if !shown.is_empty() {
        chart
            .draw_series(LineSeries::new(
                shown.iter().copied(),
                EVAL_COLOR.stroke_width(2),
            ))?
            .label("eval loss")
            .legend(|(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (22, 0)], EVAL_COLOR.stroke_width(2))
                    + Circle::new((11, 0), 4, EVAL_COLOR.filled())
            });
        chart.draw_series(
            shown
                .iter()
                .map(|&p| Circle::new(p, 4, EVAL_COLOR.filled())),
        )?;
    }
    if let Some(s) = range.off_scale_start {
        // A downward triangle on the top edge at step 0: the value is above the panel.
        let top = range.hi - 0.03 * (range.hi - range.lo);
        chart
            .draw_series(std::iter::once(TriangleMarker::new(
                (0i64, top),
                7,
                EVAL_COLOR.filled(),
            )))?
            .label(format!("eval before training: {s:.4} (above the axis)"))
            .legend(|(x, y)| TriangleMarker::new((x + 11, y), 6, EVAL_COLOR.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn draw_lr<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    lr: &[(i64, f64)],
    max_x: i64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let hi = lr.iter().map(|p| p.1).fold(0.0, f64::max);
    let hi = if hi > 0.0 { hi * 1.08 } else { 1.0 };
    let mut chart = panel(area, max_x, (0.0, hi), "learning rate", Some(5), &|y| {
        format!("{y:.1e}")
    })?;
    chart
        .draw_series(LineSeries::new(
            lr.iter().copied(),
            LR_COLOR.stroke_width(2),
        ))?
        .label("learning rate (as logged)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 22, y)], LR_COLOR.stroke_width(2)));
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn draw_extras<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    extras: &[(String, Vec<(i64, f64)>)],
    max_x: i64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (mut lo, mut hi) = extras
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
    if !lo.is_finite() {
        return Ok(());
    }
    // Fractions (accuracy) read best on their whole scale.
    if lo >= 0.0 && hi <= 1.0 {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = 0.06 * (hi - lo).max(1e-6);
    let (lo, hi) = (lo - pad, hi + pad);
    let dec = decimals(hi - lo);
    let mut chart = panel(area, max_x, (lo, hi), "eval metric", None, &|y| {
        format!("{y:.dec$}")
    })?;
    for (i, (name, s)) in extras.iter().enumerate() {
        let c = EXTRA_COLORS[i % EXTRA_COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))?
            .label(name.replace('_', " "))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], c.stroke_width(2)));
        chart.draw_series(s.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_eval_far_above_the_trained_range_is_off_scale() {
        let train = [(10, 2.10), (20, 2.05), (30, 2.02)];
        let eval = [(0, 6.9), (10, 2.2), (30, 2.1)];
        let r = loss_range(&train, &eval).unwrap();
        assert_eq!(r.off_scale_start, Some(6.9));
        assert!(
            r.lo < 2.02 && r.lo > 1.9 && r.hi > 2.2 && r.hi < 2.3,
            "{r:?}"
        );
        // Near the trained range it stays on the axis.
        let eval = [(0, 2.25), (10, 2.2)];
        let r = loss_range(&train, &eval).unwrap();
        assert_eq!(r.off_scale_start, None);
        assert!(r.hi > 2.25);
    }

    fn history(points: &[(i64, Option<f64>, Option<f64>)]) -> Vec<Map<String, Value>> {
        points
            .iter()
            .map(|&(step, loss, eval)| {
                let mut m = Map::new();
                m.insert("step".into(), step.into());
                if let Some(l) = loss {
                    m.insert("loss".into(), l.into());
                    m.insert("learning_rate".into(), (1e-4 * (100 - step) as f64).into());
                }
                if let Some(l) = eval {
                    m.insert("eval_loss".into(), l.into());
                }
                m
            })
            .collect()
    }

    /// Rows (in the loss panel) holding a pixel of the train-loss colour.
    fn train_rows(rgb: &[u8], w: u32) -> (usize, usize) {
        let mut rows = (TITLE_H as usize..(TITLE_H + LOSS_H) as usize).filter(|&y| {
            (0..w as usize).any(|x| {
                let i = (y * w as usize + x) * 3;
                rgb[i..i + 3] == [TRAIN_COLOR.0, TRAIN_COLOR.1, TRAIN_COLOR.2]
            })
        });
        let first = rows.next().unwrap_or(0);
        let last = rows.next_back().unwrap_or(first);
        (first, last)
    }

    #[test]
    fn a_loss_moving_by_one_percent_or_seventy_fills_the_panel() {
        // A 1 % move (2.000 → 1.980), and a 70 % one (3.0 → 0.9) with a pre-training
        // evaluation far above both.
        let small: Vec<_> = (1..=10)
            .map(|i| (i * 10, Some(2.0 - 0.002 * i as f64), None))
            .collect();
        let mut large: Vec<_> = (1..=10)
            .map(|i| (i * 10, Some(3.0 - 0.21 * i as f64), None))
            .collect();
        large.insert(0, (0, None, Some(11.0)));
        for points in [small, large] {
            let (rgb, w, h) = render_rgb(&history(&points), "t").unwrap().unwrap();
            assert_eq!((w, h), (WIDTH, TITLE_H + LOSS_H + LR_H));
            let (top, bottom) = train_rows(&rgb, w);
            // The plotting area is the panel less margins and the x label area (~70 px).
            assert!(
                bottom - top > (LOSS_H as usize) * 6 / 10,
                "the curve spans rows {top}..{bottom} of a {LOSS_H}-row panel"
            );
        }
    }

    #[test]
    fn tick_decimals_follow_the_span() {
        assert_eq!(decimals(2.5), 1);
        assert_eq!(decimals(0.03), 3);
        assert_eq!(decimals(400.0), 0);
    }
}
