//! A blocking client of `ledger serve` ([`super::wire`]): what `ledger load` and the tests
//! use, and the shape of a client library. Requests can be pipelined: send many, then read
//! the responses, each carrying its request id.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use super::wire::{self, Frame, Response};
use super::Command;

/// Reads responses from a stream.
#[derive(Debug)]
pub struct ResponseReader<R> {
    stream: R,
    /// Received bytes not yet decoded are `buffer[start..end]`.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: Read> ResponseReader<R> {
    /// A reader of `stream`.
    pub fn new(stream: R) -> Self {
        Self { stream, buffer: vec![0; 64 * 1024], start: 0, end: 0 }
    }

    /// The next response, waiting for it; `None` when the server closed the connection
    /// between two responses. A connection that ends inside a frame is `UnexpectedEof`; a
    /// frame that does not decode is `InvalidData`.
    pub fn next_response(&mut self) -> io::Result<Option<Response>> {
        loop {
            match wire::split_frame(&self.buffer[self.start..self.end]) {
                Frame::Complete { body, consumed } => {
                    let response = wire::decode_response(body)
                        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                    self.start += consumed;
                    return Ok(Some(response));
                }
                Frame::Oversized { length } => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the server sent a frame of {length} bytes, over the limit"),
                    ))
                }
                Frame::Incomplete => {}
            }
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = match self.stream.read(&mut self.buffer[self.end..]) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if read == 0 {
                return if self.end == self.start {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the connection ended {} bytes into a response", self.end),
                    ))
                };
            }
            self.end += read;
        }
    }
}

/// A connection to `ledger serve`.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    responses: ResponseReader<TcpStream>,
    scratch: Vec<u8>,
}

impl Client {
    /// Connects, with Nagle's algorithm off (requests are small and awaited).
    pub fn connect(address: impl ToSocketAddrs) -> io::Result<Self> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        let responses = ResponseReader::new(stream.try_clone()?);
        Ok(Self { stream, responses, scratch: Vec::new() })
    }

    /// Sends a request without waiting for its response.
    pub fn send(&mut self, request_id: u64, command: &Command) -> io::Result<()> {
        self.scratch.clear();
        wire::encode_request(request_id, command, &mut self.scratch);
        self.stream.write_all(&self.scratch)
    }

    /// Sends bytes as they are: for tests of what the server does with bad frames.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next response, waiting for it; `None` once the server closed the connection.
    pub fn receive(&mut self) -> io::Result<Option<Response>> {
        self.responses.next_response()
    }

    /// Sends a request and waits for the next response (which is its own when nothing else is
    /// in flight on this connection).
    pub fn call(&mut self, request_id: u64, command: &Command) -> io::Result<Response> {
        self.send(request_id, command)?;
        self.receive()?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")
        })
    }

    /// Closes the sending side: the server answers what it has and then closes.
    pub fn finish_sending(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    /// The stream, for a second thread to write on (`try_clone` it).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}
