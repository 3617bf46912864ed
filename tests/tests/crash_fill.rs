//! Crash consistency of the stores that fill from the origin: the shared
//! local tier (RocksDB) and the cache node over it. A child process fills
//! (this test binary again, in a child role chosen by an environment
//! variable) and is killed with SIGKILL at a random point of the fills,
//! several rounds over the same database. After each kill the database
//! is reopened: every object it lists is there, hashes to its id, the
//! counts agree with what is listed, and usage is within capacity.
//!
//! Random points come from a seed printed at the start (set
//! `IMAGEFS_CRASH_SEED` to replay one).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use cachetiers::{ChunkStore, DirStore, RocksStore, TieredStore};
use manifest::ChunkId;
use manifest::convergent::{DomainSecret, encrypt_chunk};
use sha2::{Digest, Sha256};
use tests::rng::{Rng, seed_from_env};

/// Set in the child process: `ROLE DB ORIGIN CAPACITY SEED`.
const CHILD_ENV: &str = "IMAGEFS_CRASH_CHILD";
/// The name of the child's entry point, below.
const CHILD_TEST: &str = "crash_child";
/// Rounds of fill-and-kill per test.
const ROUNDS: u32 = 8;
/// Objects in the origin.
const OBJECTS: u32 = 96;
/// The stores' capacity: well under the origin's ~6 MiB, so fills evict.
const CAPACITY: u64 = 2 << 20;
/// Hang guard for a child's progress (never a timing assertion).
const WATCHDOG: Duration = Duration::from_secs(120);

/// An origin directory of real encrypted chunks of random sizes (4 KiB
/// to 128 KiB of plaintext); their ids.
fn origin(dir: &Path, rng: &mut Rng) -> Vec<ChunkId> {
    let store = DirStore::create(dir).expect("create origin");
    let secret = DomainSecret::from_bytes([3; 32]);
    (0..OBJECTS)
        .map(|n| {
            let len = 4096 + rng.below(124 * 1024) as usize;
            let mut plain = vec![0u8; len];
            for (i, b) in plain.iter_mut().enumerate() {
                *b = (i as u32).wrapping_mul(31).wrapping_add(n) as u8;
            }
            plain[..4].copy_from_slice(&n.to_le_bytes());
            let c = encrypt_chunk(&secret, &plain);
            store.put(&c.id, &c.object).expect("fill origin");
            c.id
        })
        .collect()
}

/// Reopens the database at `db` and checks it (see the module docs).
/// Returns how many objects it holds.
fn check_db(db: &Path, round: u32) -> usize {
    let store = RocksStore::open(db, CAPACITY)
        .unwrap_or_else(|e| panic!("round {round}: reopen after kill -9: {e}"));
    let ids = store.ids().expect("list ids");
    let mut bytes = 0u64;
    for id in &ids {
        let object = store
            .get(id)
            .unwrap_or_else(|e| panic!("round {round}: chunk {id}: {e}"))
            .unwrap_or_else(|| panic!("round {round}: chunk {id} is listed but missing"));
        let actual = ChunkId(Sha256::digest(&object).into());
        assert_eq!(actual, *id, "round {round}: chunk {id} hashes to {actual}");
        bytes += object.len() as u64;
    }
    let usage = store.usage();
    assert_eq!(
        usage.objects,
        ids.len() as u64,
        "round {round}: counted objects"
    );
    assert_eq!(usage.bytes, bytes, "round {round}: counted bytes");
    assert!(
        usage.bytes <= CAPACITY,
        "round {round}: {} bytes over the {CAPACITY}-byte capacity",
        usage.bytes
    );
    ids.len()
}

/// Starts the child in `role` and a thread forwarding its stdout lines.
fn spawn_child(role: &str, db: &Path, origin: &Path, seed: u64) -> (Child, mpsc::Receiver<String>) {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--include-ignored", "--nocapture"])
        .env(
            CHILD_ENV,
            format!(
                "{role} {} {} {CAPACITY} {seed}",
                db.display(),
                origin.display()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a line starting with `prefix`; returns the rest.
fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str, child: &mut Child) -> String {
    loop {
        match rx.recv_timeout(WATCHDOG) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_string();
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "no `{prefix}` line from the child: {e} (exit {:?})",
                    child.wait()
                );
            }
        }
    }
}

/// The body of a 200 to `GET path` at `url` (`http://ADDR`), over a fresh
/// connection; `None` for anything else (the node died under it).
fn http_get(url: &str, path: &str) -> Option<Vec<u8>> {
    let addr = url.strip_prefix("http://")?;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(WATCHDOG)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    if head.split(' ').nth(1) != Some("200") {
        return None;
    }
    let body = raw[split + 4..].to_vec();
    // A body cut short by the kill is not an answer.
    let length: usize = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse().ok())
    })??;
    (body.len() == length).then_some(body)
}

/// SIGKILL, and reap it.
fn kill_9(child: &mut Child) {
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child ended by itself: {status}");
}

struct Setup {
    _tmp: tempfile::TempDir,
    db: PathBuf,
    origin: PathBuf,
    ids: Vec<ChunkId>,
    rng: Rng,
    seed: u64,
}

fn setup() -> Setup {
    let seed = seed_from_env("IMAGEFS_CRASH_SEED");
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let origin_dir = tmp.path().join("origin");
    let ids = origin(&origin_dir, &mut rng);
    Setup {
        db: tmp.path().join("db"),
        origin: origin_dir,
        ids,
        rng,
        seed,
        _tmp: tmp,
    }
}

#[test]
fn shared_tier_survives_kill_9_during_fills() {
    let mut s = setup();
    let mut held = Vec::new();
    for round in 0..ROUNDS {
        let (mut child, rx) = spawn_child("tier", &s.db, &s.origin, s.seed + u64::from(round));
        // Kill after a random number of fills (so during fills, not
        // before the first), then at a random moment of the next ones.
        let after = 1 + s.rng.below(40);
        loop {
            let filled: u64 = wait_line(&rx, "filled", &mut child).parse().unwrap();
            if filled >= after {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(s.rng.below(20_000)));
        kill_9(&mut child);
        held.push(check_db(&s.db, round));
    }
    eprintln!("objects held after each kill: {held:?}");
}

#[test]
fn cache_node_survives_kill_9_during_fills() {
    let mut s = setup();
    for round in 0..ROUNDS {
        let (mut child, rx) = spawn_child("node", &s.db, &s.origin, s.seed + u64::from(round));
        let url = wait_line(&rx, "listening", &mut child);
        // Clients fill the node until it dies under them.
        let readers: Vec<_> = (0..3)
            .map(|k| {
                let url = url.clone();
                let ids = s.ids.clone();
                let mut rng = Rng::new(s.rng.next_u64() ^ k);
                std::thread::spawn(move || {
                    let mut served = 0u64;
                    loop {
                        let id = ids[rng.below(ids.len() as u64) as usize];
                        let Some(body) = http_get(&url, &format!("/v1/chunks/{id}")) else {
                            return served;
                        };
                        // What the node served before it died was right.
                        assert_eq!(ChunkId(Sha256::digest(&body).into()), id);
                        served += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 + s.rng.below(300)));
        kill_9(&mut child);
        let served: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        let held = check_db(&s.db, round);
        eprintln!("round {round}: {served} chunks served, {held} held after kill -9");
    }
}

/// The child's entry point: not a test of its own (it fills until
/// killed), so it runs only when [`CHILD_ENV`] says which role to play.
#[test]
#[ignore = "the crash tests' child process; runs only when they start it"]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        eprintln!("{CHILD_TEST}: not started by a crash test ({CHILD_ENV} unset); nothing to do");
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let [role, db, origin, capacity, seed] = parts[..] else {
        panic!("{CHILD_ENV}={spec:?}: want ROLE DB ORIGIN CAPACITY SEED");
    };
    let capacity: u64 = capacity.parse().unwrap();
    let mut rng = Rng::new(seed.parse().unwrap());
    let origin = Arc::new(DirStore::open(origin).expect("open origin"));
    let ids = origin.ids().expect("origin ids");
    let local = Arc::new(RocksStore::open(db, capacity).expect("open the database"));
    match role {
        "tier" => {
            let tiers = TieredStore::new(vec![
                ("shared".to_string(), local as Arc<dyn ChunkStore>),
                ("origin".to_string(), origin as Arc<dyn ChunkStore>),
            ])
            .unwrap();
            for filled in 1u64.. {
                let id = ids[rng.below(ids.len() as u64) as usize];
                tiers.fetch(&id).expect("fetch");
                println!("filled {filled}");
            }
        }
        "node" => {
            let config = cachenode::NodeConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..cachenode::NodeConfig::default()
            };
            let node = cachenode::server::start(&config, local, origin).expect("start node");
            println!("listening {}", node.url());
            // Serves until killed.
            node.wait().expect("serve");
        }
        other => panic!("unknown crash child role `{other}`"),
    }
}
