//! The plots, as SVG: plotters' SVG backend writes text as `<text>` elements, so no font files
//! are read and the plots look the same wherever they are made.

use std::path::Path;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Latency by percentile, one line per series: x is the percentile on HdrHistogram's scale
/// (1/(1-p), log: 90%, 99%, 99.9% evenly apart), y the latency in microseconds (log).
pub fn latency(path: &Path, title: &str, series: &[(String, Histogram<u64>)]) -> Result<()> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, histogram)| {
            let points = histogram
                .iter_quantiles(5)
                .map(|step| (step.quantile_iterated_to(), step.value_iterated_to()))
                .filter(|(quantile, _)| *quantile < 1.0)
                .map(|(quantile, value)| (1.0 / (1.0 - quantile), (value.max(1) as f64) / 1e3))
                .collect();
            (name.as_str(), points)
        })
        .collect();
    let points = lines.iter().flat_map(|(_, points)| points.iter());
    let x_max = points.clone().map(|point| point.0).fold(10.0, f64::max);
    let y_min = points.clone().map(|point| point.1).fold(f64::MAX, f64::min).min(1e6);
    let y_max = points.map(|point| point.1).fold(0.0, f64::max).max(y_min * 10.0);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d((1.0..x_max * 1.5).log_scale(), (y_min / 1.5..y_max * 1.5).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(plot_error)?;
    for (index, (name, points)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        // Every line climbs to the right, so the lower right is where the plot is empty.
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

/// `1/(1-p)` as a percentile: 10 is "90%", 1000 is "99.9%".
fn percentile_label(inverse: f64) -> String {
    let percentile = 100.0 * (1.0 - 1.0 / inverse);
    let text = format!("{percentile:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// One bar of a throughput chart: the median across runs, and the runs' spread.
#[derive(Debug)]
pub struct Bar {
    pub name: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Throughput, one horizontal bar per series (millions per second), with a whisker from the
/// slowest run to the fastest.
pub fn throughput(path: &Path, title: &str, bars: &[Bar]) -> Result<()> {
    let count = bars.len();
    let x_max = bars.iter().map(|bar| bar.max).fold(0.0, f64::max).max(1.0) / 1e6 * 1.1;
    let height = 110 + 30 * count as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(360)
        // The first bar at the top: segments count up the y axis.
        .build_cartesian_2d(0.0..x_max, (0..count.max(1) - 1).into_segmented())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(count)
        .y_label_formatter(&|value| match value {
            SegmentValue::CenterOf(index) => {
                bars.get(count - 1 - index).map(|bar| bar.name.clone()).unwrap_or_default()
            }
            _ => String::new(),
        })
        .x_desc("millions per second (median of the runs; whisker: slowest to fastest)")
        .draw()
        .map_err(plot_error)?;
    let color = Palette99::pick(4).to_rgba();
    chart
        .draw_series(bars.iter().rev().enumerate().map(|(index, bar)| {
            let mut rectangle = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(index)),
                    (bar.median / 1e6, SegmentValue::Exact(index + 1)),
                ],
                color.filled(),
            );
            rectangle.set_margin(4, 4, 0, 0);
            rectangle
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().rev().enumerate().map(|(index, bar)| {
            PathElement::new(
                vec![
                    (bar.min / 1e6, SegmentValue::CenterOf(index)),
                    (bar.max / 1e6, SegmentValue::CenterOf(index)),
                ],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

/// plotters' errors, which carry the backend's error type, as `anyhow`'s.
fn plot_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow!("drawing a plot: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_labelled_as_people_say_them() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1_000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }

    #[test]
    fn the_plots_are_svg_files_naming_every_series() {
        let folder = tempfile::tempdir().unwrap();
        let mut fast = Histogram::<u64>::new(3).unwrap();
        let mut slow = Histogram::<u64>::new(3).unwrap();
        for value in 1..1_000 {
            fast.record(value).unwrap();
            slow.record(value * 1_000).unwrap();
        }
        let series = vec![("keel fast".to_owned(), fast), ("peer slow".to_owned(), slow)];
        let path = folder.path().join("latency.svg");
        latency(&path, "latency", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("keel fast") && svg.contains("peer slow"));
        assert!(svg.contains("99.9%"), "the percentile axis is labelled");

        let bars = [
            Bar { name: "keel".into(), median: 4e6, min: 3e6, max: 5e6 },
            Bar { name: "sqlite".into(), median: 1e6, min: 1e6, max: 1e6 },
        ];
        let path = folder.path().join("throughput.svg");
        throughput(&path, "throughput", &bars).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        // The SVG backend writes each label on a line of its own inside its `<text>`.
        assert!(svg.contains("\nkeel\n") && svg.contains("\nsqlite\n"), "{svg}");
    }
}
