//! A `ledger serve` child process on a free port, for the tests that talk to the real binary.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};

/// A `ledger serve` child on a free port.
pub struct Service {
    child: Child,
    pub address: SocketAddr,
    stdout: BufReader<std::process::ChildStdout>,
    stopped: bool,
}

impl Drop for Service {
    /// A failed test must not leave the service running.
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Service {
    pub fn start(data: &Path) -> Self {
        let mut child = Process::new(env!("CARGO_BIN_EXE_ledger"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ledger serve starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("the first line");
        let address = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the first line names the address: {first:?}"))
            .parse()
            .expect("an address");
        Self { child, address, stdout, stopped: false }
    }

    /// SIGTERM, then the rest of its output once it exited successfully.
    pub fn stop(mut self) -> String {
        self.stopped = true;
        let status = Process::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("the output");
        let status = self.child.wait().expect("the service exits");
        assert!(status.success(), "ledger serve failed: {status}\n{rest}");
        rest
    }
}

impl Service {
    /// The process id, to read its memory in `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
