//! A TCP proxy in front of a real server that holds every piece of a
//! request for a fixed delay before forwarding it: a slow origin (a far
//! S3 region) made of a real one. It counts the requests forwarded and
//! the ones being held right now, so a test can act while a fetch is
//! surely in flight.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    held: AtomicU64,
}

/// A running proxy; stops accepting on drop (open connections end when
/// either side closes).
pub struct DelayProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `upstream`, each
    /// read from a client held `delay` first.
    pub fn start(upstream: SocketAddr, delay: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&counters), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("delay-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let c = Arc::clone(&c);
                    std::thread::spawn(move || {
                        let _ = relay(client, upstream, delay, &c);
                    });
                }
            })?;
        Ok(Self {
            addr,
            counters,
            stop,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests (reads from a client) forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::SeqCst)
    }

    /// Requests being held right now.
    pub fn held(&self) -> u64 {
        self.counters.held.load(Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies client to upstream (each read held `delay`) and upstream to
/// client, until either side closes.
fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    counters: &Counters,
) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    let (mut from_server, mut to_client) = (server.try_clone()?, client.try_clone()?);
    let back = std::thread::spawn(move || {
        let _ = io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let (mut from_client, mut to_server) = (client, server);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        counters.held.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(delay);
        counters.held.fetch_sub(1, Ordering::SeqCst);
        counters.forwarded.fetch_add(1, Ordering::SeqCst);
        if to_server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to_server.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}
