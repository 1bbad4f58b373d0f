//! The simulation's network: a TCP proxy on loopback, in the test's process, between remote
//! replicas and the primary's replication listener. Replicas dial the proxy's fixed address;
//! the proxy dials whichever primary is up (its address changes at every restart and
//! promotion), and the simulation can cut every connection, flip one bit of what the primary
//! sends next, or partition the link (every connection cut and new ones closed at once).
//!
//! The bytes still cross real sockets: the engine's replication code runs as it does in
//! production, and the simulation controls everything that happens on the link.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
struct State {
    /// The primary's replication listener.
    upstream: Mutex<Option<SocketAddr>>,
    partitioned: AtomicBool,
    /// Flip one bit in the next bytes forwarded from the primary.
    corrupt: AtomicBool,
    /// Both sockets of every live link, to cut them.
    links: Mutex<Vec<TcpStream>>,
    stopping: AtomicBool,
}

/// The proxy.
pub struct Network {
    address: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl Network {
    /// Listens on a loopback port of the system's choosing.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let acceptor = std::thread::Builder::new()
            .name("simulated-network".into())
            .spawn(move || accept(&listener, &shared))
            .expect("a thread");
        Self { address, state, acceptor: Some(acceptor) }
    }

    /// Where replicas connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Links made from now on go to `primary`.
    pub fn connect_to(&self, primary: SocketAddr) {
        *self.state.upstream.lock().expect("not poisoned") = Some(primary);
    }

    /// Cuts every live link (both ends see the connection end).
    pub fn cut(&self) {
        cut(&self.state);
    }

    /// Flips one bit in the next bytes the primary sends over any link.
    pub fn corrupt_next(&self) {
        self.state.corrupt.store(true, Ordering::SeqCst);
    }

    /// Takes back a flip not yet made.
    pub fn corrupt_clear(&self) {
        self.state.corrupt.store(false, Ordering::SeqCst);
    }

    /// A partition: every link cut and new ones closed at once, until it heals.
    pub fn partition(&self, on: bool) {
        self.state.partitioned.store(on, Ordering::SeqCst);
        if on {
            self.cut();
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the acceptor from `accept`.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn cut(state: &State) {
    for socket in state.links.lock().expect("not poisoned").drain(..) {
        let _ = socket.shutdown(Shutdown::Both);
    }
}

fn accept(listener: &TcpListener, state: &Arc<State>) {
    for replica in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(replica) = replica else { continue };
        let upstream = *state.upstream.lock().expect("not poisoned");
        let primary = match upstream {
            Some(address) if !state.partitioned.load(Ordering::SeqCst) => {
                TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()
            }
            _ => None,
        };
        let Some(primary) = primary else {
            // Unreachable: the replica sees its connection end and tries again later.
            let _ = replica.shutdown(Shutdown::Both);
            continue;
        };
        let _ = replica.set_nodelay(true);
        let _ = primary.set_nodelay(true);
        let (Ok(replica_reader), Ok(primary_reader)) = (replica.try_clone(), primary.try_clone())
        else {
            continue;
        };
        {
            let mut links = state.links.lock().expect("not poisoned");
            links.extend(replica.try_clone().ok());
            links.extend(primary.try_clone().ok());
        }
        let upstream_state = Arc::clone(state);
        std::thread::spawn(move || pump(replica_reader, primary, &upstream_state, false));
        let downstream_state = Arc::clone(state);
        std::thread::spawn(move || pump(primary_reader, replica, &downstream_state, true));
    }
}

/// Copies bytes from `from` to `to` until either ends; flips a bit when asked, on the
/// primary's side of the link.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &State, from_primary: bool) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if state.partitioned.load(Ordering::SeqCst) {
            break;
        }
        if from_primary && state.corrupt.swap(false, Ordering::SeqCst) {
            // The middle of what arrived: past a frame's header more often than not.
            buffer[read / 2] ^= 1 << (read % 8);
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
