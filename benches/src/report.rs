//! Measurements, their summaries across runs, the table and the JSON lines.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles of one run, in nanoseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub p9999_ns: u64,
    pub max_ns: u64,
}

impl Latency {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        Self {
            p50_ns: histogram.value_at_quantile(0.50),
            p99_ns: histogram.value_at_quantile(0.99),
            p999_ns: histogram.value_at_quantile(0.999),
            p9999_ns: histogram.value_at_quantile(0.9999),
            max_ns: histogram.max(),
        }
    }
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
                            .map(|run| field(&run.latency.unwrap()) as f64)
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
            }
        })
        .collect()
}

/// Millions, with one decimal.
fn millions(value: f64) -> String {
    format!("{:.1}", value / 1e6)
}

/// Prints the human table: one row per (scenario, system, variant), with keel's ratio to each
/// peer's median in the same scenario.
pub fn print_table(summaries: &[Summary]) {
    println!();
    println!(
        "{:<15} {:<10} {:<28} {:>9} {:>9} {:>9}  {:>7} {:>7} {:>7} {:>8} {:>9}",
        "scenario",
        "system",
        "variant",
        "M/s med",
        "min",
        "max",
        "p50 ns",
        "p99",
        "p99.9",
        "p99.99",
        "max ns"
    );
    for summary in summaries {
        let latency = |value: Option<f64>| value.map(|v| format!("{v:.0}")).unwrap_or_default();
        println!(
            "{:<15} {:<10} {:<28} {:>9} {:>9} {:>9}  {:>7} {:>7} {:>7} {:>8} {:>9}",
            summary.scenario,
            summary.system,
            summary.variant,
            millions(summary.ops_per_sec),
            millions(summary.ops_per_sec_min),
            millions(summary.ops_per_sec_max),
            latency(summary.p50_ns),
            latency(summary.p99_ns),
            latency(summary.p999_ns),
            latency(summary.p9999_ns),
            latency(summary.max_ns),
        );
    }
}
