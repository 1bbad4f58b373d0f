//! Request/response over the engine: a caller publishes a command and waits for that
//! command's events, the shape of a service in front of the engine. One router thread reads
//! the output ring and hands each waited-for command's events to its caller; callers do not
//! scan the output, and commands nobody waits for cost the router one atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_ring::EventHandler;
use parking_lot::{Condvar, Mutex};

use crate::codec::Codec;
use crate::engine::{OutputSlot, Shared};
use crate::error::EngineError;
use crate::machine::StateMachine;
use crate::publisher::Publisher;

/// How long a waiting caller sleeps between checks that the engine still runs.
const CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// One caller's place to receive a command's events.
#[derive(Debug)]
pub(crate) struct Mailbox<E> {
    reply: Mutex<Reply<E>>,
    ready: Condvar,
}

#[derive(Debug)]
struct Reply<E> {
    events: Vec<E>,
    done: bool,
}

impl<E> Mailbox<E> {
    fn new() -> Self {
        Self { reply: Mutex::new(Reply { events: Vec::new(), done: false }), ready: Condvar::new() }
    }
}

/// The commands being waited for, by sequence.
#[derive(Debug)]
pub(crate) struct Router<E> {
    pending: Mutex<HashMap<u64, Arc<Mailbox<E>>>>,
    /// How many entries `pending` has: the router looks in it only when it is not zero.
    waiting: AtomicUsize,
    /// The output ring closed: nothing more will be delivered.
    closed: AtomicBool,
}

impl<E> Router<E> {
    pub(crate) fn new() -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    fn register(&self, sequence: u64, mailbox: &Arc<Mailbox<E>>) {
        self.pending.lock().insert(sequence, Arc::clone(mailbox));
        self.waiting.fetch_add(1, Ordering::AcqRel);
    }
}

/// The router's handler on the output ring.
#[derive(Debug)]
pub(crate) struct RouterHandler<E> {
    pub(crate) router: Arc<Router<E>>,
}

impl<E: Clone + Send + Sync + 'static> EventHandler<OutputSlot<E>> for RouterHandler<E> {
    fn on_event(&mut self, slot: &OutputSlot<E>, _: u64, _: bool) {
        if self.router.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut pending = self.router.pending.lock();
        let Some(mailbox) = pending.get(&slot.sequence) else { return };
        let mut reply = mailbox.reply.lock();
        if let Some(event) = &slot.event {
            reply.events.push(event.clone());
        }
        if slot.last {
            reply.done = true;
            mailbox.ready.notify_one();
            drop(reply);
            pending.remove(&slot.sequence);
            self.router.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn on_shutdown(&mut self) {
        self.router.closed.store(true, Ordering::Release);
        for mailbox in self.router.pending.lock().values() {
            let _guard = mailbox.reply.lock();
            mailbox.ready.notify_one();
        }
    }
}

/// A publisher that can wait for the events of its own commands. `Clone` it per calling
/// thread; each clone has one call in flight at a time.
pub struct Requester<M: StateMachine, C: Codec> {
    publisher: Publisher<M, C>,
    router: Arc<Router<M::Event>>,
    mailbox: Arc<Mailbox<M::Event>>,
    shared: Arc<Shared>,
}

impl<M: StateMachine, C: Codec> Requester<M, C>
where
    M::Event: Clone,
{
    pub(crate) fn new(
        publisher: Publisher<M, C>,
        router: Arc<Router<M::Event>>,
        shared: Arc<Shared>,
    ) -> Self {
        Self { publisher, router, mailbox: Arc::new(Mailbox::new()), shared }
    }

    /// Publishes `command` and waits until it has been applied; returns its sequence and its
    /// events. Fails if the engine stops before.
    pub fn call(&mut self, command: M::Command) -> Result<(u64, Vec<M::Event>), EngineError> {
        let mut events = Vec::new();
        let sequence = self.call_with(command, |found| events.extend_from_slice(found))?;
        Ok((sequence, events))
    }

    /// Like [`call`](Self::call), but lends the events to `receive` instead of returning
    /// them: the mailbox's buffer is reused, so a call allocates nothing once it has grown.
    pub fn call_with(
        &mut self,
        command: M::Command,
        receive: impl FnOnce(&[M::Event]),
    ) -> Result<u64, EngineError> {
        {
            let mut reply = self.mailbox.reply.lock();
            reply.events.clear();
            reply.done = false;
        }
        let router = &self.router;
        let mailbox = &self.mailbox;
        // Registered while the slot is claimed and not yet published, so the router cannot
        // see the command's events before it knows someone waits for them.
        let sequence =
            self.publisher.publish_then(command, |sequence| router.register(sequence, mailbox))?;
        let mut reply = self.mailbox.reply.lock();
        while !reply.done {
            if self.router.closed.load(Ordering::Acquire) {
                return Err(self.stopped(sequence));
            }
            self.mailbox.ready.wait_for(&mut reply, CHECK_INTERVAL);
        }
        receive(&reply.events);
        Ok(sequence)
    }

    /// The error for a call whose command will never be answered.
    fn stopped(&self, sequence: u64) -> EngineError {
        self.router.pending.lock().remove(&sequence);
        match self.shared.halted() {
            Some(halt) => EngineError::Halted(halt),
            None => EngineError::Closed,
        }
    }
}

impl<M: StateMachine, C: Codec> Clone for Requester<M, C> {
    fn clone(&self) -> Self {
        Self {
            publisher: self.publisher.clone(),
            router: Arc::clone(&self.router),
            mailbox: Arc::new(Mailbox::new()),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: StateMachine, C: Codec> std::fmt::Debug for Requester<M, C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Requester").field("publisher", &self.publisher).finish()
    }
}
