//! PNG line charts (loss curves, µP coordinate checks) drawn with `plotters`. The font is
//! bundled (DejaVu Sans, `assets/`), so charts render the same on machines without fonts.

use image::ImageEncoder;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// One named line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_x: bool,
    pub log_y: bool,
    /// Each series as dots (one point per series: a scatter plot) instead of a line.
    pub scatter: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    path: String,
    reason: String,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"))
            .unwrap_or_else(|_| panic!("the bundled font is a valid TrueType file"));
    });
}

/// Draws `series` into a PNG at `path`, written atomically (see [`crate::atomic`]).
pub fn draw(path: &Path, chart: &Chart, series: &[Series]) -> Result<(), PlotError> {
    let fail = |reason: String| PlotError { path: path.display().to_string(), reason };
    register_font();
    let finite: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.log_x || *x > 0.0) && (!chart.log_y || *y > 0.0))
        .collect();
    if finite.is_empty() {
        return Err(fail("no finite points to plot".into()));
    }
    let bounds = |f: fn(&(f64, f64)) -> f64, log: bool| {
        let (lo, hi) = finite.iter().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if log {
            (lo / 1.2, hi * 1.2)
        } else {
            let pad = ((hi - lo) * 0.05).max(1e-9);
            (lo - pad, hi + pad)
        }
    };
    let (x0, x1) = bounds(|p| p.0, chart.log_x);
    let (y0, y1) = bounds(|p| p.1, chart.log_y);
    const SIZE: (u32, u32) = (900, 560);
    let mut pixels = vec![0u8; 3 * SIZE.0 as usize * SIZE.1 as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let mut builder = ChartBuilder::on(&root);
        builder.caption(chart.title, ("sans-serif", 24)).margin(16).x_label_area_size(44).y_label_area_size(70);
        macro_rules! render {
            ($ctx:expr) => {{
                let mut ctx = $ctx.map_err(|e| fail(e.to_string()))?;
                ctx.configure_mesh()
                    .x_desc(chart.x_label)
                    .y_desc(chart.y_label)
                    .draw()
                    .map_err(|e| fail(e.to_string()))?;
                for (i, s) in series.iter().enumerate() {
                    let color = Palette99::pick(i).to_rgba();
                    let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| finite.contains(p)).collect();
                    if chart.scatter {
                        ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 6, color.filled())))
                            .map_err(|e| fail(e.to_string()))?
                            .label(s.name.clone())
                            .legend(move |(x, y)| Circle::new((x + 9, y), 5, color.filled()));
                    } else {
                        ctx.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                            .map_err(|e| fail(e.to_string()))?
                            .label(s.name.clone())
                            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                    }
                }
                ctx.configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| fail(e.to_string()))?;
            }};
        }
        match (chart.log_x, chart.log_y) {
            (false, false) => render!(builder.build_cartesian_2d(x0..x1, y0..y1)),
            (true, false) => render!(builder.build_cartesian_2d((x0..x1).log_scale(), y0..y1)),
            (false, true) => render!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale())),
            (true, true) => render!(builder.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())),
        }
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, SIZE.0, SIZE.1, image::ColorType::Rgb8)
        .map_err(|e| fail(e.to_string()))?;
    crate::atomic::write(path, &png).map_err(|e| fail(e.to_string()))
}
