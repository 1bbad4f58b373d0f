//! Figures for people: thousands separated, units on everything.

use hdrhistogram::Histogram;

/// `1234567` as `1,234,567`.
pub fn count(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A duration in nanoseconds, to three significant digits in the unit that suits it.
pub fn nanos(value: u64) -> String {
    let value = value as f64;
    let (scaled, unit) = if value < 1e3 {
        return format!("{value:.0} ns");
    } else if value < 1e6 {
        (value / 1e3, "µs")
    } else if value < 1e9 {
        (value / 1e6, "ms")
    } else {
        (value / 1e9, "s")
    };
    if scaled < 10.0 {
        format!("{scaled:.2} {unit}")
    } else if scaled < 100.0 {
        format!("{scaled:.1} {unit}")
    } else {
        format!("{scaled:.0} {unit}")
    }
}

/// Seconds, to the millisecond.
pub fn seconds(value: f64) -> String {
    format!("{value:.3} s")
}

/// A rate per second, in millions or thousands.
pub fn rate(value: f64, unit: &str) -> String {
    if value >= 1e6 {
        format!("{:.2} M {unit}/s", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1} K {unit}/s", value / 1e3)
    } else {
        format!("{value:.0} {unit}/s")
    }
}

/// Bytes in binary units.
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut scaled = value as f64;
    let mut unit = 0;
    while scaled >= 1024.0 && unit < UNITS.len() - 1 {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

/// The percentiles a latency line shows.
pub const PERCENTILES: [(f64, &str); 5] =
    [(50.0, "p50"), (99.0, "p99"), (99.9, "p99.9"), (99.99, "p99.99"), (100.0, "max")];

/// `p50 1.2 µs · p99 …` from a histogram of nanoseconds.
pub fn percentiles(histogram: &Histogram<u64>) -> String {
    PERCENTILES
        .iter()
        .map(|&(percentile, name)| {
            let value = if percentile >= 100.0 {
                histogram.max()
            } else {
                histogram.value_at_percentile(percentile)
            };
            format!("{name} {}", nanos(value))
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The percentiles as JSON: `{"p50_ns": …, …, "count": …}`.
pub fn percentiles_json(histogram: &Histogram<u64>) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    for &(percentile, name) in &PERCENTILES {
        let value = if percentile >= 100.0 {
            histogram.max()
        } else {
            histogram.value_at_percentile(percentile)
        };
        object.insert(format!("{}_ns", name.replace('.', "_")), value.into());
    }
    object.insert("count".into(), histogram.len().into());
    serde_json::Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(nanos(850), "850 ns");
        assert_eq!(nanos(1_250), "1.25 µs");
        assert_eq!(nanos(31_487), "31.5 µs");
        assert_eq!(nanos(292_426), "292 µs");
        assert_eq!(nanos(3_400_000), "3.40 ms");
        assert_eq!(nanos(12_000_000_000), "12.0 s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(rate(12_345_678.0, "transfers"), "12.35 M transfers/s");
    }
}
