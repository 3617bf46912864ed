//! Crash consistency of `imagefs serve --writable` (issue 14): random
//! writes and FLUSHes through a real vhost-user frontend, then `kill -9`
//! at a random point; serve restarts on the same dedicated directory and
//! the whole device is read back:
//!
//! - every write acknowledged by a completed FLUSH reads back exactly;
//! - a sector written but not flushed reads back one of the values it had
//!   since its last flushed one (old or new), never a third;
//! - a sector never written reads back the image's bytes;
//! - the restarted serve reports its dedicated tier as reused.
//!
//! Every write fills each sector with a pattern naming the write and the
//! sector, so a sector's bytes say which write they came from. Writes in
//! flight never overlap, so one sector's writes complete in order.
//!
//! `IMAGEFS_CRASH_ROUNDS` rounds (default 100), seed `IMAGEFS_CRASH_SEED`
//! (printed). Needs the `imagefs` binary (`cargo build -p tools`, or
//! `IMAGEFS_BIN`); prints `SKIP:` without it.

mod hostile;

use std::collections::HashMap;
use std::time::Duration;

use hostile::{QSIZE, RAM, Serve, connect, env_u64, image, read_all, serve};
use tests::rng::Rng;
use vmm_shim::driver::{BlkDriver, Op, S_OK, SLOT_DATA};
use vmm_shim::memory::GuestRam;

/// What a slot has in flight.
#[derive(Debug, Clone)]
enum Pending {
    /// Write `id`, whose first sector is `first`.
    Write { id: u64, first: u64 },
    /// A flush; `seen` writes had completed when it was submitted.
    Flush { seen: usize },
}

/// What the disk may hold, sector by sector.
struct Model {
    /// The image's bytes (what a never-written sector holds).
    original: Vec<u8>,
    /// Per sector: the write ids it may hold after a crash, oldest first;
    /// the first is durable (0: the original bytes).
    hist: Vec<Vec<u64>>,
    /// Writes completed this round, in completion order.
    completed: Vec<u64>,
    /// Where each write of this round went.
    writes: HashMap<u64, (u64, u64)>,
    next_id: u64,
}

/// Sector `sector`'s bytes as write `id` writes them.
fn pattern(id: u64, sector: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    for (i, word) in b.chunks_mut(8).enumerate() {
        let v = match i {
            0 => id,
            1 => sector,
            _ => id.rotate_left(i as u32) ^ sector.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        word.copy_from_slice(&v.to_le_bytes());
    }
    b
}

impl Model {
    /// Which write sector `sector`'s `bytes` came from (0: the image's),
    /// or `None` for a third value.
    fn identify(&self, sector: u64, bytes: &[u8]) -> Option<u64> {
        let at = (sector * 512) as usize;
        if bytes == &self.original[at..at + 512] {
            return Some(0);
        }
        let id = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        (id != 0 && bytes == pattern(id, sector)).then_some(id)
    }

    /// Checks the device's bytes after a restart, and makes them the
    /// durable state.
    fn check(&mut self, round: u64, disk: &[u8]) {
        for (sector, bytes) in disk.chunks(512).enumerate() {
            let sector = sector as u64;
            let allowed = &self.hist[sector as usize];
            let got = self.identify(sector, bytes);
            assert!(
                got.is_some_and(|id| allowed.contains(&id)),
                "round {round}: sector {sector} holds {} but may only hold one of {allowed:?} \
                 (0 is the image's bytes; the first is the last flushed)",
                got.map_or("a third value".to_string(), |id| format!("write {id}")),
            );
            self.hist[sector as usize] = vec![got.unwrap_or(0)];
        }
        self.completed.clear();
        self.writes.clear();
    }

    /// A completed flush: every write completed before it was submitted
    /// is durable (the sector's earlier values are no longer allowed).
    fn flushed(&mut self, seen: usize) {
        for id in &self.completed[..seen] {
            let (first, count) = self.writes[id];
            for s in first..first + count {
                let h = &mut self.hist[s as usize];
                if let Some(pos) = h.iter().position(|x| x == id) {
                    h.drain(..pos);
                }
            }
        }
    }
}

struct Round<'a> {
    ram: &'a GuestRam,
    drv: BlkDriver,
    pending: HashMap<u16, Pending>,
    /// Sectors with a write in flight (writes never overlap in flight).
    busy: Vec<(u64, u64)>,
}

impl Round<'_> {
    /// Takes the completions so far into the model.
    fn collect(&mut self, model: &mut Model) {
        for (head, _) in self.drv.collect(self.ram).unwrap() {
            let slot = BlkDriver::slot_of(head);
            let status = self.drv.status(self.ram, slot).unwrap();
            let p = self
                .pending
                .remove(&slot)
                .unwrap_or_else(|| panic!("completion of slot {slot}, which has nothing"));
            assert_eq!(status, S_OK, "{p:?} failed with status {status}");
            match p {
                Pending::Write { id, first } => {
                    model.completed.push(id);
                    // In-flight ranges never overlap: the first sector
                    // names the range.
                    self.busy.retain(|&(a, _)| a != first);
                }
                Pending::Flush { seen } => model.flushed(seen),
            }
        }
    }

    fn free_slot(&self) -> Option<u16> {
        (0..self.drv.slots()).find(|s| !self.pending.contains_key(s))
    }
}

fn start(img: &hostile::Image, dedicated: &std::path::Path, round: u64) -> Serve {
    let work = img.dir.path();
    serve(
        img,
        &work.join("crash.sock"),
        &work.join(format!("crash-{round}.log")),
        &["--writable", "--dedicated", dedicated.to_str().unwrap()],
    )
}

#[test]
fn writable_serve_survives_kill_9() {
    let Some(img) = image() else { return };
    let rounds = env_u64("IMAGEFS_CRASH_ROUNDS", 100);
    let mut rng = Rng::from_env("IMAGEFS_CRASH_SEED");
    let dedicated = img.dir.path().join("dedicated");
    let ram = GuestRam::new(RAM).unwrap();
    let mut model: Option<Model> = None;
    let (mut writes, mut flushes, mut kills_in_flight) = (0u64, 0u64, 0u64);
    for round in 0..=rounds {
        let mut daemon = start(&img, &dedicated, round);
        let drv = BlkDriver::new(&ram, QSIZE).unwrap();
        let blk = connect(&daemon.socket, &ram, &drv, rng.chance(50), 0);
        let sectors = blk.capacity_sectors();
        let mut r = Round {
            ram: &ram,
            drv,
            pending: HashMap::new(),
            busy: Vec::new(),
        };
        let disk = read_all(&ram, &mut r.drv, &blk, sectors);
        match &mut model {
            None => {
                model = Some(Model {
                    original: disk,
                    hist: vec![vec![0]; sectors as usize],
                    completed: Vec::new(),
                    writes: HashMap::new(),
                    next_id: 1,
                });
            }
            Some(m) => {
                let log = daemon.output();
                assert!(
                    log.lines().any(|l| l.contains("dedicated tier reused")),
                    "round {round}: the restarted serve did not reuse its dedicated tier:\n{log}"
                );
                m.check(round, &disk);
            }
        }
        let m = model.as_mut().expect("set above");
        if round == rounds {
            break;
        }
        // Random writes and flushes, then kill -9 at a random step.
        let steps = 1 + rng.below(60);
        for _ in 0..steps {
            r.collect(m);
            let Some(slot) = r.free_slot() else {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            };
            let op = if rng.chance(20) {
                r.pending.insert(
                    slot,
                    Pending::Flush {
                        seen: m.completed.len(),
                    },
                );
                flushes += 1;
                Op::Flush
            } else {
                let count = 1 + rng.below(SLOT_DATA / 512);
                let first = rng.below(sectors - count + 1);
                if r.busy.iter().any(|&(a, b)| first < b && a < first + count) {
                    continue;
                }
                let id = m.next_id;
                m.next_id += 1;
                let mut data = Vec::with_capacity((count * 512) as usize);
                for s in first..first + count {
                    data.extend_from_slice(&pattern(id, s));
                    m.hist[s as usize].push(id);
                }
                m.writes.insert(id, (first, count));
                r.busy.push((first, first + count));
                r.pending.insert(slot, Pending::Write { id, first });
                writes += 1;
                Op::Write {
                    sector: first,
                    data,
                }
            };
            r.drv.submit(&ram, slot, &op).unwrap();
            BlkDriver::kick(&blk).unwrap();
            if rng.chance(30) {
                std::thread::sleep(Duration::from_micros(rng.below(3000)));
            }
        }
        if rng.chance(30) {
            std::thread::sleep(Duration::from_micros(rng.below(5000)));
        }
        daemon.proc.child.kill().unwrap();
        daemon.proc.child.wait().unwrap();
        r.collect(m);
        if !r.pending.is_empty() {
            kills_in_flight += 1;
        }
        drop(blk);
    }
    eprintln!(
        "{rounds} kill -9 rounds: {writes} writes, {flushes} flushes, \
         {kills_in_flight} kills with requests in flight"
    );
}
