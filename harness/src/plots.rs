//! Charts for fits and benchmark results, drawn with plotters into PNG and SVG.
//!
//! * One description ([`Chart`]) renders to both formats, so the two never disagree.
//! * The embedded DejaVu Sans is registered before drawing: no system font is needed.
//! * Log axes are drawn on a linear axis over `log10(value)` with our own ticks (decades, then
//!   1-2-5, then every mantissa, whichever gives at least three labels) and labels like `1e9`,
//!   because plotters' log axis gives no tick at all on ranges inside one decade and prints
//!   `1000000000.0` otherwise.
//! * The legend is drawn by hand in the plot corner holding no data, or below the plot when every
//!   corner holds some.
//! * Files are written to a temporary name beside the target and renamed on success: a failed draw
//!   never leaves a blank or half-drawn image under the real name.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::fit::{fit_power_law, format_sig, AxisNames, Point, PowerLawFit};
use crate::records::StepRecord;

const FONT: &str = "sans-serif";
const TITLE_SIZE: f64 = 22.0;
const AXIS_DESC_SIZE: f64 = 17.0;
const TICK_SIZE: f64 = 14.0;
const LEGEND_SIZE: f64 = 14.0;
const POINT_LABEL_SIZE: f64 = 12.0;

/// Okabe-Ito colours (distinguishable with colour-vision deficiencies), yellow left out because
/// it vanishes on white.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

pub fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Triangle,
    Square,
    Cross,
}

impl Marker {
    /// A different shape per series index, so series stay apart in greyscale print too.
    pub fn nth(i: usize) -> Self {
        [Marker::Circle, Marker::Triangle, Marker::Square, Marker::Cross][i % 4]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Markers only.
    Points(Marker),
    /// Solid line through the points in the given order.
    Line,
    /// Dashed line (used for fits, so they read as models rather than data).
    Dashed,
    /// Solid line with markers.
    LinePoints(Marker),
}

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
    pub color: RGBColor,
    /// Text drawn next to each point (e.g. model names); empty for none.
    pub point_labels: Vec<String>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>, style: Style, color: RGBColor) -> Self {
        Self { label: label.into(), points, style, color, point_labels: Vec::new() }
    }

    pub fn with_point_labels(mut self, labels: Vec<String>) -> Self {
        self.point_labels = labels;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub series: Vec<Series>,
    pub size: (u32, u32),
    /// Labelled x ticks to use instead of the automatic ones (e.g. the resolutions measured).
    pub x_ticks: Option<Vec<f64>>,
}

impl Chart {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            series: Vec::new(),
            size: (900, 640),
            x_ticks: None,
        }
    }

    pub fn scales(mut self, x: Scale, y: Scale) -> Self {
        self.x_scale = x;
        self.y_scale = y;
        self
    }
}

/// Paths written by [`write_chart`].
#[derive(Debug, Clone)]
pub struct PlotFiles {
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Writes `chart` as `<stem>.png` and `<stem>.svg`: the extension of `stem`, if any, is
/// replaced, so pass `name.png` (not a bare name containing dots).
pub fn write_chart(chart: &Chart, stem: &Path) -> Result<PlotFiles> {
    let files = PlotFiles { png: stem.with_extension("png"), svg: stem.with_extension("svg") };
    write_png(chart, &files.png)?;
    write_svg(chart, &files.svg)?;
    Ok(files)
}

pub fn write_png(chart: &Chart, path: &Path) -> Result<()> {
    let plan = plan(chart)?;
    write_atomically(path, |tmp| {
        let root = BitMapBackend::new(tmp, chart.size).into_drawing_area();
        draw(&root, chart, &plan)?;
        root.present().map_err(|e| anyhow::anyhow!("writing PNG: {e}"))
    })
}

pub fn write_svg(chart: &Chart, path: &Path) -> Result<()> {
    let plan = plan(chart)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, chart.size).into_drawing_area();
        draw(&root, chart, &plan)?;
        root.present().map_err(|e| anyhow::anyhow!("rendering SVG: {e}"))?;
    }
    write_atomically(path, |tmp| std::fs::write(tmp, &svg).with_context(|| format!("writing {}", tmp.display())))
}

/// The workspace's one atomic writer (re-exported for the plot and report writers).
pub use genbench_runtime::atomic_file::write_atomically;

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF compiled into the binary; failure would be a packaging bug.
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("embedded DejaVu Sans is not a valid font"));
        plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
            .unwrap_or_else(|_| panic!("embedded DejaVu Sans Bold is not a valid font"));
    });
}

/// Axis in drawing space: `log10(v)` for log scales, `v` otherwise.
#[derive(Debug, Clone)]
struct AxisPlan {
    scale: Scale,
    range: Range<f64>,
    labelled: Vec<(f64, String)>,
    light: Vec<f64>,
}

impl AxisPlan {
    fn to_draw(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => v,
            Scale::Log => v.log10(),
        }
    }

    fn label_for(&self, t: f64) -> String {
        self.labelled.iter().find(|(v, _)| (v - t).abs() <= 1e-9 * (1.0 + t.abs())).map(|(_, s)| s.clone()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegendPlace {
    None,
    UpperRight,
    UpperLeft,
    LowerRight,
    LowerLeft,
    Below,
}

#[derive(Debug, Clone)]
struct Plan {
    x: AxisPlan,
    y: AxisPlan,
    legend: LegendPlace,
    legend_size: (i32, i32),
}

const LEGEND_PAD: i32 = 8;
const LEGEND_SWATCH: i32 = 28;
const LEGEND_INSET: i32 = 10;

fn plan(chart: &Chart) -> Result<Plan> {
    register_fonts();
    if chart.series.iter().all(|s| s.points.is_empty()) {
        bail!("chart `{}` has no data", chart.title);
    }
    for s in &chart.series {
        for &(x, y) in &s.points {
            for (v, scale, axis) in [(x, chart.x_scale, &chart.x_label), (y, chart.y_scale, &chart.y_label)] {
                if !v.is_finite() || (scale == Scale::Log && v <= 0.0) {
                    bail!(
                        "chart `{}`: series `{}` has {axis} = {v}, which a {} axis cannot show",
                        chart.title,
                        s.label,
                        if scale == Scale::Log { "log" } else { "linear" }
                    );
                }
            }
        }
    }
    let mut x = axis_plan(chart.x_scale, chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    if let Some(ticks) = &chart.x_ticks {
        let texts = format_tick_values(ticks);
        x.labelled = ticks.iter().map(|&v| x.to_draw(v)).zip(texts).filter(|(v, _)| x.range.contains(v)).collect();
        x.light.retain(|v| !x.labelled.iter().any(|(l, _)| (l - v).abs() < 1e-9));
    }
    let y = axis_plan(chart.y_scale, chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let mut plan = Plan { x, y, legend: LegendPlace::None, legend_size: (0, 0) };
    let labelled: Vec<&Series> = chart.series.iter().filter(|s| !s.label.is_empty()).collect();
    if labelled.is_empty() {
        return Ok(plan);
    }

    // Measure the legend and find the plot area with a dry layout on a scratch bitmap; the real
    // drawing uses the same layout code, so pixel positions agree.
    let (w, h) = chart.size;
    let mut scratch = vec![0u8; (w * h * 3) as usize];
    let root = BitMapBackend::with_buffer(&mut scratch, (w, h)).into_drawing_area();
    let font: TextStyle = (FONT, LEGEND_SIZE).into();
    let mut text_w = 0;
    for s in &labelled {
        let (tw, _) = root.estimate_text_size(&s.label, &font).map_err(|e| anyhow::anyhow!("{e}"))?;
        text_w = text_w.max(tw as i32);
    }
    let row_h = LEGEND_SIZE as i32 + 6;
    plan.legend_size = (2 * LEGEND_PAD + LEGEND_SWATCH + 8 + text_w, 2 * LEGEND_PAD + row_h * labelled.len() as i32);

    let chart_ctx = build_chart(&root, chart, &plan)?;
    let (px, py) = chart_ctx.plotting_area().get_pixel_range();
    let occupied: Vec<(i32, i32)> = occupied_pixels(chart, &plan, |p| chart_ctx.backend_coord(&p));
    let (lw, lh) = plan.legend_size;
    let fits = lw + 2 * LEGEND_INSET <= px.end - px.start && lh + 2 * LEGEND_INSET <= py.end - py.start;
    plan.legend = LegendPlace::Below;
    if fits {
        for place in [LegendPlace::UpperRight, LegendPlace::UpperLeft, LegendPlace::LowerRight, LegendPlace::LowerLeft] {
            let rect = legend_rect(place, (&px, &py), plan.legend_size);
            // A few pixels of clearance so markers do not touch the box.
            let clear = 6;
            let hit = occupied
                .iter()
                .any(|&(x, y)| x >= rect.0 .0 - clear && x <= rect.1 .0 + clear && y >= rect.0 .1 - clear && y <= rect.1 .1 + clear);
            if !hit {
                plan.legend = place;
                break;
            }
        }
    }
    Ok(plan)
}

/// Pixels covered by markers and lines (sampled every 2 px along segments).
fn occupied_pixels(chart: &Chart, plan: &Plan, to_pixel: impl Fn((f64, f64)) -> (i32, i32)) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for s in &chart.series {
        let pix: Vec<(i32, i32)> = s.points.iter().map(|&(x, y)| to_pixel((plan.x.to_draw(x), plan.y.to_draw(y)))).collect();
        out.extend(&pix);
        if matches!(s.style, Style::Line | Style::Dashed | Style::LinePoints(_)) {
            for pair in pix.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let len = (((b.0 - a.0).pow(2) + (b.1 - a.1).pow(2)) as f64).sqrt();
                let steps = (len / 2.0).ceil().max(1.0) as i32;
                for k in 0..=steps {
                    let t = f64::from(k) / f64::from(steps);
                    out.push((a.0 + ((b.0 - a.0) as f64 * t).round() as i32, a.1 + ((b.1 - a.1) as f64 * t).round() as i32));
                }
            }
        }
        // Point labels extend to the right of their point.
        if !s.point_labels.is_empty() {
            for &(x, y) in &pix {
                for dx in (0..60).step_by(6) {
                    out.push((x + dx, y - 8));
                }
            }
        }
    }
    out
}

type Rect = ((i32, i32), (i32, i32));

fn legend_rect(place: LegendPlace, (px, py): (&Range<i32>, &Range<i32>), (w, h): (i32, i32)) -> Rect {
    let left = px.start + LEGEND_INSET;
    let right = px.end - LEGEND_INSET - w;
    let top = py.start + LEGEND_INSET;
    let bottom = py.end - LEGEND_INSET - h;
    let (x, y) = match place {
        LegendPlace::UpperRight => (right, top),
        LegendPlace::UpperLeft => (left, top),
        LegendPlace::LowerRight => (right, bottom),
        _ => (left, bottom),
    };
    ((x, y), (x + w, y + h))
}

/// A linear axis over drawing-space values with our own tick positions. plotters'
/// `WithKeyPoints<RangedCoordf64>` would do, but it loses the default formatting the mesh
/// needs, so this small `Ranged` stands in.
#[derive(Debug, Clone)]
struct TickedAxis {
    range: Range<f64>,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

impl AxisPlan {
    fn ticked(&self) -> TickedAxis {
        TickedAxis { range: self.range.clone(), bold: self.labelled.iter().map(|(v, _)| *v).collect(), light: self.light.clone() }
    }
}

type PlotCtx<'a, DB> = ChartContext<'a, DB, Cartesian2d<TickedAxis, TickedAxis>>;

fn build_chart<'a, DB: DrawingBackend>(area: &'a DrawingArea<DB, Shift>, chart: &Chart, plan: &Plan) -> Result<PlotCtx<'a, DB>> {
    // Room for the widest y tick label.
    let y_label_w = plan
        .y
        .labelled
        .iter()
        .map(|(_, s)| area.estimate_text_size(s, &TextStyle::from((FONT, TICK_SIZE))).map(|(w, _)| w).unwrap_or(40))
        .max()
        .unwrap_or(40);
    ChartBuilder::on(area)
        .caption(&chart.title, (FONT, TITLE_SIZE))
        .margin(14)
        .margin_right(26)
        .x_label_area_size(52)
        .y_label_area_size(y_label_w + 36)
        .build_cartesian_2d(plan.x.ticked(), plan.y.ticked())
        .map_err(|e| anyhow::anyhow!("laying out chart `{}`: {e}", chart.title))
}

/// Draws one marker on `area` at `at` (data coordinates on a chart, pixels on a plain area).
/// A macro rather than a function: the element types differ per shape and plotters' trait
/// bounds for a generic helper are unwieldy.
macro_rules! draw_marker {
    ($area:expr, $marker:expr, $at:expr, $color:expr) => {{
        let (at, color, r) = ($at, $color, 5);
        match $marker {
            Marker::Circle => $area.draw(&Circle::new(at, r, color.filled())),
            Marker::Triangle => $area.draw(&TriangleMarker::new(at, r + 1, color.filled())),
            Marker::Square => $area.draw(&(EmptyElement::at(at) + Rectangle::new([(-r + 1, -r + 1), (r - 1, r - 1)], color.filled()))),
            Marker::Cross => $area.draw(&Cross::new(at, r, color.stroke_width(2))),
        }
    }};
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart, plan: &Plan) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing chart `{}`: {e}", chart.title);
    root.fill(&WHITE).map_err(err)?;
    let (chart_area, legend_area) = if plan.legend == LegendPlace::Below {
        let (_, h) = root.dim_in_pixel();
        let strip = plan.legend_size.1 + 12;
        let (top, bottom) = root.split_vertically(h as i32 - strip);
        (top, Some(bottom))
    } else {
        (root.clone(), None)
    };
    let mut ctx = build_chart(&chart_area, chart, plan)?;
    let x_fmt = |v: &f64| plan.x.label_for(*v);
    let y_fmt = |v: &f64| plan.y.label_for(*v);
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .axis_desc_style((FONT, AXIS_DESC_SIZE))
        .label_style((FONT, TICK_SIZE))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(RGBColor(200, 200, 200).stroke_width(1))
        .light_line_style(RGBColor(236, 236, 236).stroke_width(1))
        .draw()
        .map_err(err)?;

    for s in &chart.series {
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (plan.x.to_draw(x), plan.y.to_draw(y))).collect();
        let line = s.color.stroke_width(2);
        match s.style {
            Style::Line | Style::LinePoints(_) => {
                ctx.draw_series(LineSeries::new(pts.iter().copied(), line)).map_err(err)?;
            }
            Style::Dashed => {
                ctx.draw_series(DashedLineSeries::new(pts.iter().copied(), 9, 6, line)).map_err(err)?;
            }
            Style::Points(_) => {}
        }
        if let Style::Points(m) | Style::LinePoints(m) = s.style {
            for &p in &pts {
                draw_marker!(ctx.plotting_area(), m, p, s.color).map_err(err)?;
            }
        }
        for (p, label) in pts.iter().zip(&s.point_labels) {
            let text = EmptyElement::at(*p) + Text::new(label.clone(), (7, -16), (FONT, POINT_LABEL_SIZE).into_font().color(&s.color));
            ctx.plotting_area().draw(&text).map_err(err)?;
        }
    }

    let labelled: Vec<&Series> = chart.series.iter().filter(|s| !s.label.is_empty()).collect();
    if labelled.is_empty() || plan.legend == LegendPlace::None {
        return Ok(());
    }
    let ((x0, y0), (x1, y1)) = match &legend_area {
        Some(area) => {
            // Centred in the strip below the plot, in the strip's own coordinates.
            let (w, _) = area.dim_in_pixel();
            let x = (w as i32 - plan.legend_size.0) / 2;
            ((x, 4), (x + plan.legend_size.0, 4 + plan.legend_size.1))
        }
        None => {
            let (px, py) = ctx.plotting_area().get_pixel_range();
            legend_rect(plan.legend, (&px, &py), plan.legend_size)
        }
    };
    let target = legend_area.as_ref().unwrap_or(root);
    target
        .draw(&Rectangle::new([(x0, y0), (x1, y1)], WHITE.mix(0.92).filled()))
        .and_then(|_| target.draw(&Rectangle::new([(x0, y0), (x1, y1)], RGBColor(120, 120, 120).stroke_width(1))))
        .map_err(err)?;
    let row_h = LEGEND_SIZE as i32 + 6;
    for (i, s) in labelled.iter().enumerate() {
        let cy = y0 + LEGEND_PAD + row_h * i as i32 + row_h / 2;
        let sx = x0 + LEGEND_PAD;
        let line = s.color.stroke_width(2);
        match s.style {
            Style::Line | Style::LinePoints(_) => {
                target.draw(&PathElement::new(vec![(sx, cy), (sx + LEGEND_SWATCH, cy)], line)).map_err(err)?;
            }
            Style::Dashed => {
                for seg in [(0, 9), (15, 24)] {
                    target.draw(&PathElement::new(vec![(sx + seg.0, cy), (sx + seg.1, cy)], line)).map_err(err)?;
                }
            }
            Style::Points(_) => {}
        }
        if let Style::Points(m) | Style::LinePoints(m) = s.style {
            draw_marker!(target, m, (sx + LEGEND_SWATCH / 2, cy), s.color).map_err(err)?;
        }
        let style = (FONT, LEGEND_SIZE).into_font().color(&BLACK).pos(text_anchor_left_center());
        target.draw(&Text::new(s.label.clone(), (sx + LEGEND_SWATCH + 8, cy), style)).map_err(err)?;
    }
    Ok(())
}

fn text_anchor_left_center() -> plotters::style::text_anchor::Pos {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    Pos::new(HPos::Left, VPos::Center)
}

fn axis_plan(scale: Scale, values: impl Iterator<Item = f64>) -> AxisPlan {
    let drawn: Vec<f64> = values.map(|v| if scale == Scale::Log { v.log10() } else { v }).collect();
    let lo = drawn.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = drawn.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Pad 6% each side so markers at the extremes are not cut by the frame; a single value
    // gets a window around it.
    let span = if hi > lo {
        hi - lo
    } else if scale == Scale::Log {
        0.5
    } else {
        lo.abs().max(1.0)
    };
    let range = (lo - 0.06 * span)..(hi + 0.06 * span);
    let (labelled, light) = match scale {
        Scale::Log => log_ticks(range.clone()),
        Scale::Linear => linear_ticks(range.clone()),
    };
    AxisPlan { scale, range, labelled, light }
}

/// Ticks for a log axis, given its range in log10 units. Returns labelled ticks and light grid
/// lines, both in log10 units.
fn log_ticks(range: Range<f64>) -> (Vec<(f64, String)>, Vec<f64>) {
    let inside = |v: f64| v >= range.start - 1e-12 && v <= range.end + 1e-12;
    let first_decade = range.start.floor() as i32;
    let last_decade = range.end.ceil() as i32;
    let with_mantissas = |mantissas: &[u32]| -> Vec<f64> {
        (first_decade..=last_decade)
            .flat_map(|e| mantissas.iter().map(move |&m| f64::from(e) + f64::from(m).log10()))
            .filter(|&v| inside(v))
            .collect()
    };
    let decades = range.end - range.start;
    let mut labelled: Vec<f64> = if decades > 8.0 {
        // Too many decades to label each: every k-th.
        let k = (decades / 7.0).ceil() as i32;
        (first_decade..=last_decade).filter(|e| e.rem_euclid(k) == 0).map(f64::from).filter(|&v| inside(v)).collect()
    } else {
        with_mantissas(&[1])
    };
    if labelled.len() < 3 {
        labelled = with_mantissas(&[1, 2, 5]);
    }
    if labelled.len() < 3 {
        labelled = with_mantissas(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
    if labelled.len() < 3 {
        // Less than a factor ~2 of range: nice linear steps in value space.
        let (vals, _) = linear_tick_values(10f64.powf(range.start)..10f64.powf(range.end));
        labelled = vals.into_iter().filter(|v| *v > 0.0).map(f64::log10).collect();
    }
    let light: Vec<f64> = if decades <= 6.0 { with_mantissas(&[1, 2, 3, 4, 5, 6, 7, 8, 9]) } else { with_mantissas(&[1]) }
        .into_iter()
        .filter(|v| !labelled.iter().any(|l| (l - v).abs() < 1e-9))
        .collect();
    let values: Vec<f64> = labelled.iter().map(|v| 10f64.powf(*v)).collect();
    let texts = format_tick_values(&values);
    (labelled.into_iter().zip(texts).collect(), light)
}

fn linear_ticks(range: Range<f64>) -> (Vec<(f64, String)>, Vec<f64>) {
    let (values, light) = linear_tick_values(range);
    let texts = format_tick_values(&values);
    (values.into_iter().zip(texts).collect(), light)
}

/// 1-2-5 steps giving 4 to 10 ticks, and light lines at a fifth of a step.
fn linear_tick_values(range: Range<f64>) -> (Vec<f64>, Vec<f64>) {
    let span = range.end - range.start;
    let raw_step = span / 6.0;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| span / s <= 8.0).unwrap_or(10.0 * magnitude);
    let first = (range.start / step).ceil() as i64;
    let last = (range.end / step).floor() as i64;
    let values: Vec<f64> = (first..=last).map(|k| k as f64 * step).collect();
    let minor = step / 5.0;
    let light = ((range.start / minor).ceil() as i64..=(range.end / minor).floor() as i64)
        .filter(|k| k % 5 != 0)
        .map(|k| k as f64 * minor)
        .collect();
    (values, light)
}

/// Tick texts for one axis in one style: plain decimals when every value lies in [0.01, 1e4),
/// otherwise mantissa-exponent (`1e9`, `2.5e-5`) for all, so one axis never mixes the two.
pub fn format_tick_values(values: &[f64]) -> Vec<String> {
    let plain = values.iter().all(|v| *v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e4));
    values
        .iter()
        .map(|&v| {
            if v == 0.0 {
                "0".to_string()
            } else if plain {
                // Enough decimals to tell neighbouring ticks apart, no trailing zeros.
                let s = format!("{:.6}", (v * 1e6).round() / 1e6);
                let s = s.trim_end_matches('0').trim_end_matches('.');
                if s == "-0" {
                    "0".to_string()
                } else {
                    s.to_string()
                }
            } else {
                exponent_form(v)
            }
        })
        .collect()
}

/// `1e9`, `2.5e-5`: up to three significant digits, no trailing zeros.
fn exponent_form(v: f64) -> String {
    let s = format!("{v:.2e}");
    match s.split_once('e') {
        Some((mantissa, exponent)) => {
            let mantissa = if mantissa.contains('.') { mantissa.trim_end_matches('0').trim_end_matches('.') } else { mantissa };
            format!("{mantissa}e{exponent}")
        }
        None => s,
    }
}

// --------------------------------------------------------------------------------------------
// Charts the harness draws.
// --------------------------------------------------------------------------------------------

/// Log-log scatter of `groups` with fitted lines. Each entry of `fits` is drawn as a dashed line
/// over the x range of its points, labelled with its formula and Pearson r. Fit `i` takes the
/// colour of group `i` when there are as many fits as groups (grouped fits), otherwise black.
pub fn power_law_chart(
    title: &str,
    names: &AxisNames,
    groups: &[(String, Vec<Point>)],
    fits: &[(String, &PowerLawFit, Vec<Point>)],
) -> Chart {
    let mut chart = Chart::new(title, names.x.as_str(), names.y.as_str()).scales(Scale::Log, Scale::Log);
    let per_group_fit = fits.len() == groups.len() && groups.len() > 1;
    for (i, (label, points)) in groups.iter().enumerate() {
        let label = if groups.len() == 1 && label == "all" { "data".to_string() } else { label.clone() };
        chart.series.push(Series::new(label, points.iter().map(|p| (p.x, p.y)).collect(), Style::Points(Marker::nth(i)), palette(i)));
    }
    for (i, (label, fit, points)) in fits.iter().enumerate() {
        let color = if per_group_fit { palette(i) } else { RGBColor(0, 0, 0) };
        let (lo, hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.x), hi.max(p.x)));
        let xs = geometric_grid(lo, hi, 64);
        let line: Vec<(f64, f64)> = xs.into_iter().map(|x| (x, fit.predict(x))).collect();
        let formula = format!("{}, r = {:.4}", fit.formula(&axis_symbol(&names.x), &axis_symbol(&names.y)), fit.pearson_r);
        let text = if label.is_empty() { formula } else { format!("{label}: {formula}") };
        chart.series.push(Series::new(text, line, Style::Dashed, color));
    }
    chart
}

/// [`power_law_chart`] for a compute frontier: every model's log in its colour, the frontier
/// points as black crosses on top, and the fit through the frontier.
pub fn frontier_chart(
    title: &str,
    names: &AxisNames,
    models: &[(String, Vec<Point>)],
    frontier_points: &[Point],
    fit: &PowerLawFit,
) -> Chart {
    let mut chart = power_law_chart(title, names, models, &[("frontier fit".to_string(), fit, frontier_points.to_vec())]);
    let crosses = Series::new(
        "frontier (C_min)",
        frontier_points.iter().map(|p| (p.x, p.y)).collect(),
        Style::Points(Marker::Cross),
        RGBColor(0, 0, 0),
    );
    // Before the fit line, so the legend lists data first.
    let at = chart.series.len() - 1;
    chart.series.insert(at, crosses);
    chart
}

/// Short symbol for a column in formulas: `params` -> N, `compute` -> C, losses -> L.
pub fn axis_symbol(name: &str) -> String {
    match name {
        "params" | "n_params" | "num_params" | "parameters" | "N" => "N".into(),
        "compute" | "flops" | "train_flops" | "compute_flops" | "C" => "C".into(),
        n if n.starts_with("loss") || n.ends_with("loss") => "L".into(),
        n => n.to_string(),
    }
}

fn geometric_grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let (a, b) = (lo.ln(), hi.ln());
    (0..n).map(|i| (a + (b - a) * i as f64 / (n - 1) as f64).exp()).collect()
}

/// One point of a quality-versus-speed chart.
#[derive(Debug, Clone)]
pub struct QualitySpeedPoint {
    pub family: String,
    pub model: String,
    pub time: f64,
    pub fid: f64,
}

/// FID against time per image, one line per family, points labelled by model (VAR Fig. 3 style).
/// Time is on a log axis because families differ by orders of magnitude. `time_label` names the
/// unit (seconds on a device, or a published relative time).
pub fn fid_vs_time_chart(title: &str, time_label: &str, points: &[QualitySpeedPoint]) -> Chart {
    let mut chart = Chart::new(title, time_label, "FID").scales(Scale::Log, Scale::Linear);
    for (i, family) in distinct(points.iter().map(|p| p.family.as_str())).into_iter().enumerate() {
        let mut members: Vec<&QualitySpeedPoint> = points.iter().filter(|p| p.family == family).collect();
        members.sort_by(|a, b| a.time.total_cmp(&b.time));
        chart.series.push(
            Series::new(family, members.iter().map(|p| (p.time, p.fid)).collect(), Style::LinePoints(Marker::nth(i)), palette(i))
                .with_point_labels(members.iter().map(|p| p.model.clone()).collect()),
        );
    }
    chart
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepQuantity {
    Milliseconds,
    Gflop,
}

/// Per-step time or FLOPs, one line per (family, model, batch). Both axes are logarithmic: the
/// step axis because families take 8 to 256 steps (a linear axis squeezes VAR's 10 scales into
/// a sliver), the value axis because VAR's last scales cost ~100x its first. Steps are numbered
/// from 1 for that reason.
pub fn per_step_chart(steps: &[StepRecord], quantity: StepQuantity) -> Chart {
    let (title, y_label) = match quantity {
        StepQuantity::Milliseconds => ("Time per sampling step", "time per step (ms)"),
        StepQuantity::Gflop => ("FLOPs per sampling step", "GFLOP per step"),
    };
    let mut chart = Chart::new(title, "step (first = 1)", y_label).scales(Scale::Log, Scale::Log);
    // Model names identify the family already, so the legend shows model and batch.
    let keys = distinct(steps.iter().map(|s| (s.family.as_str(), s.model.as_str(), s.batch)));
    for (i, (family, model, batch)) in keys.into_iter().enumerate() {
        let mut rows: Vec<&StepRecord> = steps.iter().filter(|s| s.family == family && s.model == model && s.batch == batch).collect();
        rows.sort_by_key(|s| s.step);
        // Sum kinds within a step (e.g. transformer + decoder) so each step is one point.
        let mut points: Vec<(f64, f64)> = Vec::new();
        for r in rows {
            let v = match quantity {
                StepQuantity::Milliseconds => r.ms,
                StepQuantity::Gflop => r.gflop,
            };
            let x = f64::from(r.step) + 1.0;
            match points.last_mut() {
                Some(last) if last.0 == x => last.1 += v,
                _ => points.push((x, v)),
            }
        }
        points.retain(|p| p.1 > 0.0);
        // Markers on hundreds of steps merge into a thick band; a plain line reads better.
        let style = if points.len() <= 40 { Style::LinePoints(Marker::nth(i)) } else { Style::Line };
        chart.series.push(Series::new(format!("{model}, batch {batch}"), points, style, palette(i)));
    }
    chart
}

/// One wall-clock measurement at a resolution.
#[derive(Debug, Clone)]
pub struct ResolutionPoint {
    pub family: String,
    pub resolution: f64,
    pub seconds: f64,
}

/// Wall clock against resolution on log-log axes with a fitted slope per family; families with
/// fewer than three resolutions are drawn without a fit.
pub fn resolution_chart(title: &str, points: &[ResolutionPoint]) -> Chart {
    let mut chart = Chart::new(title, "resolution (px)", "wall clock per image (s)").scales(Scale::Log, Scale::Log);
    for (i, family) in distinct(points.iter().map(|p| p.family.as_str())).into_iter().enumerate() {
        let mut members: Vec<Point> = points
            .iter()
            .filter(|p| p.family == family)
            .enumerate()
            .map(|(k, p)| Point { x: p.resolution, y: p.seconds, line: k + 1 })
            .collect();
        members.sort_by(|a, b| a.x.total_cmp(&b.x));
        chart.series.push(Series::new("", members.iter().map(|p| (p.x, p.y)).collect(), Style::Points(Marker::nth(i)), palette(i)));
        let label = match fit_power_law(&members, &AxisNames::default(), None) {
            Ok(fit) => {
                let xs = geometric_grid(members[0].x, members[members.len() - 1].x, 32);
                chart.series.push(Series::new("", xs.into_iter().map(|x| (x, fit.predict(x))).collect(), Style::Dashed, palette(i)));
                format!("{family}: slope {} (r = {:.4})", format_sig(fit.alpha, 3), fit.pearson_r)
            }
            Err(_) => format!("{family} (too few points for a slope)"),
        };
        // The legend entry carries the family's marker and its fitted slope.
        chart.series.push(Series::new(label, Vec::new(), Style::Points(Marker::nth(i)), palette(i)));
    }
    // Label the resolutions that were measured rather than round numbers.
    let mut measured: Vec<f64> = distinct(points.iter().map(|p| p.resolution.to_bits())).into_iter().map(f64::from_bits).collect();
    measured.sort_by(f64::total_cmp);
    chart.x_ticks = Some(measured);
    chart
}

fn distinct<T: PartialEq + Copy>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for it in items {
        if !out.contains(&it) {
            out.push(it);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_label_decades_and_fall_back_inside_one_decade() {
        let (l, _) = log_ticks(6.0..10.5);
        let texts: Vec<&str> = l.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(texts, ["1e6", "1e7", "1e8", "1e9", "1e10"]);
        // 0.7 .. 2.3: no decade boundary besides 1, so 1-2-5 is not enough either; all mantissas.
        let (l, _) = log_ticks(0.7f64.log10()..2.3f64.log10());
        let texts: Vec<&str> = l.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(texts, ["0.7", "0.8", "0.9", "1", "2"]);
        // A narrow range with no mantissa inside falls back to linear steps.
        let (l, _) = log_ticks(0.72f64.log10()..0.78f64.log10());
        assert!(l.len() >= 3, "{l:?}");
        assert!(l.iter().all(|(v, _)| (0.72..=0.78).contains(&10f64.powf(*v))));
    }

    #[test]
    fn tick_text_never_mixes_styles() {
        assert_eq!(format_tick_values(&[0.5, 1.0, 20.0]), ["0.5", "1", "20"]);
        assert_eq!(format_tick_values(&[1e3, 1e4, 1e5]), ["1e3", "1e4", "1e5"]);
        assert_eq!(format_tick_values(&[2e-5, 5e-5]), ["2e-5", "5e-5"]);
    }

    fn scatter(points: Vec<(f64, f64)>) -> Chart {
        let mut c = Chart::new("t", "x", "y");
        c.series.push(Series::new("data", points, Style::Points(Marker::Circle), palette(0)));
        c
    }

    #[test]
    fn legend_goes_to_an_empty_corner_or_below() {
        // A cluster at the origin and one point at the end of each axis: upper right is free.
        let mut points: Vec<(f64, f64)> = (0..20).map(|i| (f64::from(i) * 0.1, f64::from(i % 5) * 0.1)).collect();
        points.extend([(10.0, 0.0), (0.0, 10.0)]);
        assert_eq!(plan(&scatter(points)).unwrap().legend, LegendPlace::UpperRight);
        // A rising line from corner to corner leaves upper left free.
        let diag = scatter((0..=100).map(|i| (f64::from(i), f64::from(i))).collect());
        let mut diag = diag;
        diag.series[0].style = Style::Line;
        assert_eq!(plan(&diag).unwrap().legend, LegendPlace::UpperLeft);
        // Data everywhere: below the plot.
        let grid = scatter((0..900).map(|i| (f64::from(i % 30), f64::from(i / 30))).collect());
        assert_eq!(plan(&grid).unwrap().legend, LegendPlace::Below);
    }

    #[test]
    fn explicit_x_ticks_replace_automatic_ones() {
        let mut c = scatter(vec![(128.0, 1.0), (256.0, 4.0), (512.0, 16.0)]);
        c.x_scale = Scale::Log;
        c.x_ticks = Some(vec![128.0, 256.0, 512.0]);
        let p = plan(&c).unwrap();
        let texts: Vec<&str> = p.x.labelled.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(texts, ["128", "256", "512"]);
    }

    #[test]
    fn linear_ticks_are_round() {
        let (v, _) = linear_tick_values(0.3..2.9);
        assert_eq!(v, [0.5, 1.0, 1.5, 2.0, 2.5]);
    }
}
