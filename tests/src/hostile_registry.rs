//! A hostile registry: a small HTTP server speaking just enough of the
//! distribution API (`/v2/`, manifests, blobs with Range) to serve an OCI
//! layout, and then misbehaving in one chosen way that the real
//! `docker-registry` cannot be made to: a corrupt or truncated blob, an
//! oversized manifest, silence, a redirect to another host, a 5xx or a
//! connection cut on a blob's first request, or half a blob held back. It is the hostile peer of
//! the bad-input and retry tests, not a stand-in for the registry.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How the server misbehaves.
#[derive(Clone, Debug)]
pub enum Trick {
    /// Serve what it has, correctly.
    None,
    /// Flip a byte in every layer blob (same size).
    CorruptBlobs,
    /// Flip a byte in the config blob (same size); layers are served.
    CorruptConfig,
    /// Promise a layer blob's full length, send half of it, close.
    TruncateBlobs,
    /// Serve every manifest padded past 4 MiB.
    HugeManifest,
    /// Never answer blob requests.
    StallBlobs,
    /// Redirect blob requests to `base` (`http://HOST:PORT`).
    RedirectBlobs(String),
    /// Require basic auth with these credentials.
    Basic(String, String),
    /// Basic auth, and blobs redirected to `base`.
    BasicThenRedirect(String, String, String),
    /// Answer the first request for the API root `/v2/` and for each
    /// layer blob with a 503, then serve them.
    FailFirst,
    /// On the first request for each layer blob, promise the full length,
    /// send half, and close; later requests are served (Range honoured).
    CutFirst,
    /// Send the first half of each layer blob, then hold the rest until
    /// the gate opens (or 30 s pass).
    HoldHalf(Gate),
    /// Break the first tar header of each uncompressed layer blob (its
    /// checksum field; same size), send the first half, and hold the rest
    /// this long: the tar breaks before the blob's digest can be checked.
    CorruptHeaderThenHold(Duration),
}

/// A gate a test opens to let a held answer go on.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// Lets every held answer go on.
    pub fn open(&self) {
        let (open, changed) = &*self.0;
        if let Ok(mut o) = open.lock() {
            *o = true;
            changed.notify_all();
        }
    }

    /// Waits until the gate opens, at most `limit`.
    fn wait(&self, limit: Duration) {
        let (open, changed) = &*self.0;
        if let Ok(o) = open.lock() {
            let _ = changed.wait_timeout_while(o, limit, |o| !*o);
        }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The path.
    pub path: String,
    /// The Authorization header.
    pub auth: Option<String>,
    /// The first byte a `Range: bytes=N-` header asked for (0 without one).
    pub range_from: usize,
    /// The HTTP status the server answered with.
    pub status: u16,
    /// Body bytes written before the connection was cut, when it was.
    pub cut_at: Option<usize>,
}

struct State {
    manifests: BTreeMap<String, (String, Vec<u8>)>,
    blobs: BTreeMap<String, Vec<u8>>,
    layers: Vec<String>,
    trick: Trick,
    /// Every request, in arrival order (pushed before it is answered).
    seen: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

/// A running hostile registry; stops accepting on drop.
pub struct HostileRegistry {
    addr: SocketAddr,
    state: Arc<State>,
}

impl HostileRegistry {
    /// Serve the image `ref_name` of the OCI layout `layout` (and every blob
    /// in it) under any repository, on `ip` (a loopback address).
    pub fn start(
        layout: &Path,
        ref_name: &str,
        ip: [u8; 4],
        trick: Trick,
    ) -> std::io::Result<Self> {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
        let mut blobs = BTreeMap::new();
        for e in std::fs::read_dir(layout.join("blobs/sha256"))? {
            let e = e?;
            let name = format!("sha256:{}", e.file_name().to_string_lossy());
            blobs.insert(name, std::fs::read(e.path())?);
        }
        let mut manifests = BTreeMap::new();
        let mut layers = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let digest = m["digest"].as_str().unwrap_or_default().to_owned();
            let media = m["mediaType"].as_str().unwrap_or_default().to_owned();
            let bytes = blobs.get(&digest).cloned().unwrap_or_default();
            let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            for l in doc["layers"].as_array().into_iter().flatten() {
                layers.push(l["digest"].as_str().unwrap_or_default().to_owned());
            }
            manifests.insert(digest, (media.clone(), bytes.clone()));
            if m["annotations"]["org.opencontainers.image.ref.name"] == ref_name {
                manifests.insert(ref_name.to_owned(), (media, bytes));
            }
        }
        let listener = TcpListener::bind(SocketAddr::from((ip, 0)))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            manifests,
            blobs,
            layers,
            trick,
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        crate::registry::accept_loop(
            listener,
            state.clone(),
            |s| s.stop.load(Ordering::SeqCst),
            serve,
        );
        Ok(HostileRegistry { addr, state })
    }

    /// `HOST:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far: path and Authorization header.
    pub fn seen(&self) -> Vec<(String, Option<String>)> {
        self.requests()
            .into_iter()
            .map(|r| (r.path, r.auth))
            .collect()
    }

    /// Every request so far, with its Range, answer and cut.
    pub fn requests(&self) -> Vec<Request> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// How many requests so far were for blobs (configs and layers).
    pub fn blob_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.contains("/blobs/"))
            .count()
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)
}

/// [`respond`] in two halves: the head promising the whole body, and the
/// first half; then `between()`, and the rest if it says so, else the
/// connection closed short.
fn respond_in_halves(
    conn: &mut TcpStream,
    status: &str,
    body: &[u8],
    between: impl FnOnce() -> bool,
) -> std::io::Result<()> {
    let half = body.len() / 2;
    let head = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(&body[..half])?;
    conn.flush()?;
    if between() {
        conn.write_all(&body[half..])?;
        conn.flush()
    } else {
        conn.shutdown(std::net::Shutdown::Both)
    }
}

fn serve(s: &State, mut conn: TcpStream) -> std::io::Result<()> {
    let mut first = [0u8; 1];
    if conn.peek(&mut first)? == 1 && first[0] == 0x16 {
        // A TLS handshake: this server speaks plain HTTP only.
        return Ok(());
    }
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    let (mut auth, mut range) = (None, 0usize);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("authorization") {
            auth = Some(v.to_owned());
        } else if k.eq_ignore_ascii_case("range") {
            range = v
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    let index = s.seen.lock().map_or(0, |mut seen| {
        seen.push(Request {
            path: path.clone(),
            auth: auth.clone(),
            range_from: range,
            status: 0,
            cut_at: None,
        });
        seen.len() - 1
    });
    let note = |status: u16, cut_at: Option<usize>| {
        if let Ok(mut seen) = s.seen.lock()
            && let Some(r) = seen.get_mut(index)
        {
            r.status = status;
            r.cut_at = cut_at;
        }
    };
    let basic = match &s.trick {
        Trick::Basic(u, p) | Trick::BasicThenRedirect(u, p, _) => Some(format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{u}:{p}")
            )
        )),
        _ => None,
    };
    if let Some(want) = basic
        && auth.as_ref() != Some(&want)
    {
        return respond(
            &mut conn,
            "401 Unauthorized",
            &[("WWW-Authenticate", "Basic realm=\"hostile\"".into())],
            b"",
        );
    }
    if path == "/v2/" {
        let first = s
            .seen
            .lock()
            .is_ok_and(|seen| seen.iter().filter(|r| r.path == "/v2/").count() == 1);
        if matches!(s.trick, Trick::FailFirst) && first {
            note(503, None);
            return respond(&mut conn, "503 Service Unavailable", &[], b"busy");
        }
        note(200, None);
        return respond(&mut conn, "200 OK", &[], b"{}");
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return respond(&mut conn, "404 Not Found", &[], b"");
    };
    if let Some((_, reference)) = rest.rsplit_once("/manifests/") {
        let Some((media, bytes)) = s.manifests.get(reference) else {
            return respond(&mut conn, "404 Not Found", &[], b"");
        };
        let mut bytes = bytes.clone();
        if matches!(s.trick, Trick::HugeManifest) {
            bytes.resize(5 << 20, b' ');
        }
        return respond(
            &mut conn,
            "200 OK",
            &[("Content-Type", media.clone())],
            &bytes,
        );
    }
    let Some((repo, digest)) = rest.rsplit_once("/blobs/") else {
        return respond(&mut conn, "404 Not Found", &[], b"");
    };
    let Some(blob) = s.blobs.get(digest) else {
        return respond(&mut conn, "404 Not Found", &[], b"");
    };
    let is_layer = s.layers.iter().any(|l| l == digest);
    // Whether this is the first request for this layer blob.
    let first = is_layer
        && s.seen.lock().is_ok_and(|seen| {
            seen.iter()
                .filter(|r| r.path.ends_with(&format!("/blobs/{digest}")))
                .count()
                == 1
        });
    match &s.trick {
        Trick::FailFirst if first => {
            note(503, None);
            return respond(&mut conn, "503 Service Unavailable", &[], b"busy");
        }
        Trick::RedirectBlobs(base) | Trick::BasicThenRedirect(_, _, base) => {
            let to = format!("{base}/v2/{repo}/blobs/{digest}");
            return respond(
                &mut conn,
                "307 Temporary Redirect",
                &[("Location", to)],
                b"",
            );
        }
        Trick::StallBlobs if is_layer => {
            // Hold the connection open and say nothing.
            let _ = conn.read(&mut [0u8; 1]);
            std::thread::sleep(Duration::from_secs(60));
            return Ok(());
        }
        _ => {}
    }
    let mut body = blob[range.min(blob.len())..].to_vec();
    let corrupt = match s.trick {
        Trick::CorruptBlobs => is_layer,
        Trick::CorruptConfig => !is_layer,
        _ => false,
    };
    if corrupt && !body.is_empty() {
        let mid = body.len() / 2;
        body[mid] ^= 0xff;
    }
    let status = if range > 0 {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let code = if range > 0 { 206 } else { 200 };
    let cut = match s.trick {
        Trick::TruncateBlobs => is_layer,
        Trick::CutFirst => first,
        _ => false,
    };
    if cut {
        note(code, Some(range + body.len() / 2));
        return respond_in_halves(&mut conn, status, &body, || false);
    }
    let hold: Option<Box<dyn FnOnce() + '_>> = match &s.trick {
        Trick::CorruptHeaderThenHold(hold)
            if is_layer && range == 0 && body.len() > 512 && !body.starts_with(&[0x1f, 0x8b]) =>
        {
            body[150] ^= 0x55;
            Some(Box::new(move || std::thread::sleep(*hold)))
        }
        Trick::HoldHalf(gate) if is_layer => {
            Some(Box::new(move || gate.wait(Duration::from_secs(30))))
        }
        _ => None,
    };
    note(code, None);
    match hold {
        Some(hold) => respond_in_halves(&mut conn, status, &body, || {
            hold();
            true
        }),
        None => respond(&mut conn, status, &[], &body),
    }
}
