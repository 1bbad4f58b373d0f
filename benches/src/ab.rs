//! `keel-bench ab`: two builds of one program, run alternately, compared round by round.
//!
//! A change to keel's hot path is judged by the same command run from the build before it and
//! the build after. On a shared, noisy machine the speed of either drifts by more than most
//! changes are worth from one minute to the next, so the two builds take turns (the order
//! swapped every round, so that a drift does not favour either), each round's ratio is taken
//! between runs a few seconds apart, and the verdict is the median of those ratios and how many
//! rounds the new build won. This is how BENCHMARKS.md's alternated A/B figures are made.
//!
//! ```text
//! keel-bench ab --rounds 8 /tmp/ledger-before target/release/ledger -- \
//!     run --data {data} --accounts 100000 --transfers 5000000 --mix payments --seed 1
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser;

use crate::machine::Machine;
use crate::report::Spread;
use crate::scratch::Scratch;

/// Runs two builds of one program alternately with the same arguments and compares the
/// throughput each run prints.
#[derive(Debug, Parser)]
#[command(
    name = "keel-bench ab",
    after_help = "Example:\n  keel-bench ab --rounds 8 /tmp/exchange-before target/release/exchange -- run --data {data} --orders 5000000 --seed 1"
)]
pub struct Arguments {
    /// Rounds: each runs both builds once, in an order that swaps every round.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Where `{data}` directories are made (default: the system's temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The build before the change.
    base: PathBuf,
    /// The build after it.
    new: PathBuf,
    /// The arguments both get. `{data}` in any of them becomes a directory that does not exist
    /// yet, a new one for every run, removed after it.
    #[arg(last = true, required = true)]
    arguments: Vec<OsString>,
}

/// What one run printed that the comparison uses.
#[derive(Clone, Debug, PartialEq)]
struct Run {
    /// The last throughput the run printed, in millions per second.
    throughput: f64,
    /// The unit it was printed in (`transfers/s`, `orders/s`, ...).
    unit: String,
    /// The last state hash it printed, if any.
    hash: Option<String>,
}

pub fn main(arguments: Arguments) -> Result<()> {
    ensure!(arguments.rounds >= 1, "--rounds must be at least 1");
    for program in [&arguments.base, &arguments.new] {
        ensure!(program.is_file(), "{} is not a file", program.display());
    }
    let data_root = arguments.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    println!("{}", Machine::read().describe());
    println!("base {}\nnew  {}", arguments.base.display(), arguments.new.display());
    let mut base = Vec::new();
    let mut new = Vec::new();
    for round in 0..arguments.rounds {
        // Base first in even rounds, new first in odd ones.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for is_new in order {
            let program = if is_new { &arguments.new } else { &arguments.base };
            let run = run_once(program, &arguments.arguments, &data_root)?;
            if is_new { &mut new } else { &mut base }.push(run);
        }
        let (before, after) = (&base[round], &new[round]);
        ensure!(
            before.unit == after.unit,
            "the builds print different figures ({} and {}): not two builds of one program's run",
            before.unit,
            after.unit
        );
        println!(
            "round {:>2}: base {:>8.2}  new {:>8.2} M {}  ratio {:.3}",
            round + 1,
            before.throughput,
            after.throughput,
            after.unit,
            after.throughput / before.throughput
        );
    }
    println!();
    print!("{}", verdict(&base, &new));
    Ok(())
}

/// The summary: medians, the median of the rounds' ratios and their range, the rounds the new
/// build won, and whether the state hashes agree (when each build's runs agree among
/// themselves).
fn verdict(base: &[Run], new: &[Run]) -> String {
    let ratios: Vec<f64> =
        base.iter().zip(new).map(|(before, after)| after.throughput / before.throughput).collect();
    let faster = ratios.iter().filter(|&&ratio| ratio > 1.0).count();
    let median = |runs: &[Run]| {
        Spread::of(&runs.iter().map(|run| run.throughput).collect::<Vec<_>>()).median
    };
    let spread = Spread::of(&ratios);
    let unit = &new[0].unit;
    let mut text = format!(
        "base median {:.2} M {unit}, new median {:.2} M {unit}\n\
         ratio new / base: median {:.3} [{:.3}..{:.3}], new faster in {faster} of {} rounds\n",
        median(base),
        median(new),
        spread.median,
        spread.min,
        spread.max,
        ratios.len(),
    );
    let (before, after) = (distinct_hashes(base), distinct_hashes(new));
    if before.len() > 1 || after.len() > 1 {
        // A workload whose state depends on timing (the ledger's payments expire in engine
        // time, which is the clock's when each batch is journaled) ends in a different state
        // each run: its hashes say nothing about the change.
        text += &format!(
            "state hashes vary from run to run within a build ({} and {} distinct): not compared\n",
            before.len(),
            after.len()
        );
    } else if before == after {
        if let Some(hash) = after.first() {
            text += &format!("state hash: {hash} in every run of both builds\n");
        }
    } else {
        text += &format!(
            "STATE HASHES DIFFER: base {}, new {}\n",
            before.first().unwrap_or(&"none"),
            after.first().unwrap_or(&"none")
        );
    }
    text
}

/// The different state hashes `runs` printed, in order.
fn distinct_hashes(runs: &[Run]) -> Vec<&str> {
    let mut hashes: Vec<&str> = runs.iter().filter_map(|run| run.hash.as_deref()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// Runs `program` once with `arguments` (`{data}` replaced by a fresh directory under
/// `data_root`, removed afterwards) and reads what it printed.
fn run_once(program: &Path, arguments: &[OsString], data_root: &Path) -> Result<Run> {
    // The directory goes when the scratch is dropped, whether or not the run succeeded: a
    // failed run's data is in its output, and a hundred leftover journals would fill the disk.
    let scratch = Scratch::new(data_root, "ab")?;
    let data = scratch.0.join("data");
    let arguments: Vec<OsString> = arguments
        .iter()
        .map(|argument| match argument.to_str() {
            Some(text) if text.contains("{data}") => {
                OsString::from(text.replace("{data}", &data.to_string_lossy()))
            }
            _ => argument.clone(),
        })
        .collect();
    let output = Command::new(program)
        .args(&arguments)
        .output()
        .with_context(|| format!("starting {}", program.display()))?;
    drop(scratch);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("{} failed ({}):\n{stdout}{stderr}", program.display(), output.status);
    }
    let (throughput, unit) = last_throughput(&stdout).with_context(|| {
        format!("{} printed no throughput (\"N M things/s\"):\n{stdout}", program.display())
    })?;
    Ok(Run { throughput, unit, hash: last_hash(&stdout) })
}

/// The last figure printed as `N M unit/s` (`4.31 M transfers/s`), in millions per second,
/// with its unit.
fn last_throughput(text: &str) -> Option<(f64, String)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(3).rev().find_map(|window| {
        let [number, scale, unit] = window else { return None };
        let unit = unit.trim_end_matches([',', ';', ')', ':']);
        if *scale != "M" || !unit.ends_with("/s") || unit.len() <= 2 {
            return None;
        }
        let value: f64 = number.replace(',', "").parse().ok()?;
        (value.is_finite() && value > 0.0).then(|| (value, unit.to_owned()))
    })
}

/// The last `hash 0x...` the run printed.
fn last_hash(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).rev().find_map(|window| {
        let [label, value] = window else { return None };
        let value = value.trim_end_matches([',', ';', ')']);
        (label.ends_with("hash")
            && value.len() > 2
            && value.starts_with("0x")
            && value[2..].chars().all(|digit| digit.is_ascii_hexdigit()))
        .then(|| value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEDGER_RUN: &str = "\
ledger run: 100,000 accounts in 4 codes, 5,000,000 transfers (Payments mix, seed 1)
  setup        200,004 commands in 0.047 s
  transfers    5,000,000 in 1.160 s: 4.31 M transfers/s
  state        100,004 accounts (56 B each), 4,952,075 transfer records (227.4 MiB), hash 0xc453e59335bbd420
";

    #[test]
    fn the_last_throughput_and_hash_are_read_with_their_unit() {
        assert_eq!(last_throughput(LEDGER_RUN), Some((4.31, "transfers/s".to_owned())));
        assert_eq!(last_hash(LEDGER_RUN).as_deref(), Some("0xc453e59335bbd420"));
        let two = "first 1.50 M orders/s\nthen 1,234.5 M orders/s, done";
        assert_eq!(last_throughput(two), Some((1234.5, "orders/s".to_owned())));
        assert_eq!(last_throughput("5 M of them\n3.2 K transfers/s\nM /s"), None);
        assert_eq!(last_hash("hash 0xZZ\nstate hash: none"), None);
    }

    fn run(throughput: f64, hash: &str) -> Run {
        Run { throughput, unit: "orders/s".to_owned(), hash: Some(hash.to_owned()) }
    }

    #[test]
    fn the_verdict_takes_the_median_of_the_rounds_ratios_and_counts_the_wins() {
        let base = [run(2.0, "0x1"), run(4.0, "0x1"), run(3.0, "0x1")];
        let new = [run(3.0, "0x1"), run(3.0, "0x1"), run(3.3, "0x1")];
        let text = verdict(&base, &new);
        // Ratios 1.5, 0.75 and 1.1: the median is 1.1, two of three rounds faster, while the
        // medians of the figures (3.0 and 3.0) would say no change.
        assert!(text.contains("base median 3.00 M orders/s, new median 3.00 M orders/s"), "{text}");
        assert!(
            text.contains("median 1.100 [0.750..1.500], new faster in 2 of 3 rounds"),
            "{text}"
        );
        assert!(text.contains("state hash: 0x1 in every run of both builds"), "{text}");
        let new = [run(3.0, "0x2"), run(3.0, "0x2"), run(3.3, "0x2")];
        assert!(verdict(&base, &new).contains("STATE HASHES DIFFER: base 0x1, new 0x2"));
        let new = [run(3.0, "0x1"), run(3.0, "0x2"), run(3.3, "0x1")];
        let text = verdict(&base, &new);
        assert!(text.contains("vary from run to run within a build (1 and 2 distinct)"), "{text}");
    }

    #[test]
    fn each_run_gets_a_data_directory_of_its_own_and_it_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let script = root.path().join("program.sh");
        // The program is the shell running a script, not the script itself: executing a file
        // just written can fail with "text file busy" while another test thread forks.
        let shell = Path::new("/bin/sh");
        let arguments =
            [script.clone().into_os_string(), OsString::from("--data"), OsString::from("{data}")];
        // Creates the directory it is given, leaves a file in it, and prints a figure and the
        // directory's name.
        std::fs::write(
            &script,
            "mkdir \"$2\" && touch \"$2/journal\" && echo \"in $2: 2.50 M things/s\"\n",
        )
        .unwrap();
        let run = run_once(shell, &arguments, root.path()).unwrap();
        assert_eq!(run, Run { throughput: 2.5, unit: "things/s".to_owned(), hash: None });
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the script is left: {left:?}");

        std::fs::write(&script, "echo 'no figure'\n").unwrap();
        let error = run_once(shell, &arguments, root.path()).unwrap_err();
        assert!(format!("{error:#}").contains("printed no throughput"), "{error:#}");
        std::fs::write(&script, "echo 'disk full' >&2\nexit 3\n").unwrap();
        let error = format!("{:#}", run_once(shell, &arguments, root.path()).unwrap_err());
        assert!(error.contains("disk full") && error.contains("exit status: 3"), "{error}");
    }
}
