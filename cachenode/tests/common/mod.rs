//! Helpers shared by the cache-node tests: real encrypted chunks, real
//! directory stores, a HTTP/1.1 client, stub servers and a hang watchdog.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use cachetiers::DirStore;
use manifest::ChunkId;
use manifest::convergent::{DomainSecret, EncryptedChunk, encrypt_chunk};

/// Generous bound for anything that could hang; never a timing assertion.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// A real encrypted chunk of 64 KiB, different for each `n`.
pub fn chunk(n: u32) -> EncryptedChunk {
    let secret = DomainSecret::from_bytes([7; 32]);
    let mut plaintext = Vec::with_capacity(64 * 1024);
    let mut state = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while plaintext.len() < 64 * 1024 {
        // xorshift: cheap bytes that differ per chunk.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        plaintext.extend_from_slice(&state.to_le_bytes());
    }
    encrypt_chunk(&secret, &plaintext)
}

/// A new directory store in a new temporary directory.
pub fn dir_store() -> (tempfile::TempDir, Arc<DirStore>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = DirStore::create(dir.path().join("store")).expect("create store");
    (dir, Arc::new(store))
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` to `addr` over a fresh connection and reads the
/// whole answer (the server closes: `Connection: close`).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    Answer {
        status,
        headers: head,
        body: raw[split + 4..].to_vec(),
    }
}

/// `GET /v1/chunks/{id}`.
pub fn get_chunk(addr: SocketAddr, id: &ChunkId) -> Answer {
    http(addr, "GET", &format!("/v1/chunks/{id}"))
}

/// A stub HTTP server on its own runtime; stops when dropped.
pub struct Stub {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Stub {
    /// Serves `router` on a free loopback port.
    pub fn start(router: axum::Router) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, router).await });
        Self {
            addr,
            runtime: Some(runtime),
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A node that accepts requests for chunks and never answers.
pub fn stalled_node() -> Stub {
    Stub::start(axum::Router::new().route(
        "/v1/chunks/{id}",
        axum::routing::get(std::future::pending::<String>),
    ))
}

/// A node that answers every chunk request with 200 and the wrong bytes.
pub fn lying_node() -> Stub {
    Stub::start(axum::Router::new().route(
        "/v1/chunks/{id}",
        axum::routing::get(|| async { b"these are not the bytes you want".to_vec() }),
    ))
}

/// A loopback URL where nothing listens (bound, then closed).
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Runs `f` on a thread and fails the test if it has not finished within
/// [`WATCHDOG`] (a hang guard, not a timing assertion).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(value) => value,
        Err(e) => panic!("{what}: no result within {WATCHDOG:?} ({e})"),
    }
}
