//! `ledger load`: drives `ledger serve` over TCP at a fixed offered rate and reports what it
//! measured. Each client is one connection with two threads: one sends on a schedule fixed in
//! advance, the other reads the responses. Latency runs from a request's intended send time
//! to its response's arrival, so a stall anywhere (server, network, this machine) shows in
//! every request behind it: coordinated omission is corrected.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Args;
use hdrhistogram::Histogram;
use keel_examples::format;
use keel_examples::ledger::client::{Client, ResponseReader};
use keel_examples::ledger::wire::{self, ErrorCode, Response};
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::Event;
use keel_examples::rng::{seed_from_environment, SplitMix64};
use serde_json::json;

use keel_examples::cli::Tally as _;

use crate::options::Tally;
use crate::run::MixArg;

/// Requests the setup keeps in flight on its one connection.
const SETUP_WINDOW: usize = 1024;

/// Requests one send writes at most, when the schedule is behind.
const SEND_BATCH: u64 = 256;

/// How long a reader waits for a response before it gives the rest up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ledger load --connect 127.0.0.1:7300 --clients 4 --rate 100000 --duration 10\n  \
                  ledger load --connect 127.0.0.1:7300 --clients 1 --rate 1000 --duration 5 --json"
)]
pub struct LoadArgs {
    /// The server's address.
    #[arg(long, value_name = "ADDR")]
    pub connect: String,
    /// Connections, each with a sending and a reading thread.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub clients: u64,
    /// Requests per second offered over all connections, scheduled in advance.
    #[arg(long, value_name = "R", default_value_t = 100_000)]
    pub rate: u64,
    /// Seconds of traffic after the setup.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub duration: f64,
    /// Customer accounts the setup opens and funds (existing ones are answered as such).
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u64,
    /// Currencies the accounts are spread over.
    #[arg(long, default_value_t = 4)]
    pub codes: u32,
    /// The traffic's make-up.
    #[arg(long, value_enum, default_value_t = MixArg::Payments)]
    pub mix: MixArg,
    /// The workload's seed (default: `KEEL_SEED`, or the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The share of requests sent malformed (an unknown kind, or a body one byte short or long
    /// for its kind), from 0 to 1. Each must be answered `malformed` on a connection that stays
    /// usable, and none may reach the journal.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub malformed: f64,
    /// Connections per second, beside the clients, that misbehave during the traffic: in turn
    /// one announces an oversized frame, one ends inside a frame, one closes without a word.
    /// The first two must be answered `oversized` and `truncated` and closed; none may leave
    /// anything behind in the server.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bad_connections: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Which requests of a client are sent malformed: a hash of the seed, the client and the
/// request's index decides, so that the reader knows them without being told.
#[derive(Clone, Copy)]
struct Malformed {
    seed: u64,
    client: u64,
    /// Requests whose hash is below this are malformed; 0: none, `u64::MAX`: all.
    threshold: u64,
}

impl Malformed {
    fn new(seed: u64, client: u64, fraction: f64) -> Self {
        let threshold = if fraction >= 1.0 { u64::MAX } else { (fraction * 2f64.powi(64)) as u64 };
        Self { seed, client, threshold }
    }

    fn is(&self, index: u64) -> bool {
        let hash = SplitMix64::new(self.seed ^ (self.client << 40) ^ index).next_u64();
        self.threshold == u64::MAX || hash < self.threshold
    }

    /// The malformed frame sent in place of request `index`: three kinds of mistake in turn,
    /// each with the request's id, so that the error reply can be matched to it.
    fn frame(index: u64, valid: &keel_examples::ledger::Command, out: &mut Vec<u8>) {
        let start = out.len();
        match index % 3 {
            // An unknown kind.
            0 => {
                out.extend_from_slice(&21u32.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.push(0xee);
                out.extend_from_slice(&[0; 12]);
            }
            // A known kind one byte short: the last byte cut, the prefix told.
            1 => {
                wire::encode_request(index, valid, out);
                out.pop();
                reprefix(out, start);
            }
            // A known kind one byte long.
            _ => {
                wire::encode_request(index, valid, out);
                out.push(0);
                reprefix(out, start);
            }
        }
    }
}

/// Rewrites the length prefix of the frame at `start` to the bytes after it.
fn reprefix(out: &mut [u8], start: usize) {
    let length = (out.len() - start - wire::LENGTH_BYTES) as u32;
    out[start..start + wire::LENGTH_BYTES].copy_from_slice(&length.to_le_bytes());
}

/// What one client measured.
struct ClientResult {
    latency: Histogram<u64>,
    tally: Tally,
    answered: u64,
    errors: [u64; 4],
    /// Requests this client sent malformed.
    malformed_sent: u64,
    /// Why the reader stopped early, if it did.
    failure: Option<String>,
}

pub fn load(args: LoadArgs) -> Result<()> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.rate > 0, "--rate must be at least 1");
    ensure!(args.duration > 0.0 && args.duration.is_finite(), "--duration must be positive");
    ensure!((0.0..=1.0).contains(&args.malformed), "--malformed must be between 0 and 1");
    ensure!(
        args.codes > 0 && args.accounts >= u64::from(args.codes),
        "--codes must be at least 1 and --accounts at least --codes"
    );
    let seed = args.seed.unwrap_or_else(seed_from_environment);
    let mix = match args.mix {
        MixArg::Payments => Mix::PAYMENTS,
        MixArg::Transfers => Mix::TRANSFERS,
    };
    let total = ((args.rate as f64 * args.duration) as u64).max(args.clients);
    let per_client = total.div_ceil(args.clients);
    // Transfer ids start at the clock in nanoseconds: a run uses fewer ids than nanoseconds
    // pass while it runs, so the next run's ids start above this one's, and reruns against
    // the same server never collide (a collision would be answered as a retry).
    let first_id =
        SystemTime::now().duration_since(UNIX_EPOCH).context("the clock")?.as_nanos() as u64;

    let setup_started = Instant::now();
    let mut workload = Workload::new(seed, args.accounts, args.codes, mix, first_id);
    let setup = setup(&args.connect, workload.setup())?;
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    let traffic_first_id = workload.next_transfer_id();

    let interval_ns = args.clients as f64 * 1e9 / args.rate as f64;
    let start = Instant::now() + Duration::from_millis(20);
    let traffic_end = start + Duration::from_secs_f64(args.duration);
    let (results, misbehaved) = std::thread::scope(|scope| -> Result<_> {
        let misbehaving = (args.bad_connections > 0).then(|| {
            scope.spawn(|| misbehave(&args.connect, args.bad_connections, start, traffic_end))
        });
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for client in 0..args.clients {
            let stream = TcpStream::connect(&args.connect)
                .with_context(|| format!("connecting to {}", args.connect))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
            let reading = stream.try_clone()?;
            let mut workload = Workload::new(
                seed.wrapping_add(client + 1),
                args.accounts,
                args.codes,
                mix,
                traffic_first_id + client * per_client,
            );
            // Clients are staggered by one interval over the clients, so that together they
            // offer an even stream rather than bursts of `clients` at once.
            let offset_ns = client as f64 * interval_ns / args.clients as f64;
            let schedule = Schedule { start, offset_ns, interval_ns };
            let malformed = Malformed::new(seed, client, args.malformed);
            writers.push(scope.spawn(move || {
                send(stream, schedule, per_client, malformed, || workload.next_command())
            }));
            readers.push(scope.spawn(move || receive(reading, schedule, per_client, malformed)));
        }
        for writer in writers {
            writer.join().expect("a sending thread panicked")?;
        }
        let results: Vec<ClientResult> =
            readers.into_iter().map(|reader| reader.join().expect("a reader panicked")).collect();
        let misbehaved = misbehaving
            .map(|thread| thread.join().expect("the misbehaving thread panicked"))
            .unwrap_or_default();
        Ok((results, misbehaved))
    })?;
    let elapsed = start.elapsed().as_secs_f64();

    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3)?;
    let mut tally = Tally::default();
    let mut errors = [0u64; 4];
    let mut answered = 0;
    let mut malformed_sent = 0;
    let mut failures = misbehaved.failures.clone();
    for result in &results {
        malformed_sent += result.malformed_sent;
        latency.add(&result.latency)?;
        tally.merge(&result.tally);
        for (sum, count) in errors.iter_mut().zip(result.errors) {
            *sum += count;
        }
        answered += result.answered;
        failures.extend(result.failure.clone());
    }
    let sent = per_client * args.clients;
    let throughput = answered as f64 / elapsed.max(1e-9);
    let error_names: serde_json::Map<String, serde_json::Value> = ErrorCode::ALL
        .iter()
        .filter(|&&code| errors[code.index()] > 0)
        .map(|&code| (code.name().to_owned(), errors[code.index()].into()))
        .collect();
    if args.json {
        let value = json!({
            "connect": args.connect,
            "seed": seed,
            "clients": args.clients,
            "offered_per_second": args.rate,
            "setup": { "commands": setup, "seconds": setup_seconds },
            "requests": sent,
            "answered": answered,
            "seconds": elapsed,
            "answered_per_second": throughput,
            "latency": format::percentiles_json(&latency),
            "latency_basis": "from the intended send time, open loop",
            "outcomes": tally.json(),
            "errors": error_names,
            "malformed_sent": malformed_sent,
            "bad_connections": {
                "oversized": misbehaved.oversized,
                "truncated": misbehaved.truncated,
                "silent": misbehaved.silent,
            },
            "failures": failures,
        });
        println!("{value}");
    } else {
        println!("ledger load → {} (seed {seed})", args.connect);
        println!(
            "  setup       {} accounts and fundings in {}",
            format::count(setup),
            format::seconds(setup_seconds)
        );
        println!(
            "  offered     {} over {} connections for {} ({} requests)",
            format::rate(args.rate as f64, "requests"),
            args.clients,
            format::seconds(args.duration),
            format::count(sent)
        );
        println!(
            "  answered    {} in {}: {}",
            format::count(answered),
            format::seconds(elapsed),
            format::rate(throughput, "requests")
        );
        println!("  latency     {}", format::percentiles(&latency));
        println!("              (from the intended send time, open loop)");
        let [done, refused] = tally.lines();
        println!("  outcomes    {done}");
        println!("              {refused}");
        let names: Vec<String> = error_names
            .iter()
            .map(|(name, count)| format!("{} {name}", format::count(count.as_u64().unwrap_or(0))))
            .collect();
        println!(
            "  errors      {}",
            if names.is_empty() { "none".into() } else { names.join(", ") }
        );
        if malformed_sent > 0 || args.bad_connections > 0 {
            println!(
                "  misbehaved  {} malformed requests; {} connections closed for an oversized \
                 frame, {} for a cut one, {} silent",
                format::count(malformed_sent),
                format::count(misbehaved.oversized),
                format::count(misbehaved.truncated),
                format::count(misbehaved.silent)
            );
        }
        for failure in &failures {
            println!("  failure     {failure}");
        }
    }
    if answered < sent {
        bail!("{} of {} requests were not answered", sent - answered, sent);
    }
    let malformed_answered = errors[ErrorCode::Malformed.index()];
    ensure!(
        malformed_answered == malformed_sent,
        "{malformed_sent} malformed requests were sent, {malformed_answered} answered malformed"
    );
    ensure!(failures.is_empty(), "{} failures", failures.len());
    Ok(())
}

/// Sends the setup over one connection, `SETUP_WINDOW` at a time; fails unless every command
/// created its account or transfer (or found the account there already). Returns the count.
fn setup(address: &str, commands: Vec<keel_examples::ledger::Command>) -> Result<u64> {
    let mut client =
        Client::connect(address).with_context(|| format!("connecting to {address}"))?;
    client.stream().set_read_timeout(Some(RESPONSE_TIMEOUT))?;
    for (chunk_index, chunk) in commands.chunks(SETUP_WINDOW).enumerate() {
        let first = (chunk_index * SETUP_WINDOW) as u64;
        for (offset, command) in chunk.iter().enumerate() {
            client.send(first + offset as u64, command).context("sending the setup")?;
        }
        for _ in chunk {
            let response = client.receive().context("reading the setup's responses")?;
            match response {
                Some(Response::Reply {
                    event:
                        Event::AccountCreated { .. }
                        | Event::AccountExists { .. }
                        | Event::Transferred { .. },
                    ..
                }) => {}
                Some(other) => bail!("the setup was refused: {other:?}"),
                None => bail!("the server closed the connection during the setup"),
            }
        }
    }
    Ok(commands.len() as u64)
}

/// When a client's requests are due.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    offset_ns: f64,
    interval_ns: f64,
}

impl Schedule {
    /// When request `index` is due.
    fn intended(&self, index: u64) -> Instant {
        self.start + Duration::from_nanos((self.offset_ns + index as f64 * self.interval_ns) as u64)
    }

    /// How many requests are due by `now`.
    fn due(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos() as f64;
        if elapsed < self.offset_ns {
            0
        } else {
            ((elapsed - self.offset_ns) / self.interval_ns) as u64 + 1
        }
    }
}

/// Sends `count` requests on the schedule: every request due is written at once, so a late
/// thread catches up with a burst, as real clients would.
fn send(
    mut stream: TcpStream,
    schedule: Schedule,
    count: u64,
    malformed: Malformed,
    mut next: impl FnMut() -> keel_examples::ledger::Command,
) -> Result<()> {
    let mut buffer = Vec::with_capacity(SEND_BATCH as usize * 64);
    let mut sent = 0;
    while sent < count {
        let now = Instant::now();
        let due = schedule.due(now).min(count).min(sent + SEND_BATCH);
        if due > sent {
            buffer.clear();
            for index in sent..due {
                let command = next();
                if malformed.is(index) {
                    Malformed::frame(index, &command, &mut buffer);
                } else {
                    wire::encode_request(index, &command, &mut buffer);
                }
            }
            stream.write_all(&buffer).context("sending requests")?;
            sent = due;
            continue;
        }
        let wait = schedule.intended(sent).saturating_duration_since(now);
        // Sleeping is coarse (tens of microseconds late); near the time, yield instead.
        if wait > Duration::from_micros(200) {
            std::thread::sleep(wait - Duration::from_micros(100));
        } else {
            std::thread::yield_now();
        }
    }
    Ok(())
}

/// Reads `count` responses, timing each from its request's intended send time.
fn receive(
    stream: TcpStream,
    schedule: Schedule,
    count: u64,
    malformed: Malformed,
) -> ClientResult {
    let mut result = ClientResult {
        malformed_sent: (0..count).filter(|&index| malformed.is(index)).count() as u64,
        latency: Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds"),
        tally: Tally::default(),
        answered: 0,
        errors: [0; 4],
        failure: None,
    };
    let mut reader = ResponseReader::new(stream);
    while result.answered < count {
        let response = match reader.next_response() {
            Ok(Some(response)) => response,
            Ok(None) => {
                result.failure = Some("the server closed the connection".into());
                break;
            }
            Err(error) => {
                result.failure = Some(format!("reading responses: {error}"));
                break;
            }
        };
        let now = Instant::now();
        let request_id = response.request_id();
        if request_id < count {
            let latency = now.saturating_duration_since(schedule.intended(request_id));
            let _ = result.latency.record((latency.as_nanos() as u64).max(1));
        }
        match response {
            Response::Reply { event, .. } => result.tally.add(&event),
            Response::Error { code, .. } => result.errors[code.index()] += 1,
        }
        result.answered += 1;
    }
    result
}

/// What the misbehaving connections did, and anything the server did not answer as it must.
#[derive(Default)]
struct Misbehaved {
    oversized: u64,
    truncated: u64,
    silent: u64,
    failures: Vec<String>,
}

/// Opens `per_second` misbehaving connections a second from `start` to `end`, in turn: one
/// announces a frame over the limit (the server must answer `oversized` and close), one sends
/// half a request and ends its side (`truncated`, then closed), one closes at once (nothing to
/// answer).
fn misbehave(address: &str, per_second: u64, start: Instant, end: Instant) -> Misbehaved {
    let mut done = Misbehaved::default();
    let interval = Duration::from_secs_f64(1.0 / per_second as f64);
    let mut due = start;
    let mut turn = 0u64;
    while due < end {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        due += interval;
        turn += 1;
        let outcome = misbehave_once(address, turn % 3);
        match (turn % 3, outcome) {
            (0, Ok(())) => done.oversized += 1,
            (1, Ok(())) => done.truncated += 1,
            (_, Ok(())) => done.silent += 1,
            (_, Err(error)) => done.failures.push(format!("a misbehaving connection: {error:#}")),
        }
    }
    done
}

fn misbehave_once(address: &str, how: u64) -> Result<()> {
    let mut client = Client::connect(address).context("connecting")?;
    client.stream().set_read_timeout(Some(RESPONSE_TIMEOUT))?;
    let expected = match how {
        0 => {
            let length = wire::MAX_BODY_BYTES as u32 + 1;
            client.send_raw(&length.to_le_bytes())?;
            Some(ErrorCode::Oversized)
        }
        1 => {
            let mut frame = Vec::new();
            let command = keel_examples::ledger::Command::Void { id: 1, pending_id: 2 };
            wire::encode_request(7, &command, &mut frame);
            client.send_raw(&frame[..frame.len() / 2])?;
            client.stream().shutdown(std::net::Shutdown::Write)?;
            Some(ErrorCode::Truncated)
        }
        _ => {
            client.stream().shutdown(std::net::Shutdown::Write)?;
            None
        }
    };
    let first = client.receive().context("reading the answer")?;
    match (expected, first) {
        (Some(code), Some(Response::Error { code: found, .. })) if found == code => {}
        (None, None) => return Ok(()),
        (expected, found) => bail!("expected {expected:?}, got {found:?}"),
    }
    match client.receive().context("reading to the close")? {
        None => Ok(()),
        Some(more) => bail!("the connection was not closed after its error: {more:?}"),
    }
}
