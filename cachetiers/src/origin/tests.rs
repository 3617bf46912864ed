//! `file://` origins over real directories (the same layout as a
//! `DirStore`, both ways), URL parsing, calls from async code, and the
//! bound on an unreachable S3 endpoint. The S3 protocol itself is tested
//! against a real Garage server in `tests/tests/origin_s3.rs`.

use std::fs;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use manifest::{ChunkId, DomainSecret, EncryptedChunk, ManifestDigest, encrypt_chunk};

use super::*;
use crate::catalog::Catalog;
use crate::store::{ChunkStore, MAX_OBJECT_LEN, PutOutcome};

fn chunk(seed: u8) -> EncryptedChunk {
    let plain: Vec<u8> = (0..4096u32).map(|i| (i as u8).wrapping_mul(seed)).collect();
    encrypt_chunk(&DomainSecret::from_bytes([seed; 32]), &plain)
}

fn file_url(root: &Path) -> String {
    format!("file://{}", root.display())
}

#[test]
fn file_origin_reads_what_a_dir_store_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let dir = DirStore::create(&root).unwrap();
    let c = chunk(1);
    dir.put(&c.id, &c.object).unwrap();
    let digest = dir.put_manifest(b"sealed manifest bytes").unwrap();
    dir.set_tag("default", "app:v1", &digest).unwrap();

    let origin = open_origin(&file_url(&root), false).unwrap();
    assert_eq!(origin.location(), file_url(&root));
    assert_eq!(origin.get(&c.id).unwrap(), Some(c.object.clone()));
    assert!(origin.contains(&c.id).unwrap());
    assert_eq!(origin.get(&chunk(2).id).unwrap(), None);
    assert!(!origin.contains(&chunk(2).id).unwrap());
    assert_eq!(origin.resolve("default", "app:v1").unwrap(), digest);
    assert_eq!(
        origin.resolve("default", &digest.to_string()).unwrap(),
        digest
    );
    assert_eq!(
        origin.get_manifest(&digest).unwrap(),
        b"sealed manifest bytes"
    );
    assert_eq!(
        origin.put(&c.id, &c.object).unwrap(),
        PutOutcome::AlreadyPresent
    );
}

#[test]
fn an_origin_puts_objects_batched_together_under_their_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    DirStore::create(&root).unwrap();
    let origin = open_origin(&file_url(&root), false).unwrap();
    let chunks: Vec<EncryptedChunk> = (1..=5).map(chunk).collect();
    origin.put(&chunks[1].id, &chunks[1].object).unwrap();
    let objects: Vec<&[u8]> = chunks.iter().map(|c| c.object.as_slice()).collect();
    let put = origin.put_batched_all(&objects).unwrap();
    for (k, (c, (id, outcome))) in chunks.iter().zip(&put).enumerate() {
        assert_eq!(*id, c.id, "object {k}");
        let expected = if k == 1 {
            PutOutcome::AlreadyPresent
        } else {
            PutOutcome::Stored
        };
        assert_eq!(*outcome, expected, "object {k}");
        assert_eq!(origin.get(&c.id).unwrap(), Some(c.object.clone()));
    }
    assert_eq!(put.len(), chunks.len());
}

#[test]
fn start_profiles_cross_between_file_origin_and_dir_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let origin = ObjectOrigin::local(&root, true).unwrap();
    let digest = origin.put_manifest(b"m1").unwrap();
    assert_eq!(origin.get_profile(&digest).unwrap(), None);
    assert!(!origin.remove_profile(&digest).unwrap());
    origin.put_profile(&digest, b"p1").unwrap();
    assert_eq!(
        origin.profile_key(&digest),
        format!("profiles/{}", digest.to_hex())
    );

    let dir = DirStore::open(&root).unwrap();
    assert_eq!(
        dir.get_profile(&digest).unwrap().as_deref(),
        Some(&b"p1"[..])
    );
    dir.put_profile(&digest, b"p2").unwrap();
    assert_eq!(
        origin.get_profile(&digest).unwrap().as_deref(),
        Some(&b"p2"[..])
    );
    assert!(origin.remove_profile(&digest).unwrap());
    assert_eq!(dir.get_profile(&digest).unwrap(), None);
    let other = ManifestDigest::of(b"never stored");
    assert!(matches!(
        origin.put_profile(&other, b"orphan"),
        Err(StoreError::ManifestNotFound { .. })
    ));
}

#[test]
fn dir_store_reads_what_a_file_origin_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let origin = ObjectOrigin::local(&root, true).unwrap();
    let chunks: Vec<_> = (1..=5).map(chunk).collect();
    for c in &chunks {
        assert_eq!(origin.put(&c.id, &c.object).unwrap(), PutOutcome::Stored);
    }
    for c in &chunks {
        assert_eq!(
            origin.put(&c.id, &c.object).unwrap(),
            PutOutcome::AlreadyPresent
        );
    }
    let digest = origin.put_manifest(b"m1").unwrap();
    assert_eq!(digest, ManifestDigest::of(b"m1"));
    assert_eq!(origin.put_manifest(b"m1").unwrap(), digest);
    origin.set_tag("default", "t", &digest).unwrap();

    let dir = DirStore::open(&root).unwrap();
    let mut ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
    ids.sort();
    // Exactly the chunks: no staging files left behind under chunk names.
    assert_eq!(dir.ids().unwrap(), ids);
    for c in &chunks {
        assert_eq!(dir.get(&c.id).unwrap(), Some(c.object.clone()));
        assert_eq!(fs::read(dir.chunk_path(&c.id)).unwrap(), c.object);
    }
    assert_eq!(dir.tags("default").unwrap(), vec![("t".to_owned(), digest)]);
    assert_eq!(dir.get_manifest(&digest).unwrap(), b"m1");
    assert_eq!(
        fs::read_to_string(root.join("tags/default/t")).unwrap(),
        format!("{digest}\n")
    );
    let names: Vec<_> = fs::read_dir(root.join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![digest.to_hex()]);
}

#[test]
fn corrupt_and_oversized_objects_are_errors_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let origin = ObjectOrigin::local(&root, true).unwrap();
    let dir = DirStore::open(&root).unwrap();
    let (a, b) = (chunk(1), chunk(2));
    origin.put(&a.id, &a.object).unwrap();
    fs::write(dir.chunk_path(&a.id), &b.object).unwrap();
    let err = origin.get(&a.id).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&origin.chunk_key(&a.id)), "{msg}");
    assert!(msg.contains(&format!("hash to {}", b.id)), "{msg}");
    assert!(msg.starts_with(&format!("chunk {}", a.id)), "{msg}");

    fs::write(dir.chunk_path(&a.id), vec![7u8; MAX_OBJECT_LEN + 1]).unwrap();
    let msg = origin.get(&a.id).unwrap_err().to_string();
    assert!(msg.contains("over the"), "{msg}");

    // A wrong-length copy is replaced by the next put (as is a corrupt
    // copy of the right length); remove drops an object.
    assert_eq!(origin.put(&a.id, &a.object).unwrap(), PutOutcome::Replaced);
    assert_eq!(origin.get(&a.id).unwrap(), Some(a.object.clone()));
    assert!(origin.remove(&a.id).unwrap());
    assert!(!origin.remove(&a.id).unwrap());
    assert_eq!(origin.get(&a.id).unwrap(), None);

    let digest = origin.put_manifest(b"manifest").unwrap();
    fs::write(root.join("manifests").join(digest.to_hex()), b"other").unwrap();
    let err = origin.get_manifest(&digest).unwrap_err();
    assert!(matches!(err, StoreError::ManifestCorrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&origin.manifest_key(&digest)),
        "{err}"
    );
}

#[test]
fn puts_are_checked_against_the_id() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = ObjectOrigin::local(&tmp.path().join("s"), true).unwrap();
    let (a, b) = (chunk(1), chunk(2));
    let err = origin.put(&a.id, &b.object).unwrap_err();
    assert!(
        matches!(err, StoreError::IdMismatch { id, actual } if id == a.id && actual == b.id),
        "{err}"
    );
    let big = vec![0u8; MAX_OBJECT_LEN + 1];
    let err = origin.put(&ChunkId::of_object(&big), &big).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert!(!origin.contains(&a.id).unwrap());
    assert!(
        fs::read_dir(tmp.path().join("s/chunks"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn tags_and_digests_resolve_like_a_dir_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    let origin = ObjectOrigin::local(&root, true).unwrap();
    let missing = ManifestDigest::of(b"never stored");
    assert!(matches!(
        origin.set_tag("default", "x", &missing),
        Err(StoreError::ManifestNotFound { .. })
    ));
    assert!(matches!(
        origin.resolve("default", &missing.to_string()),
        Err(StoreError::ManifestNotFound { .. })
    ));
    assert!(matches!(
        origin.resolve("default", "nope"),
        Err(StoreError::UnknownTag { .. })
    ));
    assert!(matches!(
        origin.resolve("default", "a/b"),
        Err(StoreError::InvalidTag(_))
    ));
    assert!(matches!(
        origin.resolve("default", "sha256:xyz"),
        Err(StoreError::BadDigest { .. })
    ));
    let d1 = origin.put_manifest(b"one").unwrap();
    let d2 = origin.put_manifest(b"two").unwrap();
    origin.set_tag("default", "x", &d1).unwrap();
    assert_eq!(origin.resolve("default", "x").unwrap(), d1);
    origin.set_tag("default", "x", &d2).unwrap();
    assert_eq!(origin.resolve("default", "x").unwrap(), d2);
    assert!(matches!(
        origin.set_tag("default", "../x", &d1),
        Err(StoreError::InvalidTag(_))
    ));
    fs::write(root.join("tags/default/bad"), b"not a digest").unwrap();
    let err = origin.resolve("default", "bad").unwrap_err();
    assert!(matches!(err, StoreError::BadTag { .. }), "{err}");
    assert!(matches!(
        origin.get_manifest(&missing),
        Err(StoreError::ManifestNotFound { .. })
    ));
}

#[test]
fn locations_open_the_right_kind_of_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    let err = open_origin(plain.to_str().unwrap(), false).err().unwrap();
    assert!(
        matches!(
            &err,
            OriginError::Store {
                source: StoreError::NotAStore { .. },
                ..
            }
        ),
        "{err}"
    );
    let origin = open_origin(plain.to_str().unwrap(), true).unwrap();
    assert_eq!(origin.location(), plain.display().to_string());
    assert!(plain.join("chunks").is_dir());

    let via_file = tmp.path().join("via-file");
    assert!(matches!(
        open_origin(&file_url(&via_file), false),
        Err(OriginError::Store { .. })
    ));
    open_origin(&file_url(&via_file), true).unwrap();
    for dir in ["chunks", "manifests", "tags"] {
        assert!(via_file.join(dir).is_dir(), "{dir}");
    }

    let err = open_origin("gs://bucket/x", false).err().unwrap();
    assert!(
        matches!(&err, OriginError::UnsupportedScheme { scheme, .. } if scheme == "gs"),
        "{err}"
    );
    assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
    for bad in ["file://relative/path", "s3:///prefix", ""] {
        let err = open_origin(bad, true).err().unwrap();
        assert!(matches!(err, OriginError::BadUrl { .. }), "{bad}: {err}");
    }
    let s3 = S3Settings {
        endpoint: Some("http://127.0.0.1:9".into()),
        region: Some("garage".into()),
        access_key_id: Some("id".into()),
        secret_access_key: Some("secret".into()),
        ..S3Settings::new("bucket", "/some/prefix/")
    };
    let origin = ObjectOrigin::s3(&s3).unwrap();
    assert_eq!(origin.location(), "s3://bucket/some/prefix");
    let id = chunk(1).id;
    let hex = id.to_hex();
    assert_eq!(
        origin.chunk_key(&id),
        format!("some/prefix/chunks/{}/{}/{hex}", &hex[0..2], &hex[2..4])
    );
}

#[test]
fn usable_from_async_code_and_spawn_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let origin: Arc<dyn Origin> =
        Arc::new(ObjectOrigin::local(&tmp.path().join("s"), true).unwrap());
    let c = chunk(3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let o = origin.clone();
        let (id, object) = (c.id, c.object.clone());
        let put = tokio::task::spawn_blocking(move || o.put(&id, &object))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(put, PutOutcome::Stored);
        // Straight from a task on a single-threaded runtime: blocks this
        // runtime's only thread, but the request runs on the origin's.
        assert_eq!(origin.get(&c.id).unwrap(), Some(c.object.clone()));
        // The last reference dropped inside async code.
        drop(origin);
    });
}

/// An error and its sources, `: `-separated, skipping a cause its parent
/// already quotes.
fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!(": {text}"));
        }
        source = e.source();
    }
    msg
}

/// A port on loopback with nothing listening (bound, then released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn unreachable_s3_fails_with_an_error_naming_the_origin() {
    let settings = S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{}", closed_port())),
        region: Some("garage".into()),
        access_key_id: Some("GK0000".into()),
        secret_access_key: Some("0".repeat(64)),
        limits: RequestLimits {
            retry_timeout: Duration::from_secs(2),
            ..RequestLimits::default()
        },
        ..S3Settings::new("bucket", "p")
    };
    let origin = ObjectOrigin::s3(&settings).unwrap();
    let c = chunk(1);
    // Run in a thread with a watchdog: a hang fails the test instead of
    // stalling it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send((origin.get(&c.id), origin.put(&c.id, &c.object)));
    });
    let (get, put) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("requests to an unreachable origin did not end within 60 s");
    for err in [get.unwrap_err(), put.unwrap_err()] {
        let msg = chain(&err);
        eprintln!("{msg}");
        assert!(matches!(err, StoreError::Backend { .. }), "{msg}");
        assert!(msg.starts_with("s3://bucket/p failed"), "{msg}");
        assert!(msg.contains("/p/chunks/"), "{msg}");
    }
}

/// An S3 endpoint on loopback that answers every GET with `object`, but
/// holds each answer until the test opens the gate, counting requests in
/// flight (the most at once) and connections.
struct HeldS3 {
    addr: std::net::SocketAddr,
    state: Arc<(std::sync::Mutex<Held>, std::sync::Condvar)>,
}

#[derive(Default)]
struct Held {
    in_flight: usize,
    most: usize,
    connections: usize,
    open: bool,
}

impl HeldS3 {
    fn start(object: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new((
            std::sync::Mutex::new(Held::default()),
            std::sync::Condvar::new(),
        ));
        let shared = Arc::clone(&state);
        let object = Arc::new(object);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                shared.0.lock().unwrap().connections += 1;
                let (state, object) = (Arc::clone(&shared), Arc::clone(&object));
                std::thread::spawn(move || serve_held(stream, &state, &object));
            }
        });
        Self { addr, state }
    }

    /// Waits (up to a watchdog) until `n` requests are held at once.
    fn wait_for_in_flight(&self, n: usize) -> bool {
        let (lock, cv) = &*self.state;
        let held = lock.lock().unwrap();
        let (_held, timeout) = cv
            .wait_timeout_while(held, Duration::from_secs(60), |h| h.in_flight < n)
            .unwrap();
        !timeout.timed_out()
    }

    fn open(&self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().open = true;
        cv.notify_all();
    }

    fn counts(&self) -> (usize, usize) {
        let held = self.state.0.lock().unwrap();
        (held.most, held.connections)
    }
}

/// One keep-alive connection: each request head is answered with the
/// object once the gate is open.
fn serve_held(
    stream: std::net::TcpStream,
    state: &(std::sync::Mutex<Held>, std::sync::Condvar),
    object: &[u8],
) {
    use std::io::{BufRead, BufReader, Write};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        let (lock, cv) = state;
        let mut held = lock.lock().unwrap();
        held.in_flight += 1;
        held.most = held.most.max(held.in_flight);
        cv.notify_all();
        held = cv.wait_while(held, |h| !h.open).unwrap();
        held.in_flight -= 1;
        drop(held);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"1\"\r\n\
             Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n",
            object.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() || writer.write_all(object).is_err() {
            return;
        }
    }
}

/// Gets from several threads run side by side on their own connections,
/// never more at once than `max_concurrent_requests`.
#[test]
fn s3_gets_run_in_parallel_up_to_the_bound() {
    let c = chunk(9);
    let s3 = HeldS3::start(c.object.clone());
    let bound = 4;
    let settings = S3Settings {
        endpoint: Some(format!("http://{}", s3.addr)),
        region: Some("garage".into()),
        access_key_id: Some("GK0000".into()),
        secret_access_key: Some("0".repeat(64)),
        limits: RequestLimits {
            max_concurrent_requests: bound,
            ..RequestLimits::default()
        },
        ..S3Settings::new("bucket", "p")
    };
    let origin = Arc::new(ObjectOrigin::s3(&settings).unwrap());
    let threads: Vec<_> = (0..bound + 3)
        .map(|_| {
            let (origin, id) = (Arc::clone(&origin), c.id);
            std::thread::spawn(move || origin.get(&id))
        })
        .collect();
    // Serialised gets would never have `bound` held at once.
    let reached = s3.wait_for_in_flight(bound);
    s3.open();
    assert!(reached, "{bound} gets were never in flight at once");
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), Some(c.object.clone()));
    }
    let (most, connections) = s3.counts();
    assert_eq!(most, bound, "the bound was not kept");
    assert!(connections >= bound, "{connections} connections");
}

#[test]
fn a_zero_request_bound_is_refused() {
    let settings = S3Settings {
        endpoint: Some("http://127.0.0.1:9".into()),
        limits: RequestLimits {
            max_concurrent_requests: 0,
            ..RequestLimits::default()
        },
        ..S3Settings::new("bucket", "p")
    };
    let err = ObjectOrigin::s3(&settings).unwrap_err();
    assert!(err.to_string().contains("max_concurrent_requests"), "{err}");
}

#[test]
fn s3_settings_debug_hides_the_secret_key() {
    let mut settings = S3Settings::new("bucket", "prefix");
    settings.access_key_id = Some("GKvisible-id".into());
    settings.secret_access_key = Some("very-secret-key-0123".into());
    let shown = format!("{settings:?}");
    assert!(!shown.contains("very-secret-key-0123"), "{shown}");
    assert!(
        shown.contains("GKvisible-id"),
        "the key id helps debugging: {shown}"
    );
    assert!(shown.contains("***"), "{shown}");
    let alternate = format!("{settings:#?}");
    assert!(!alternate.contains("very-secret-key-0123"), "{alternate}");
}

#[test]
fn put_replaces_a_corrupt_object_in_a_file_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let dir = DirStore::create(&root).unwrap();
    let origin = open_origin(&file_url(&root), false).unwrap();
    let c = chunk(8);
    origin.put(&c.id, &c.object).unwrap();
    let mut bad = c.object.clone();
    bad[7] ^= 1;
    fs::write(dir.chunk_path(&c.id), &bad).unwrap();
    assert!(origin.put(&c.id, &c.object).unwrap().is_new());
    assert_eq!(fs::read(dir.chunk_path(&c.id)).unwrap(), c.object);
    assert_eq!(origin.get(&c.id).unwrap(), Some(c.object.clone()));
    assert_eq!(
        origin.put(&c.id, &c.object).unwrap(),
        PutOutcome::AlreadyPresent
    );
}

/// A sealed manifest and the same manifest re-wrapped under a second
/// master key: two byte strings with one digest.
fn sealed_twice(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let keys = manifest::LocalKeyProvider::create(dir.join("keys")).unwrap();
    let m = manifest::Manifest {
        source_digest: "sha256:feed".into(),
        domain: "default".into(),
        filesystem: "ext4".into(),
        config: manifest::ImageConfig::default(),
        device_size: 65536,
        chunk_size: manifest::ChunkSize::MIN,
        chunks: vec![manifest::ChunkEntry::Hole],
    };
    let sealed = manifest::seal(&m, &keys).unwrap();
    keys.rotate().unwrap();
    let rewrapped = manifest::rewrap_sealed(&sealed, &keys, &keys).unwrap();
    (sealed, rewrapped)
}

#[test]
fn manifests_are_replaced_only_by_bytes_of_the_same_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let (sealed, rewrapped) = sealed_twice(tmp.path());
    let root = tmp.path().join("store");
    let dir = DirStore::create(&root).unwrap();
    let origin = open_origin(&file_url(&root), false).unwrap();
    let catalogs: [&dyn Catalog; 2] = [&dir, origin.as_ref()];
    for (i, catalog) in catalogs.into_iter().enumerate() {
        let digest = catalog.put_manifest(&sealed).unwrap();
        // Not stored yet under that digest: refused, nothing written.
        let absent = ManifestDigest::of(b"never stored");
        assert!(matches!(
            catalog.replace_manifest(&absent, &rewrapped),
            Err(StoreError::ManifestCorrupt { .. })
        ));
        catalog.replace_manifest(&digest, &rewrapped).unwrap();
        assert_eq!(catalog.get_manifest(&digest).unwrap(), rewrapped, "{i}");
        // Other bytes under this digest: refused, the stored ones stay.
        let err = catalog
            .replace_manifest(&digest, b"other bytes")
            .unwrap_err();
        assert!(err.to_string().contains("replacement"), "{err}");
        assert_eq!(catalog.get_manifest(&digest).unwrap(), rewrapped);
        catalog.replace_manifest(&digest, &sealed).unwrap();
        assert_eq!(catalog.get_manifest(&digest).unwrap(), sealed);
        assert!(catalog.remove_manifest(&digest).unwrap());
        assert!(matches!(
            catalog.replace_manifest(&digest, &sealed),
            Err(StoreError::ManifestNotFound { .. })
        ));
    }
}
