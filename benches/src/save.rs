//! The results folder of one invocation: `OUT/DATE-COMMIT-SCENARIOS/` with
//!
//! - `results.jsonl`: the machine, every run, every summary and every ratio, one JSON object
//!   per line (what `--json` prints);
//! - `summary.txt`: the table as printed;
//! - one `.hgrm` file per latency series (the runs of one scenario, system and variant added
//!   together), HdrHistogram's percentile distribution, which its plotter reads;
//! - `latency-SCENARIO[-RATE].svg` (latency by percentile, log scales, a line per system and
//!   variant, one chart per offered rate)
//!   and `throughput-SCENARIO.svg` (the median of each, with the runs' minimum and maximum, for
//!   the cases that are not at a fixed rate).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::machine::Machine;
use crate::plots;
use crate::report::{write_hgrm, Measurement, Summary};

/// Writes everything under a new folder in `out`; returns the folder.
pub fn write(
    out: &Path,
    label: &str,
    machine: &Machine,
    summary_text: &str,
    measurements: &[Measurement],
    summaries: &[Summary],
    ratios: &[impl Serialize],
) -> Result<PathBuf> {
    let date = &keel_journal::time::rfc3339(std::time::SystemTime::now())[..10];
    let base = format!("{date}-{}-{}", machine.commit, slug(label));
    let mut folder = out.join(&base);
    let mut attempt = 1;
    while folder.exists() {
        attempt += 1;
        folder = out.join(format!("{base}-{attempt}"));
    }
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;

    let mut lines = String::new();
    lines += &serde_json::json!({ "kind": "machine", "machine": machine }).to_string();
    lines.push('\n');
    for measurement in measurements {
        lines += &serde_json::to_string(measurement)?;
        lines.push('\n');
    }
    for summary in summaries {
        lines += &serde_json::to_string(summary)?;
        lines.push('\n');
    }
    for ratio in ratios {
        lines += &serde_json::to_string(ratio)?;
        lines.push('\n');
    }
    write_file(&folder.join("results.jsonl"), lines.as_bytes())?;
    write_file(&folder.join("summary.txt"), summary_text.as_bytes())?;

    // Each latency series, its runs added together, by scenario.
    let mut series: BTreeMap<String, Vec<(String, Histogram<u64>)>> = BTreeMap::new();
    for summary in summaries.iter().filter(|summary| summary.p50_ns.is_some()) {
        let mut merged: Option<Histogram<u64>> = None;
        for measurement in measurements.iter().filter(|m| {
            m.scenario == summary.scenario
                && m.system == summary.system
                && m.variant == summary.variant
        }) {
            let Some(latency) = &measurement.latency else { continue };
            match &mut merged {
                Some(merged) => merged.add(latency.histogram.as_ref())?,
                None => merged = Some(latency.histogram.as_ref().clone()),
            }
        }
        let Some(merged) = merged else { continue };
        let name = format!("{} {}", summary.system, summary.variant);
        let file = folder.join(format!("{}-{}.hgrm", summary.scenario, slug(&name)));
        let mut text = Vec::new();
        write_hgrm(&merged, &mut text)?;
        write_file(&file, &text)?;
        // One chart per offered rate, so that each compares the systems under one load.
        let rate = summary.variant.rsplit(' ').next().filter(|word| word.ends_with("/s"));
        let chart = match rate {
            Some(rate) => format!("{}-{}", summary.scenario, slug(rate)),
            None => summary.scenario.to_owned(),
        };
        series.entry(chart).or_default().push((name, merged));
    }
    for (chart, series) in &series {
        let file = folder.join(format!("latency-{chart}.svg"));
        plots::latency(&file, &format!("{chart}: latency by percentile"), series)?;
    }

    // Throughput charts for the cases that measure it: at a fixed offered rate (the cases with
    // a latency) the throughput is the rate, and the latency chart says what there is to say.
    let mut bars: BTreeMap<&str, Vec<plots::Bar>> = BTreeMap::new();
    for summary in summaries.iter().filter(|summary| summary.p50_ns.is_none()) {
        bars.entry(summary.scenario).or_default().push(plots::Bar {
            name: format!("{} {}", summary.system, summary.variant),
            median: summary.ops_per_sec,
            min: summary.ops_per_sec_min,
            max: summary.ops_per_sec_max,
        });
    }
    for (scenario, bars) in &bars {
        let file = folder.join(format!("throughput-{scenario}.svg"));
        plots::throughput(&file, &format!("{scenario}: throughput, {}", machine.cpu_model), bars)?;
    }
    Ok(folder)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}

/// `text` as a file name's part: lower-case letters, digits and dashes.
fn slug(text: &str) -> String {
    let mut slug = String::new();
    for character in text.chars() {
        if character.is_ascii_alphanumeric() {
            slug.push(character.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn a_slug_keeps_letters_and_digits_and_joins_the_rest_with_one_dash() {
        assert_eq!(slug("keel compact page-cache 100K/s"), "keel-compact-page-cache-100k-s");
        assert_eq!(slug("sqlite WAL synchronous=FULL"), "sqlite-wal-synchronous-full");
        assert_eq!(slug("  a  b "), "a-b");
    }
}
