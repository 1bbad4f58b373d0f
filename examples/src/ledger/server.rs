//! `ledger serve`'s gateway: one thread accepts TCP connections, decodes requests
//! ([`super::wire`]), publishes them to the engine, and writes each command's reply back to
//! the connection that sent it. With the compact topology that is two threads in all: this
//! one and the engine's.
//!
//! ```text
//!  clients ──TCP──► gateway thread ──publish──► engine (journal, then apply)
//!     ▲               │  ▲                                  │
//!     └──── replies ──┘  └──────── output poller ◄──────────┘
//! ```
//!
//! Rules the gateway keeps:
//! - A body is decoded completely before anything is published; one that does not decode gets
//!   a `malformed` error and the connection stays usable, since its length prefix kept the
//!   framing intact. An oversized prefix gets `oversized` and the connection is closed: the
//!   framing after it cannot be trusted. A connection that ends inside a frame gets
//!   `truncated`.
//! - Everything is bounded: connections ([`Limits::connections`]), commands in flight per
//!   connection and in all ([`WINDOW`]), unsent reply bytes per connection. A connection at a
//!   bound is simply not read until it drops below it, so TCP's flow control pushes back on
//!   that client alone.
//! - Replies go to the connection by slot and generation, so a reply for a connection that
//!   closed is dropped, never sent to a newcomer that reused its slot.
//! - If the engine stops (fail-stop or shutdown), every request in flight is answered
//!   `unavailable` and the gateway returns.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_engine::{EngineError, OutputPoller, Publish};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::wire::{self, ErrorCode, Frame};
use super::{Event, Ledger};

/// Commands in flight at most (published, reply not yet read), over all connections: the
/// size of the table that maps a sequence to its connection.
pub const WINDOW: usize = 1 << 16;
const WINDOW_MASK: u64 = WINDOW as u64 - 1;

/// Bytes buffered per connection for incoming frames. A frame is at most
/// `LENGTH_BYTES + MAX_BODY_BYTES`, so one always fits.
const INPUT_BYTES: usize = 64 * 1024;
const _: () = assert!(INPUT_BYTES >= wire::LENGTH_BYTES + wire::MAX_BODY_BYTES);

/// How long the gateway sleeps in `poll` when nothing is in flight: the delay before it sees
/// a stop request.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// How long a closing connection's peer has to close its side after ours is shut down.
const LINGER: Duration = Duration::from_secs(2);

/// How long a stop waits for the commands in flight to be answered and the replies sent.
const DRAIN: Duration = Duration::from_secs(10);

/// Deliveries read from the output ring per turn of the loop.
const DELIVERIES_PER_TURN: usize = 4096;

const LISTENER: Token = Token(0);

/// The gateway's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; one more is accepted and closed at once.
    pub connections: usize,
    /// Commands in flight per connection; its further requests wait in its socket.
    pub in_flight_per_connection: u32,
    /// Reply bytes not yet sent per connection; above this its requests wait too.
    pub unsent_bytes_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 1024,
            in_flight_per_connection: 4096,
            unsent_bytes_per_connection: 1 << 20,
        }
    }
}

/// What a run of the gateway did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed at once: [`Limits::connections`] were open, or the socket could not
    /// be set up.
    pub connections_refused: u64,
    /// Requests decoded and published.
    pub published: u64,
    /// Replies sent (or queued for a connection that then closed).
    pub replies: u64,
    /// Error responses, by [`ErrorCode`] (index `code - 1`).
    pub errors: [u64; 4],
    /// The last sequence published, 0 if none.
    pub last_sequence: u64,
    /// Why the engine stopped under the gateway, if it did.
    pub engine_stopped: Option<String>,
}

impl ServeReport {
    /// Error responses of `code`.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors[code.index()]
    }
}

/// A command in flight: which connection gets its reply.
#[derive(Clone, Copy, Debug, Default)]
struct InFlight {
    /// 0 when the entry is free.
    sequence: u64,
    request_id: u64,
    slot: u32,
    generation: u32,
    replied: bool,
}

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    /// Received bytes not yet decoded are `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Reply bytes; `output[sent..]` are not yet sent.
    output: Vec<u8>,
    sent: usize,
    /// Readiness seen and not yet used up (epoll is edge-triggered: a readiness is reported
    /// once, so it is remembered until a call returns `WouldBlock`).
    readable: bool,
    writable: bool,
    /// The peer closed its side.
    eof: bool,
    /// No more requests are taken: after an oversized frame, at end of input, or on stop.
    closing: bool,
    /// Our side was shut down at this moment; waiting for the peer to close.
    lingering: Option<Instant>,
    /// An I/O error: dropped at the end of this turn.
    broken: bool,
    in_flight: u32,
}

impl Connection {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            input: vec![0; INPUT_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            output: Vec::new(),
            sent: 0,
            readable: true,
            writable: true,
            eof: false,
            closing: false,
            lingering: None,
            broken: false,
            in_flight: 0,
        }
    }

    fn unsent(&self) -> usize {
        self.output.len() - self.sent
    }

    /// Reads what fits; returns whether anything was read. Bytes of a closing connection are
    /// read and dropped, so that closing it does not reset the peer before it has read our
    /// last reply.
    fn fill(&mut self) -> bool {
        let mut progress = false;
        while self.readable && !self.broken {
            if self.closing {
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 && self.end == self.input.len() {
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.input.len() {
                return progress;
            }
            match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    self.readable = false;
                }
                Ok(read) => {
                    self.end += read;
                    progress = true;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.broken = true,
            }
        }
        progress
    }

    /// Sends what the socket takes; returns whether anything was sent.
    fn flush(&mut self) -> bool {
        let mut progress = false;
        while self.writable && !self.broken && self.unsent() > 0 {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(0) => self.broken = true,
                Ok(written) => {
                    self.sent += written;
                    progress = true;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.broken = true,
            }
        }
        if self.unsent() == 0 {
            self.output.clear();
            self.sent = 0;
        }
        progress
    }

    fn error(&mut self, request_id: u64, code: ErrorCode, message: &str, report: &mut ServeReport) {
        wire::encode_error(request_id, code, message, &mut self.output);
        report.errors[code.index()] += 1;
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    connection: Option<Connection>,
}

/// The gateway: a listening socket and its connections.
#[derive(Debug)]
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    address: SocketAddr,
    limits: Limits,
    slots: Vec<Slot>,
    free: Vec<usize>,
    open: usize,
    table: Vec<InFlight>,
    in_flight: usize,
    report: ServeReport,
}

impl Server {
    /// Binds the listening socket (port 0 picks a free port: see
    /// [`local_address`](Self::local_address)).
    pub fn bind(address: SocketAddr, limits: Limits) -> io::Result<Self> {
        assert!(limits.connections > 0 && limits.in_flight_per_connection > 0);
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(address)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let address = listener.local_addr()?;
        Ok(Self {
            poll,
            listener: Some(listener),
            address,
            limits,
            slots: Vec::new(),
            free: Vec::new(),
            open: 0,
            table: vec![InFlight::default(); WINDOW],
            in_flight: 0,
            report: ServeReport::default(),
        })
    }

    /// The address it listens on.
    pub fn local_address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `stop` is set (then answers what is in flight, sends the replies and
    /// closes every connection) or the engine stops (then answers what is in flight
    /// `unavailable`). The publisher and the poller must be the engine's only ones: the
    /// gateway maps every delivery's sequence to a request it published.
    pub fn run(
        mut self,
        publisher: &mut impl Publish<Ledger>,
        output: &mut OutputPoller<Event>,
        stop: &AtomicBool,
    ) -> io::Result<ServeReport> {
        let mut events = Events::with_capacity(1024);
        let mut drain_deadline = None;
        let mut engine_running = true;
        loop {
            if drain_deadline.is_none() && stop.load(Ordering::Acquire) {
                drain_deadline = Some(Instant::now() + DRAIN);
                self.stop_taking_requests();
            }
            if let Some(deadline) = drain_deadline {
                if (self.in_flight == 0 && self.open == 0) || Instant::now() > deadline {
                    return Ok(self.report);
                }
            }
            let busy = self.in_flight > 0 || drain_deadline.is_some();
            let timeout = if busy { Duration::ZERO } else { IDLE_POLL };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            let mut accept = false;
            for event in events.iter() {
                if event.token() == LISTENER {
                    accept = true;
                    continue;
                }
                let slot = self.slots.get_mut(event.token().0 - 1);
                let Some(connection) = slot.and_then(|slot| slot.connection.as_mut()) else {
                    continue;
                };
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    connection.readable = true;
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    connection.writable = true;
                }
            }
            if accept {
                self.accept();
            }
            let mut progress = false;
            if engine_running {
                let turn = self
                    .take_requests(publisher)
                    .and_then(|taken| Ok(taken | self.take_replies(output)?));
                match turn {
                    Ok(turned) => progress |= turned,
                    Err(error) => {
                        engine_running = false;
                        // Replies already on the output ring are true answers: deliver them
                        // before answering the rest `unavailable`.
                        let deadline = Instant::now() + LINGER;
                        while self.in_flight > 0 && Instant::now() < deadline {
                            match self.take_replies(output) {
                                Ok(true) => {}
                                Ok(false) => std::thread::yield_now(),
                                Err(_) => break,
                            }
                        }
                        self.fail_in_flight(&error);
                        drain_deadline = Some(Instant::now() + LINGER);
                    }
                }
            } else {
                // Only to see the peers close: every connection is closing.
                for connection in self.slots.iter_mut().filter_map(|s| s.connection.as_mut()) {
                    progress |= connection.fill();
                }
            }
            progress |= self.flush_and_close();
            if busy && !progress {
                std::thread::yield_now();
            }
        }
    }

    /// Accepts every connection waiting; one that cannot be taken is closed.
    fn accept(&mut self) {
        let Some(listener) = &self.listener else { return };
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                // A connection that failed before we took it, or a signal: try the next.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                // Out of file descriptors, say: leave the rest in the backlog for later.
                Err(_) => return,
            };
            if self.open >= self.limits.connections {
                self.report.connections_refused += 1;
                drop(stream);
                continue;
            }
            let index = self.free.pop().unwrap_or_else(|| {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            });
            let mut stream = stream;
            // Replies are small and each is awaited: do not let Nagle hold them back. A
            // connection that cannot be set up is closed; the service goes on.
            let interest = Interest::READABLE | Interest::WRITABLE;
            let set_up = stream.set_nodelay(true).and_then(|()| {
                self.poll.registry().register(&mut stream, Token(index + 1), interest)
            });
            if set_up.is_err() {
                self.free.push(index);
                self.report.connections_refused += 1;
                continue;
            }
            let slot = &mut self.slots[index];
            slot.generation = slot.generation.wrapping_add(1);
            slot.connection = Some(Connection::new(stream));
            self.open += 1;
            self.report.connections += 1;
        }
    }

    /// Reads and publishes the requests of every connection that has any, within the bounds.
    fn take_requests(&mut self, publisher: &mut impl Publish<Ledger>) -> Result<bool, EngineError> {
        let mut progress = false;
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            let generation = slot.generation;
            let Some(connection) = slot.connection.as_mut() else { continue };
            loop {
                progress |= connection.fill();
                let mut taken = false;
                while !connection.closing
                    && connection.in_flight < self.limits.in_flight_per_connection
                    && connection.unsent() < self.limits.unsent_bytes_per_connection
                    && self.in_flight < WINDOW
                {
                    let received = &connection.input[connection.start..connection.end];
                    let (decoded, consumed) = match wire::split_frame(received) {
                        Frame::Incomplete => break,
                        Frame::Complete { body, consumed } => {
                            (wire::decode_request(body), consumed)
                        }
                        Frame::Oversized { length } => {
                            let message = format!(
                                "a frame of {length} bytes is over the limit of {}; closing",
                                wire::MAX_BODY_BYTES
                            );
                            connection.error(0, ErrorCode::Oversized, &message, &mut self.report);
                            connection.closing = true;
                            break;
                        }
                    };
                    match decoded {
                        Ok((request_id, command)) => {
                            let sequence = match publisher.try_publish(command) {
                                Ok(sequence) => sequence,
                                // The engine is behind: come back after reading its replies.
                                Err(EngineError::Full) => break,
                                Err(error) => return Err(error),
                            };
                            let entry = &mut self.table[(sequence & WINDOW_MASK) as usize];
                            // The window bounds the commands in flight to the table's size, and
                            // sequences are consecutive: an entry is free when its turn comes.
                            assert_eq!(entry.sequence, 0, "sequence {sequence}'s entry is taken");
                            *entry = InFlight {
                                sequence,
                                request_id,
                                slot: index as u32,
                                generation,
                                replied: false,
                            };
                            self.in_flight += 1;
                            connection.in_flight += 1;
                            self.report.published += 1;
                            self.report.last_sequence = sequence;
                        }
                        Err(error) => connection.error(
                            error.request_id.unwrap_or(0),
                            ErrorCode::Malformed,
                            &error.reason,
                            &mut self.report,
                        ),
                    }
                    connection.start += consumed;
                    taken = true;
                }
                progress |= taken;
                if !taken || !connection.readable || connection.closing {
                    break;
                }
            }
            // At the peer's end of input, the connection closes once every whole frame it
            // sent is taken (some may wait at a bound); what is left then is a cut frame.
            let left = &connection.input[connection.start..connection.end];
            if connection.eof && !connection.closing && wire::split_frame(left) == Frame::Incomplete
            {
                connection.closing = true;
                let partial = left;
                if !partial.is_empty() {
                    // The request id, if the frame got that far.
                    let request_id = partial
                        .get(wire::LENGTH_BYTES..wire::LENGTH_BYTES + 8)
                        .map_or(0, |bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes")));
                    let message =
                        format!("the connection ended {} bytes into a frame", partial.len());
                    connection.error(request_id, ErrorCode::Truncated, &message, &mut self.report);
                }
                connection.start = 0;
                connection.end = 0;
            }
        }
        Ok(progress)
    }

    /// Reads the engine's deliveries and queues each reply on its connection.
    fn take_replies(&mut self, output: &mut OutputPoller<Event>) -> Result<bool, EngineError> {
        let Self { table, slots, in_flight, report, .. } = self;
        let delivered = output.poll(DELIVERIES_PER_TURN, |delivery| {
            let entry = &mut table[(delivery.sequence & WINDOW_MASK) as usize];
            assert_eq!(entry.sequence, delivery.sequence, "every command is the gateway's");
            let slot = &mut slots[entry.slot as usize];
            let mut connection =
                slot.connection.as_mut().filter(|_| slot.generation == entry.generation);
            // The ledger emits one reply per command, after the expiries that the command's
            // time triggered; the expiries answer nobody and stay on the engine's side.
            if let Some(event) = delivery.event.filter(|event| event.reply_to().is_some()) {
                if let Some(connection) = connection.as_deref_mut() {
                    let output = &mut connection.output;
                    wire::encode_reply(entry.request_id, delivery.sequence, event, output);
                }
                entry.replied = true;
                report.replies += 1;
            }
            if delivery.last {
                if let Some(connection) = connection {
                    if !entry.replied {
                        let message = "the command was applied but emitted no reply";
                        connection.error(entry.request_id, ErrorCode::Unavailable, message, report);
                    }
                    connection.in_flight -= 1;
                }
                *entry = InFlight::default();
                *in_flight -= 1;
            }
        })?;
        Ok(delivered > 0)
    }

    /// Sends what the sockets take, and closes the connections that are done: broken ones at
    /// once; closing ones once everything they asked for is answered and sent, after our side
    /// is shut down and the peer closed theirs (or [`LINGER`] passed).
    fn flush_and_close(&mut self) -> bool {
        let mut progress = false;
        for index in 0..self.slots.len() {
            let Some(connection) = self.slots[index].connection.as_mut() else { continue };
            progress |= connection.flush();
            let done = connection.broken
                || match connection.lingering {
                    Some(since) => connection.eof || since.elapsed() > LINGER,
                    None if connection.closing
                        && connection.in_flight == 0
                        && connection.unsent() == 0 =>
                    {
                        if !connection.eof {
                            // Shut down our side and read until the peer closes theirs: closing
                            // with bytes unread would reset the connection, and the peer could
                            // lose the replies it has not read yet.
                            let _ = connection.stream.shutdown(Shutdown::Write);
                            connection.lingering = Some(Instant::now());
                        }
                        connection.eof
                    }
                    None => false,
                };
            if done {
                if let Some(mut connection) = self.slots[index].connection.take() {
                    let _ = self.poll.registry().deregister(&mut connection.stream);
                    self.open -= 1;
                    self.free.push(index);
                    progress = true;
                }
            }
        }
        progress
    }

    /// Stops accepting connections and taking requests; what is in flight is still answered.
    fn stop_taking_requests(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for connection in self.slots.iter_mut().filter_map(|slot| slot.connection.as_mut()) {
            connection.closing = true;
        }
    }

    /// The engine stopped: answers every request in flight `unavailable`.
    fn fail_in_flight(&mut self, error: &EngineError) {
        let message = format!(
            "{error}; the request may or may not be journaled: retry it with the same transfer \
             id once the service is back"
        );
        self.report.engine_stopped = Some(error.to_string());
        for entry in self.table.iter_mut().filter(|entry| entry.sequence != 0) {
            let slot = &mut self.slots[entry.slot as usize];
            if let Some(connection) =
                slot.connection.as_mut().filter(|_| slot.generation == entry.generation)
            {
                let code = ErrorCode::Unavailable;
                connection.error(entry.request_id, code, &message, &mut self.report);
                connection.in_flight -= 1;
            }
            *entry = InFlight::default();
        }
        self.in_flight = 0;
        self.stop_taking_requests();
    }
}
