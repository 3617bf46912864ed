//! The backend driving a real `VringRwLock` over mock guest memory:
//! completion, statuses, out-of-order completion around a blocked fetch,
//! writes, the trace, and `serve` ending on a frontend disconnect.

use super::*;

use cachetiers::testing::GatedStore;

struct Device {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    image: Vec<u8>,
    /// Its gate holds chunk 0's fetch until opened.
    store: Arc<GatedStore<DirStore>>,
    lazy: Arc<LazyImage>,
}

/// Four data chunks; chunk 0's fetch blocks until released.
fn device(dedicated: bool) -> Device {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let inner = DirStore::create(dir.join("store")).unwrap();
    let chunks = (0..4u64).map(|i| Some(noise(100 + i, CHUNK))).collect();
    let (manifest, image) = encrypted_device(&DomainSecret::from_bytes([9; 32]), chunks, |enc| {
        inner.put(&enc.id, &enc.object).unwrap();
    });
    let blocked = *manifest.chunks[0].id().unwrap();
    let store = Arc::new(GatedStore::new(inner));
    store.close_for(blocked);
    let dedicated_dir = dir.join("dedicated");
    let lazy = LazyImage::open(
        manifest,
        store.clone(),
        dedicated.then_some(dedicated_dir.as_path()),
        no_readahead(),
    )
    .unwrap();
    Device {
        _tmp: tmp,
        dir,
        image,
        store,
        lazy: Arc::new(lazy),
    }
}

struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    q: MockSplitQueue<'a, GuestMemoryMmap>,
    vring: VringRwLock,
    backend: BlkBackend,
    service: Arc<Service>,
    next_desc: u16,
}

fn harness<'a>(mem: &'a GuestMemoryMmap, d: &Device, opts: &ServeOptions) -> Harness<'a> {
    let q = MockSplitQueue::new(mem, QSIZE);
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let vring = VringRwLock::new(atomic.clone(), QSIZE).unwrap();
    vring
        .set_queue_info(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0)
        .unwrap();
    vring.set_queue_size(QSIZE);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let service = service(d.lazy.clone(), opts).unwrap();
    let backend = BlkBackend::new(Arc::clone(&service), atomic);
    Harness {
        mem,
        q,
        vring,
        backend,
        service,
        next_desc: 0,
    }
}

fn opts(writable: bool) -> ServeOptions {
    let mut o = ServeOptions::new(
        PathBuf::from("/nonexistent"),
        "sha256:abcdef0123456789abcdef".into(),
    );
    o.writable = writable;
    o.queue_size = QSIZE;
    o.io_threads = 4;
    o
}

impl Harness<'_> {
    /// Puts a chain on the available ring; returns its head index.
    fn submit(&mut self, descs: &[RawDescriptor]) -> u16 {
        let head = self.next_desc;
        let chained: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = SplitDescriptor::from(*d);
                let last = i + 1 == descs.len();
                let flags = if last {
                    d.flags()
                } else {
                    d.flags() | VRING_DESC_F_NEXT as u16
                };
                let next = if last { 0 } else { head + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
            })
            .collect();
        for (i, d) in chained.iter().enumerate() {
            self.q.desc_table().store(head + i as u16, *d).unwrap();
        }
        self.next_desc += descs.len() as u16;
        self.push_head(head);
        head
    }

    fn avail_idx(&self) -> u16 {
        self.q.avail().idx().load()
    }

    fn set_avail_idx(&self, idx: u16) {
        self.q.avail().idx().store(idx);
    }

    /// Puts `head` on the available ring as is (whatever its state).
    fn push_head(&self, head: u16) {
        let idx = self.avail_idx();
        self.q
            .avail()
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(head);
        self.set_avail_idx(idx.wrapping_add(1));
    }

    /// Lets the backend take what is available (what a kick does).
    fn kick(&self) {
        self.backend.process_queue(0, &self.vring).unwrap();
    }

    /// Used-ring entries so far: (head, len).
    fn used(&self) -> Vec<(u16, u32)> {
        let n = self.q.used().idx().load();
        (0..n)
            .map(|i| {
                let e = self
                    .q
                    .used()
                    .ring()
                    .ref_at(usize::from(i % QSIZE))
                    .unwrap()
                    .load();
                (e.id() as u16, e.len())
            })
            .collect()
    }

    /// Waits (60 s watchdog) until `n` requests are complete.
    fn wait_used(&self, n: usize) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let used = self.used();
            if used.len() >= n {
                return used;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests completed",
                used.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn status(&self, n: u64) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS + n)).unwrap()
    }
}

#[test]
fn backend_serves_reads_and_rejects_hostile_chains_with_a_status() {
    let d = device(false);
    d.store.open();
    let mem = guest_memory();
    let mut h = harness(&mem, &d, &opts(false));
    // Poison the status bytes so a missing write shows.
    mem.write_slice(&[0xFF; 16], GuestAddress(STATUS)).unwrap();
    let read = h.submit(&[
        header(&mem, 0, VIRTIO_BLK_T_IN, 130),
        desc(DATA, 4096, true),
        desc(DATA + 8192, 512, true),
        status_desc(0),
    ]);
    let outside = h.submit(&[
        header(&mem, 1, VIRTIO_BLK_T_IN, 0),
        desc(MEM_SIZE - 100, 512, true),
        status_desc(1),
    ]);
    let past_end = h.submit(&[
        header(&mem, 2, VIRTIO_BLK_T_IN, 512),
        desc(DATA + 16384, 512, true),
        status_desc(2),
    ]);
    let unknown = h.submit(&[header(&mem, 3, 0x55, 0), status_desc(3)]);
    let write_ro = h.submit(&[
        header(&mem, 4, VIRTIO_BLK_T_OUT, 0),
        desc(DATA + 20000, 512, false),
        status_desc(4),
    ]);
    let get_id = h.submit(&[
        header(&mem, 5, VIRTIO_BLK_T_GET_ID, 0),
        desc(DATA + 30000, 20, true),
        status_desc(5),
    ]);
    h.kick();
    let used = h.wait_used(6);
    let len_of = |head| used.iter().find(|u| u.0 == head).map(|u| u.1);
    assert_eq!(len_of(read), Some(4096 + 512 + 1));
    assert_eq!(h.status(0), VIRTIO_BLK_S_OK as u8);
    let off = 130 * 512;
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got == d.image[off..off + 4096], "read data differs");
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA + 8192)).unwrap();
    assert!(
        got == d.image[off + 4096..off + 4608],
        "second segment differs"
    );
    assert_eq!(h.status(1), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(h.status(2), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(h.status(3), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(h.status(4), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(h.status(5), VIRTIO_BLK_S_OK as u8);
    let mut serial = [0u8; 20];
    mem.read_slice(&mut serial, GuestAddress(DATA + 30000))
        .unwrap();
    assert_eq!(&serial, b"abcdef0123456789abcd");
    assert_eq!(len_of(get_id), Some(21));
    for head in [outside, past_end, unknown, write_ro] {
        assert_eq!(
            len_of(head),
            Some(1),
            "rejected {head} reports its status byte"
        );
    }
    let report = h.service.stats.report();
    assert_eq!(
        (report.reads, report.rejected, report.get_ids),
        (1, 4, 1),
        "{report:?}"
    );
    assert_eq!(report.bytes_read, 4608);
}

/// A request waiting on a cold chunk does not hold up the requests behind
/// it: they complete first, out of order.
#[test]
fn no_head_of_line_blocking() {
    let d = device(false);
    let mem = guest_memory();
    let mut h = harness(&mem, &d, &opts(false));
    // Chunk 2 is warm (in the memory cache); chunk 0 is cold and blocked.
    let mut warm = vec![0u8; 512];
    d.lazy.read_exact_at(&mut warm, 2 * CHUNK as u64).unwrap();
    let sector = |chunk: usize| (chunk * CHUNK / 512) as u64;
    let cold = h.submit(&[
        header(&mem, 0, VIRTIO_BLK_T_IN, sector(0)),
        desc(DATA, 4096, true),
        status_desc(0),
    ]);
    let warm1 = h.submit(&[
        header(&mem, 1, VIRTIO_BLK_T_IN, sector(2)),
        desc(DATA + 0x1_0000, 4096, true),
        status_desc(1),
    ]);
    let warm2 = h.submit(&[
        header(&mem, 2, VIRTIO_BLK_T_IN, sector(2) + 8),
        desc(DATA + 0x2_0000, 4096, true),
        status_desc(2),
    ]);
    h.kick();
    let used = h.wait_used(2);
    let heads: Vec<u16> = used.iter().map(|u| u.0).collect();
    assert!(
        heads.contains(&warm1) && heads.contains(&warm2) && !heads.contains(&cold),
        "warm requests should complete while the cold one waits: {heads:?}"
    );
    d.store.open();
    let used = h.wait_used(3);
    assert_eq!(used[2].0, cold, "the cold request completes last");
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got == d.image[..4096]);
}

/// A backend that dies with a request in flight leaves it marked in the
/// inflight region; the next backend, over the same guest memory and
/// region, positions the ring after it, resubmits it and completes it,
/// and then takes new requests where the ring left off.
#[test]
fn a_restarted_backend_resubmits_what_was_in_flight() {
    use super::inflight::InflightRegion;
    let d = device(false);
    let mem = guest_memory();
    let mut h = harness(&mem, &d, &opts(false));
    let (file, region) = InflightRegion::create(1, QSIZE).unwrap();
    let region = Arc::new(region);
    h.backend.set_inflight_region(Some(Arc::clone(&region)));
    assert!(h.backend.start_queue(0, &h.vring).unwrap().is_empty());
    let sector = |chunk: usize| (chunk * CHUNK / 512) as u64;
    let cold = h.submit(&[
        header(&mem, 0, VIRTIO_BLK_T_IN, sector(0)),
        desc(DATA, 4096, true),
        status_desc(0),
    ]);
    let warm = h.submit(&[
        header(&mem, 1, VIRTIO_BLK_T_IN, sector(2)),
        desc(DATA + 0x1_0000, 4096, true),
        status_desc(1),
    ]);
    h.kick();
    assert_eq!(h.wait_used(1), [(warm, 4097)]);
    assert_eq!(region.desc(0, cold).inflight, 1);
    assert_eq!(region.desc(0, warm).inflight, 0);
    assert_eq!(region.header(0).used_idx, 1);

    // The first backend is gone (its request stays blocked); a second one
    // starts over the same memory, on a device whose store answers.
    let d2 = device(false);
    d2.store.open();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let vring = VringRwLock::new(atomic.clone(), QSIZE).unwrap();
    vring
        .set_queue_info(
            h.q.desc_table_addr().0,
            h.q.avail_addr().0,
            h.q.used_addr().0,
        )
        .unwrap();
    vring.set_queue_size(QSIZE);
    // What QEMU sends after losing the backend: the used index.
    vring.set_queue_next_avail(1);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let service2 = service(d2.lazy.clone(), &opts(false)).unwrap();
    let backend = BlkBackend::new(Arc::clone(&service2), atomic);
    let size = InflightRegion::size_for(1, QSIZE);
    let region2 = InflightRegion::map(file, 0, size, 1, QSIZE).unwrap();
    backend.set_inflight_region(Some(Arc::new(region2)));
    let resubmit = backend.start_queue(0, &vring).unwrap();
    assert_eq!(resubmit, [cold]);
    assert_eq!(vring.queue_next_avail(), 2, "after the chain in flight");
    backend.resubmit(0, &vring, &resubmit);
    let used = h.wait_used(2);
    assert_eq!(used[1], (cold, 4097));
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got == d.image[..4096]);
    assert_eq!(region.desc(0, cold).inflight, 0);
    assert_eq!(region.header(0).used_idx, 2);
    // A new request is taken from where the ring left off.
    let next = h.submit(&[
        header(&mem, 2, VIRTIO_BLK_T_IN, sector(1)),
        desc(DATA + 0x2_0000, 512, true),
        status_desc(2),
    ]);
    backend.process_queue(0, &vring).unwrap();
    assert_eq!(h.wait_used(3)[2], (next, 513));
    assert_eq!(
        service2.stats.report().reads,
        2,
        "the resubmitted and the new request, not the completed one again"
    );
    backend.wait_idle();
    // Let the first backend's request go, after the checks.
    d.store.open();
}

#[test]
fn writes_and_flush_reach_only_the_dedicated_tier() {
    let d = device(true);
    d.store.open();
    let mem = guest_memory();
    let mut h = harness(&mem, &d, &opts(true));
    mem.write_slice(&[0x5A; 1024], GuestAddress(DATA)).unwrap();
    h.submit(&[
        header(&mem, 0, VIRTIO_BLK_T_OUT, 3),
        desc(DATA, 1024, false),
        status_desc(0),
    ]);
    h.submit(&[header(&mem, 1, VIRTIO_BLK_T_FLUSH, 0), status_desc(1)]);
    h.kick();
    h.wait_used(2);
    assert_eq!(h.status(0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.status(1), VIRTIO_BLK_S_OK as u8);
    let mut back = vec![0u8; 2048];
    d.lazy.read_exact_at(&mut back, 1024).unwrap();
    assert!(back[..512] == d.image[1024..1536]);
    assert!(back[512..1536].iter().all(|&b| b == 0x5A));
    assert!(back[1536..] == d.image[2560..3072]);
    assert_eq!(d.lazy.metrics().flushes, 1);
    // A fresh instance of the same image sees the pristine bytes.
    let fresh = LazyImage::open(
        d.lazy.manifest().clone(),
        d.store.clone(),
        Some(&d.dir.join("another-instance")),
        no_readahead(),
    )
    .unwrap();
    fresh.read_exact_at(&mut back, 1024).unwrap();
    assert!(back == d.image[1024..3072]);
}

#[test]
fn trace_records_reads_in_order() {
    let d = device(false);
    d.store.open();
    let mem = guest_memory();
    let path = d.dir.join("trace.jsonl");
    let mut o = opts(false);
    o.record_trace = Some(path.clone());
    let mut h = harness(&mem, &d, &o);
    for (n, sector) in [(0u64, 8u64), (1, 0), (2, 300)] {
        h.submit(&[
            header(&mem, n, VIRTIO_BLK_T_IN, sector),
            desc(DATA + n * 0x1_0000, 1024, true),
            status_desc(n),
        ]);
    }
    h.submit(&[header(&mem, 3, VIRTIO_BLK_T_FLUSH, 0), status_desc(3)]);
    h.kick();
    h.wait_used(4);
    let (header, records) = read_trace(&path).unwrap();
    assert_eq!(header.image, "sha256:abcdef0123456789abcdef");
    assert_eq!(header.device_size, d.image.len() as u64);
    let got: Vec<(u64, u64)> = records.iter().map(|r| (r.offset, r.len)).collect();
    assert_eq!(got, [(8 * 512, 1024), (0, 1024), (300 * 512, 1024)]);
    assert!(records.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
}

#[test]
fn serve_ends_when_the_frontend_disconnects() {
    let d = device(false);
    let socket = d.dir.join("blk.sock");
    let o = ServeOptions::new(socket.clone(), "sha256:00".into());
    let lazy = d.lazy.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(serve(lazy, &o, |_| {}));
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&socket) {
            break s;
        }
        assert!(Instant::now() < deadline, "serve never listened");
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(stream);
    let report = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("serve did not return after the disconnect")
        .expect("a disconnect is a clean end");
    assert_eq!(report.connections, 1);
}

#[test]
fn serve_refuses_writable_without_a_dedicated_tier() {
    let d = device(false);
    let mut o = ServeOptions::new(d.dir.join("s.sock"), "sha256:00".into());
    o.writable = true;
    let err = serve(d.lazy.clone(), &o, |_| {}).unwrap_err();
    assert!(matches!(err, ServeError::NotWritable), "{err}");
    o.writable = false;
    o.queue_size = 100;
    assert!(matches!(
        serve(d.lazy.clone(), &o, |_| {}).unwrap_err(),
        ServeError::Options(_)
    ));
}

#[test]
fn a_stop_handle_ends_a_server_waiting_for_a_frontend() {
    let d = device(false);
    let mut o = ServeOptions::new(d.dir.join("stop.sock"), "sha256:00".into());
    o.keep_alive = true;
    let server = Server::new(d.lazy.clone(), &o).unwrap();
    let stop = server.stop_handle();
    let (listening_tx, listening_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.run(move |_| {
            let _ = listening_tx.send(());
        }));
    });
    listening_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server never listened");
    stop.stop();
    let report = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server did not return after its stop")
        .expect("a stop is a clean end");
    assert_eq!(report.connections, 0);

    // A stop asked before the run makes it return at once.
    let server = Server::new(d.lazy.clone(), &o).unwrap();
    server.stop_handle().stop();
    assert_eq!(server.run(|_| {}).unwrap().connections, 0);
}

#[test]
fn reads_through_the_device_record_a_start_profile() {
    let d = device(false);
    d.store.open();
    let mem = guest_memory();
    let o = opts(false);
    let digest = manifest::ManifestDigest::of(b"the sealed manifest");
    let recorder = Arc::new(crate::profile::ProfileRecorder::new(
        digest,
        d.lazy.manifest(),
        None,
    ));
    let mut h = harness(&mem, &d, &o);
    assert!(h.service.record_profile(recorder.clone()));
    // Chunk 2, then a read spanning chunks 0 and 1, then chunk 2 again.
    let chunk_sectors = CHUNK as u64 / 512;
    for (n, sector, len) in [
        (0u64, 2 * chunk_sectors + 8, 1024u32),
        (1, chunk_sectors - 1, 1024),
        (2, 2 * chunk_sectors, 512),
    ] {
        h.submit(&[
            header(&mem, n, VIRTIO_BLK_T_IN, sector),
            desc(DATA + n * 0x1_0000, len, true),
            status_desc(n),
        ]);
        h.kick();
        h.wait_used(n as usize + 1);
    }
    let profile = recorder.profile();
    assert_eq!(profile.manifest, digest);
    let chunks: Vec<u64> = profile.entries.iter().map(|e| e.chunk).collect();
    assert_eq!(chunks, [2, 0, 1]);
    assert_eq!(profile.entries[0].first_access_us, 0);
    assert!(
        profile
            .entries
            .windows(2)
            .all(|w| w[0].first_access_us <= w[1].first_access_us)
    );
}

/// Read-ahead off: a read-ahead thread would take the chunk a test holds
/// at the gate, and the counts would not be the reads' own.
fn no_readahead() -> LazyOptions {
    LazyOptions {
        readahead_chunks: 0,
        ..LazyOptions::default()
    }
}

mod hostile;
