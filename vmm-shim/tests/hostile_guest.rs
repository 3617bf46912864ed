//! Hostile-guest soak (issue 14): an adversary that owns the guest memory
//! of a vhost-user frontend drives a real `imagefs serve --writable
//! --keep-alive` process.
//!
//! Each round connects (with or without EVENT_IDX), runs batches that mix
//! correct reads, writes and flushes (on disjoint sectors, checked against
//! an in-memory model of the disk) with chains the device must reject
//! (indirect and direct loops, nested indirect tables, descriptors and
//! headers outside guest memory, `next` outside the table, huge lengths,
//! sectors past the end), then ends with one of: an available index past
//! the window, a head repeated while in flight, a head outside the queue
//! (each breaks the queue), or a disconnect in the middle of a batch; and
//! reconnects, which restarts the queue.
//!
//! Pass: every correct request returns the model's bytes; the daemon's
//! VmHWM stays under [`RSS_BOUND_KIB`]; at the end, with a queue broken
//! under EVENT_IDX and still connected, SIGTERM ends it within 5 s and its
//! report counts every broken queue.
//!
//! Runs for `IMAGEFS_SOAK_SECS` (default 20; the long soak is 600) with the
//! seed `IMAGEFS_SOAK_SEED` (printed). Needs the `imagefs` binary (`cargo
//! build -p tools`, or `IMAGEFS_BIN`); prints `SKIP:` without it.

mod hostile;

use std::time::{Duration, Instant};

use hostile::{IO_TIMEOUT, QSIZE, RAM, connect, env_u64, image, read_all, serve};
use manifest::report::ServeStats;
use tests::rng::Rng;
use vmm_shim::driver::{
    BlkDriver, F_INDIRECT, F_NEXT, F_WRITE, Op, S_OK, S_UNSET, SLOT_DATA, T_IN, write_desc_at,
};
use vmm_shim::memory::GuestRam;
use vmm_shim::vhost_blk::VhostBlk;

/// The daemon's peak resident memory must stay under this (KiB): the
/// image's chunk cache, the I/O pool's buffers and the 16 MiB of guest
/// memory it maps, with room to spare, but far below what an unbounded
/// queue of requests would take.
const RSS_BOUND_KIB: u64 = 256 * 1024;

/// A chain the device must reject, built in one slot's descriptors.
#[derive(Debug, Clone, Copy)]
enum Attack {
    IndirectLoop,
    DirectLoop,
    NestedIndirect,
    DataOutside,
    HeaderOutside,
    NextOutOfRange,
    HugeLength,
    PastTheEnd,
}

const ATTACKS: [Attack; 8] = [
    Attack::IndirectLoop,
    Attack::DirectLoop,
    Attack::NestedIndirect,
    Attack::DataOutside,
    Attack::HeaderOutside,
    Attack::NextOutOfRange,
    Attack::HugeLength,
    Attack::PastTheEnd,
];

/// How a round ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    PastWindow,
    RepeatedHead,
    HeadOutOfRange,
    MidRequestDisconnect,
}

/// What one slot of a batch holds.
enum Slot {
    Good(Op),
    Bad(Attack),
}

struct Soak {
    ram: GuestRam,
    drv: BlkDriver,
    model: Vec<u8>,
    sectors: u64,
    rng: Rng,
    attacks: u64,
    breaks: u64,
    good: u64,
}

impl Soak {
    /// Writes slot `slot`'s descriptors for `attack`; returns its head.
    fn build_attack(&mut self, slot: u16, attack: Attack) -> u16 {
        let (ram, drv) = (&self.ram, &self.drv);
        let [h, d, s] = [slot * 3, slot * 3 + 1, slot * 3 + 2];
        let header = BlkDriver::header_addr(slot);
        let status = BlkDriver::status_addr(slot);
        let data = BlkDriver::data_addr(slot);
        let table = drv.scratch() + u64::from(slot) * 256;
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&T_IN.to_le_bytes());
        let sector = if matches!(attack, Attack::PastTheEnd) {
            self.sectors
        } else {
            0
        };
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        ram.write(header, &hdr).unwrap();
        ram.write(status, &[S_UNSET]).unwrap();
        let w = |i, addr, len, flags, next| drv.write_desc(ram, i, addr, len, flags, next).unwrap();
        let t = |i: u64, addr, len, flags, next| {
            write_desc_at(ram, table + 16 * i, addr, len, flags, next).unwrap()
        };
        match attack {
            Attack::IndirectLoop => {
                w(h, table, 32, F_INDIRECT, 0);
                t(0, header, 16, F_NEXT, 1);
                t(1, data, 512, F_NEXT | F_WRITE, 0);
            }
            Attack::DirectLoop => {
                w(h, header, 16, F_NEXT, d);
                w(d, data, 512, F_NEXT | F_WRITE, s);
                w(s, status, 1, F_NEXT | F_WRITE, h);
            }
            Attack::NestedIndirect => {
                w(h, table, 32, F_INDIRECT, 0);
                t(0, header, 16, F_NEXT, 1);
                t(1, table, 32, F_INDIRECT, 0);
            }
            Attack::DataOutside => {
                w(h, header, 16, F_NEXT, d);
                w(d, RAM + 0x1000, 4096, F_NEXT | F_WRITE, s);
                w(s, status, 1, F_WRITE, 0);
            }
            Attack::HeaderOutside => {
                w(h, u64::MAX - 8, 16, F_NEXT, s);
                w(s, status, 1, F_WRITE, 0);
            }
            Attack::NextOutOfRange => {
                w(h, header, 16, F_NEXT, QSIZE + 77);
            }
            Attack::HugeLength => {
                w(h, header, 16, F_NEXT, d);
                w(d, data, u32::MAX, F_NEXT | F_WRITE, s);
                w(s, status, 1, F_WRITE, 0);
            }
            Attack::PastTheEnd => {
                w(h, header, 16, F_NEXT, d);
                w(d, data, 4096, F_NEXT | F_WRITE, s);
                w(s, status, 1, F_WRITE, 0);
            }
        }
        h
    }

    /// A correct read or write on sectors no other slot of the batch
    /// touches (`taken`), or a flush.
    fn good_op(&mut self, taken: &mut Vec<(u64, u64)>) -> Op {
        if self.rng.chance(8) {
            return Op::Flush;
        }
        let max = SLOT_DATA / 512;
        for _ in 0..20 {
            let len = 1 + self.rng.below(max);
            let sector = self.rng.below(self.sectors - len + 1);
            if taken.iter().any(|&(a, b)| sector < b && a < sector + len) {
                continue;
            }
            taken.push((sector, sector + len));
            return if self.rng.chance(50) {
                Op::Read {
                    sector,
                    len: (len * 512) as u32,
                }
            } else {
                let mut data = vec![0u8; (len * 512) as usize];
                let stamp = self.rng.next_u64();
                for (i, c) in data.chunks_mut(8).enumerate() {
                    c.copy_from_slice(&(stamp ^ i as u64).to_le_bytes());
                }
                Op::Write { sector, data }
            };
        }
        Op::Flush
    }

    /// Fills slots `0..n` with correct requests and attacks and publishes
    /// them all at once; returns what each slot holds.
    fn publish_batch(&mut self, n: u16, attack_percent: u64) -> Vec<(u16, Slot)> {
        let mut taken = Vec::new();
        let mut slots = Vec::new();
        for slot in 0..n {
            let (head, what) = if self.rng.chance(attack_percent) {
                let attack = ATTACKS[self.rng.below(ATTACKS.len() as u64) as usize];
                (self.build_attack(slot, attack), Slot::Bad(attack))
            } else {
                let op = self.good_op(&mut taken);
                (
                    self.drv.prepare(&self.ram, slot, &op).unwrap(),
                    Slot::Good(op),
                )
            };
            slots.push((head, what));
        }
        let heads: Vec<u16> = slots.iter().map(|s| s.0).collect();
        self.drv.push_heads(&self.ram, &heads).unwrap();
        slots
    }

    /// Checks one completed slot against the model, and applies a write.
    fn check(&mut self, head: u16, what: &Slot) {
        let slot = BlkDriver::slot_of(head);
        let status = self.drv.status(&self.ram, slot).unwrap();
        match what {
            Slot::Bad(attack) => {
                self.attacks += 1;
                assert_ne!(status, S_OK, "{attack:?} in slot {slot} was accepted");
            }
            Slot::Good(op) => {
                self.good += 1;
                assert_eq!(status, S_OK, "{op:?} failed with status {status}");
                match op {
                    Op::Read { sector, len } => {
                        let got = self.drv.data(&self.ram, slot, *len as usize).unwrap();
                        let at = (*sector * 512) as usize;
                        assert!(
                            got == self.model[at..at + *len as usize],
                            "read of {len} bytes at sector {sector} differs from the model"
                        );
                    }
                    Op::Write { sector, data } => {
                        let at = (*sector * 512) as usize;
                        self.model[at..at + data.len()].copy_from_slice(data);
                    }
                    Op::Flush => {}
                }
            }
        }
    }

    /// A mixed batch, run to completion and checked.
    fn mixed_batch(&mut self, blk: &VhostBlk) {
        let n = 1 + self.rng.below(u64::from(self.drv.slots())) as u16;
        let slots = self.publish_batch(n, 15);
        BlkDriver::kick(blk).unwrap();
        let heads: Vec<u16> = slots.iter().map(|s| s.0).collect();
        let used = self
            .drv
            .wait_until(&self.ram, IO_TIMEOUT, "a mixed batch", |got| {
                heads.iter().all(|h| got.iter().any(|g| g.0 == *h))
            })
            .unwrap();
        assert_eq!(used.len(), heads.len(), "one completion per request");
        for (head, what) in &slots {
            self.check(*head, what);
        }
    }
}

/// Waits until the device signals the queue's error eventfd (it marked
/// the queue broken), with the I/O hang guard.
fn wait_broken(blk: &VhostBlk, what: Ending) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match blk.err.read() {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the error eventfd: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "{what:?}: the device never reported the queue broken"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn stats(path: &std::path::Path) -> ServeStats {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no serve report at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a serve report: {e}\n{text}"))
}

#[test]
fn hostile_guest_soak() {
    let Some(img) = image() else { return };
    let secs = env_u64("IMAGEFS_SOAK_SECS", 20);
    let work = img.dir.path();
    let socket = work.join("soak.sock");
    let stats_path = work.join("soak.stats.json");
    let dedicated = work.join("dedicated");
    let mut daemon = serve(
        &img,
        &socket,
        &work.join("soak.log"),
        &[
            "--writable",
            "--keep-alive",
            "--dedicated",
            dedicated.to_str().unwrap(),
            "--stats-json",
            stats_path.to_str().unwrap(),
        ],
    );
    let ram = GuestRam::new(RAM).unwrap();
    let drv = BlkDriver::new(&ram, QSIZE).unwrap();
    let mut blk = connect(&socket, &ram, &drv, false, 0);
    let sectors = blk.capacity_sectors();
    let mut s = Soak {
        ram,
        drv,
        model: Vec::new(),
        sectors,
        rng: Rng::from_env("IMAGEFS_SOAK_SEED"),
        attacks: 0,
        breaks: 0,
        good: 0,
    };
    s.model = read_all(&s.ram, &mut s.drv, &blk, sectors);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rounds = 0u64;
    let mut peak_rss = 0;
    while Instant::now() < deadline {
        rounds += 1;
        for _ in 0..1 + s.rng.below(4) {
            s.mixed_batch(&blk);
        }
        let ending = match s.rng.below(4) {
            0 => Ending::PastWindow,
            1 => Ending::RepeatedHead,
            2 => Ending::HeadOutOfRange,
            _ => Ending::MidRequestDisconnect,
        };
        // Requests left outstanding when the connection goes, checked (or
        // found never taken) after the reconnect.
        let mut outstanding: Vec<(u16, Slot)> = Vec::new();
        match ending {
            Ending::PastWindow => {
                let idx = s.drv.avail_idx();
                let ahead = QSIZE + 1 + s.rng.below(1000) as u16;
                s.drv
                    .set_avail_idx(&s.ram, idx.wrapping_add(ahead))
                    .unwrap();
                BlkDriver::kick(&blk).unwrap();
                s.breaks += 1;
            }
            Ending::RepeatedHead => {
                let sector = s.rng.below(sectors - 8);
                let op = Op::Read { sector, len: 4096 };
                let head = s.drv.prepare(&s.ram, 0, &op).unwrap();
                let copies = 2 + s.rng.below(5) as usize;
                s.drv.push_heads(&s.ram, &vec![head; copies]).unwrap();
                BlkDriver::kick(&blk).unwrap();
                outstanding.push((head, Slot::Good(op)));
                s.breaks += 1;
            }
            Ending::HeadOutOfRange => {
                let head = QSIZE + s.rng.below(u64::from(u16::MAX - QSIZE)) as u16;
                s.drv.push_head(&s.ram, head).unwrap();
                BlkDriver::kick(&blk).unwrap();
                s.breaks += 1;
            }
            Ending::MidRequestDisconnect => {
                let n = 1 + s.rng.below(u64::from(s.drv.slots())) as u16;
                outstanding = s.publish_batch(n, 0);
                BlkDriver::kick(&blk).unwrap();
            }
        }
        if ending != Ending::MidRequestDisconnect {
            wait_broken(&blk, ending);
        }
        // Disconnect, then reconnect: serve finishes every request it took
        // before it accepts the next frontend, so once the handshake is
        // done, what is not on the used ring was never taken.
        drop(blk);
        let event_idx = s.rng.chance(50) || rounds.is_multiple_of(4);
        let mut next = VhostBlk::connect(&socket, IO_TIMEOUT).expect("reconnect");
        let used = s.drv.collect(&s.ram).unwrap();
        for (head, what) in &outstanding {
            let n = used.iter().filter(|u| u.0 == *head).count();
            assert!(n <= 1, "head {head} completed {n} times");
            if n == 1 {
                s.check(*head, what);
            }
        }
        let base = s.drv.used_idx(&s.ram).unwrap();
        s.drv.rewind(&s.ram, base).unwrap();
        let mut features = next.device_features();
        if !event_idx {
            features &= !hostile::EVENT_IDX;
        }
        next.activate_from(&s.ram, features, s.drv.layout(), base)
            .expect("restart the queue");
        blk = next;
        let (rss, hwm) = daemon.memory_kib();
        peak_rss = peak_rss.max(rss);
        assert!(
            hwm < RSS_BOUND_KIB,
            "round {rounds}: the daemon's VmHWM is {hwm} KiB, over {RSS_BOUND_KIB}"
        );
    }
    // The queue works after the last reconnect; the model still holds.
    let all = read_all(&s.ram, &mut s.drv, &blk, sectors);
    assert!(
        all == s.model,
        "the device differs from the model at the end"
    );
    // End on a queue broken under EVENT_IDX, still connected: SIGTERM must
    // still end the daemon (the worker is back in epoll).
    drop(blk);
    let mut last = VhostBlk::connect(&socket, IO_TIMEOUT).expect("reconnect");
    s.drv.collect(&s.ram).unwrap();
    let base = s.drv.used_idx(&s.ram).unwrap();
    s.drv.rewind(&s.ram, base).unwrap();
    let features = last.device_features();
    last.activate_from(&s.ram, features, s.drv.layout(), base)
        .unwrap();
    s.drv
        .set_avail_idx(&s.ram, base.wrapping_add(QSIZE + 9))
        .unwrap();
    BlkDriver::kick(&last).unwrap();
    s.breaks += 1;
    // The worker has seen the kick (the case that hung) before the signal.
    wait_broken(&last, Ending::PastWindow);
    let (_, hwm) = daemon.memory_kib();
    let pid = daemon.pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = daemon.proc.wait_timeout(Duration::from_secs(5));
    let log = daemon.output();
    let status = status.unwrap_or_else(|| {
        panic!("SIGTERM did not end imagefs serve within 5 s:\n{log}");
    });
    assert!(status.success(), "imagefs serve failed ({status}):\n{log}");
    drop(last);
    let report = stats(&stats_path).served.expect("a served report");
    eprintln!(
        "{rounds} rounds in {secs} s: {} correct requests checked, {} rejected chains, \
         {} broken queues; daemon peak VmRSS {peak_rss} KiB, VmHWM {hwm} KiB; {report}",
        s.good, s.attacks, s.breaks
    );
    assert_eq!(
        report.broken_queues, s.breaks,
        "every queue-breaking attack broke the queue once:\n{log}"
    );
    assert!(report.rejected >= s.attacks, "{report:?}");
    assert!(hwm < RSS_BOUND_KIB, "VmHWM {hwm} KiB");
}
