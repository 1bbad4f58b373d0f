//! Measurements, their summaries across runs, the table and the JSON lines.

use std::collections::BTreeMap;

use std::sync::Arc;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles of one run, in nanoseconds, and the histogram they came from (for the
/// `.hgrm` files and the plots).
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub p9999_ns: u64,
    pub max_ns: u64,
    #[serde(skip)]
    pub histogram: Arc<Histogram<u64>>,
}

impl Latency {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        Self {
            p50_ns: histogram.value_at_quantile(0.50),
            p99_ns: histogram.value_at_quantile(0.99),
            p999_ns: histogram.value_at_quantile(0.999),
            p9999_ns: histogram.value_at_quantile(0.9999),
            max_ns: histogram.max(),
            histogram: Arc::new(histogram.clone()),
        }
    }
}

/// Writes `histogram` (nanoseconds) as HdrHistogram's percentile distribution text, the
/// `.hgrm` format its plotter reads, in microseconds: the value at each percentile step (five
/// ticks per halving of the distance to 100%), the count up to it, and the summary lines.
pub fn write_hgrm(
    histogram: &Histogram<u64>,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    const SCALE: f64 = 1_000.0;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    writeln!(out)?;
    let mut total = 0u64;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let value = step.value_iterated_to() as f64 / SCALE;
        if quantile < 1.0 {
            writeln!(
                out,
                "{value:>12.3} {quantile:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value:>12.3} {quantile:>14.12} {total:>10}")?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean() / SCALE,
        histogram.stdev() / SCALE
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64 / SCALE,
        histogram.len()
    )?;
    writeln!(out, "#[Unit    = microseconds]")
}

/// One run of one system in one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub scenario: &'static str,
    pub system: &'static str,
    /// The wait strategy and publish mode (and topology where it varies).
    pub variant: String,
    pub run: usize,
    pub events: u64,
    pub ops_per_sec: f64,
    #[serde(flatten)]
    pub latency: Option<Latency>,
    /// The inter-core round trip measured just before this run.
    pub probe_ns: f64,
    /// Figures of this run that are neither a throughput nor a latency (seconds to ready, a
    /// snapshot's bytes), by name.
    #[serde(flatten)]
    pub details: BTreeMap<&'static str, f64>,
}

/// The median, minimum and maximum of one series across runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        assert!(!values.is_empty(), "a spread needs at least one value");
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Self { median, min: sorted[0], max: sorted[sorted.len() - 1] }
    }
}

/// All runs of one (scenario, system, variant).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    pub scenario: &'static str,
    pub system: &'static str,
    pub variant: String,
    pub runs: usize,
    /// The median across runs; `ops_per_sec_min` and `_max` give the spread.
    pub ops_per_sec: f64,
    pub ops_per_sec_min: f64,
    pub ops_per_sec_max: f64,
    /// Medians across runs of each run's percentile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ns_min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ns_max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p9999_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ns: Option<f64>,
    /// The median probe of the runs.
    pub probe_ns: f64,
    /// The median of each of the runs' other figures.
    #[serde(flatten)]
    pub details: BTreeMap<&'static str, f64>,
}

/// Groups measurements by (scenario, system, variant), in first-seen order.
pub fn summarize(measurements: &[Measurement]) -> Vec<Summary> {
    let mut order: Vec<(&'static str, &'static str, String)> = Vec::new();
    let mut groups: BTreeMap<(&'static str, &'static str, String), Vec<&Measurement>> =
        BTreeMap::new();
    for measurement in measurements {
        let key = (measurement.scenario, measurement.system, measurement.variant.clone());
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(measurement);
    }
    order
        .into_iter()
        .map(|key| {
            let runs = &groups[&key];
            let spread = |field: fn(&Measurement) -> f64| {
                Spread::of(&runs.iter().map(|run| field(run)).collect::<Vec<_>>())
            };
            let throughput = spread(|run| run.ops_per_sec);
            let has_latency = runs.iter().all(|run| run.latency.is_some());
            let latency = |field: fn(&Latency) -> u64| {
                has_latency.then(|| {
                    Spread::of(
                        &runs
                            .iter()
                            .map(|run| field(run.latency.as_ref().expect("checked above")) as f64)
                            .collect::<Vec<_>>(),
                    )
                })
            };
            let p50 = latency(|latency| latency.p50_ns);
            Summary {
                kind: "summary",
                scenario: key.0,
                system: key.1,
                variant: key.2.clone(),
                runs: runs.len(),
                ops_per_sec: throughput.median,
                ops_per_sec_min: throughput.min,
                ops_per_sec_max: throughput.max,
                p50_ns: p50.map(|spread| spread.median),
                p50_ns_min: p50.map(|spread| spread.min),
                p50_ns_max: p50.map(|spread| spread.max),
                p99_ns: latency(|latency| latency.p99_ns).map(|spread| spread.median),
                p999_ns: latency(|latency| latency.p999_ns).map(|spread| spread.median),
                p9999_ns: latency(|latency| latency.p9999_ns).map(|spread| spread.median),
                max_ns: latency(|latency| latency.max_ns).map(|spread| spread.median),
                probe_ns: spread(|run| run.probe_ns).median,
                details: runs[0]
                    .details
                    .keys()
                    .map(|name| {
                        let values: Vec<f64> =
                            runs.iter().filter_map(|run| run.details.get(name).copied()).collect();
                        (*name, Spread::of(&values).median)
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A figure of a run's details: whole numbers (bytes, nanoseconds) without decimals, the rest
/// (seconds) with three.
pub fn figure(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// Millions, with one decimal.
fn millions(value: f64) -> String {
    format!("{:.1}", value / 1e6)
}

/// The human table: one row per (scenario, system, variant), then the other figures of those
/// that have some. The variant column is as wide as its longest name, so the figures line up.
pub fn table(summaries: &[Summary]) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let width =
        summaries.iter().map(|summary| summary.variant.chars().count()).fold(44, usize::max);
    let row = |text: &mut String, cells: [&str; 11]| {
        let [scenario, system, variant, median, min, max, p50, p99, p999, p9999, worst] = cells;
        let _ = writeln!(
            text,
            "{scenario:<18} {system:<10} {variant:<width$} {median:>9} {min:>9} {max:>9}  \
             {p50:>7} {p99:>7} {p999:>7} {p9999:>8} {worst:>9}"
        );
    };
    row(
        &mut text,
        [
            "scenario", "system", "variant", "M/s med", "min", "max", "p50 ns", "p99", "p99.9",
            "p99.99", "max ns",
        ],
    );
    for summary in summaries {
        let latency = |value: Option<f64>| value.map(|v| format!("{v:.0}")).unwrap_or_default();
        row(
            &mut text,
            [
                summary.scenario,
                summary.system,
                &summary.variant,
                &millions(summary.ops_per_sec),
                &millions(summary.ops_per_sec_min),
                &millions(summary.ops_per_sec_max),
                &latency(summary.p50_ns),
                &latency(summary.p99_ns),
                &latency(summary.p999_ns),
                &latency(summary.p9999_ns),
                &latency(summary.max_ns),
            ],
        );
    }
    for summary in summaries.iter().filter(|summary| !summary.details.is_empty()) {
        let details: Vec<String> = summary
            .details
            .iter()
            .map(|(name, value)| format!("{name} {}", figure(*value)))
            .collect();
        let _ = writeln!(
            text,
            "{:<18} {:<10} {:<width$} {}",
            summary.scenario,
            summary.system,
            summary.variant,
            details.join(", ")
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `.hgrm` rows: (value in microseconds, percentile, total count).
    fn rows(text: &str) -> Vec<(f64, f64, u64)> {
        text.lines()
            .skip(2)
            .take_while(|line| !line.starts_with('#'))
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields[0].parse().unwrap(), fields[1].parse().unwrap(), fields[2].parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn an_hgrm_file_climbs_to_every_value_at_the_hundredth_percentile() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for value in 1..=10_000u64 {
            histogram.record(value * 1_000).unwrap();
        }
        histogram.record(50_000_000).unwrap();
        let mut text = Vec::new();
        write_hgrm(&histogram, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let rows = rows(&text);
        assert!(rows.len() > 20, "{text}");
        assert!(rows.windows(2).all(|pair| pair[0].0 <= pair[1].0 && pair[0].1 <= pair[1].1));
        assert!(rows.windows(2).all(|pair| pair[0].2 <= pair[1].2));
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, 10_001);
        // The maximum is 50 ms: 50 000 µs, within the histogram's precision.
        assert!((last.0 - 50_000.0).abs() < 50.0, "{last:?}");
        let median = rows.iter().find(|row| row.1 >= 0.5).unwrap();
        assert!((median.0 - 5_000.0).abs() < 10.0, "{median:?}");
        assert!(text.contains("Total count    =        10001"), "{text}");
    }

    fn measurement(run: usize, ops: f64, ready: f64) -> Measurement {
        Measurement {
            scenario: "recovery",
            system: "keel",
            variant: "10M".into(),
            run,
            events: 1,
            ops_per_sec: ops,
            latency: None,
            probe_ns: 100.0,
            details: [("ready_s", ready)].into_iter().collect(),
        }
    }

    #[test]
    fn a_summary_takes_the_median_of_the_throughput_and_of_each_detail() {
        let runs = [measurement(1, 3.0, 0.5), measurement(2, 1.0, 0.1), measurement(3, 2.0, 9.0)];
        let summaries = summarize(&runs);
        assert_eq!(summaries.len(), 1);
        let summary = &summaries[0];
        assert_eq!(
            (summary.ops_per_sec, summary.ops_per_sec_min, summary.ops_per_sec_max),
            (2.0, 1.0, 3.0)
        );
        assert_eq!(summary.details["ready_s"], 0.5);
        assert!(summary.p50_ns.is_none());
        assert!(table(&summaries).contains("ready_s 0.500"));
    }
}
