//! The hand-over between a download and its reader, with a real file
//! and threads.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc;

use super::*;
use crate::oci::store::FileRange;

/// A file of `total` bytes written in two halves by another thread;
/// the reader is told when to let the writer go on.
fn halves(total: usize) -> (Arc<std::fs::File>, Arc<Arrival>, Vec<u8>) {
    let file = Arc::new(tempfile::tempfile().unwrap());
    let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
    (file, Arc::new(Arrival::new()), data)
}

#[test]
fn reads_what_has_arrived_and_ends_only_when_checked() {
    let (file, arrival, data) = halves(10_000);
    let half = data.len() / 2;
    let mut range = FileRange::new(file.clone(), 0, data.len() as u64).arriving(arrival.clone());
    let (go_on, next) = mpsc::channel::<()>();
    let writer = {
        let (file, arrival, data) = (file.clone(), arrival.clone(), data.clone());
        std::thread::spawn(move || {
            file.write_all_at(&data[..half], 0).unwrap();
            arrival.grew(half as u64);
            next.recv().unwrap();
            file.write_all_at(&data[half..], half as u64).unwrap();
            arrival.grew(data.len() as u64);
            next.recv().unwrap();
            arrival.finish(Ok(()));
        })
    };
    // The first half is readable while the writer waits for us.
    let mut got = vec![0u8; half];
    range.read_exact(&mut got).unwrap();
    assert_eq!(got, data[..half]);
    go_on.send(()).unwrap();
    let mut rest = vec![0u8; data.len() - half];
    range.read_exact(&mut rest).unwrap();
    assert_eq!(rest, data[half..]);
    // Everything has arrived, but the end waits for the check.
    assert!(arrival.lock().end.is_none());
    go_on.send(()).unwrap();
    let mut more = [0u8; 16];
    assert_eq!(range.read(&mut more).unwrap(), 0);
    writer.join().unwrap();
}

#[test]
fn a_failed_download_is_an_error_not_an_end() {
    let (file, arrival, data) = halves(4096);
    file.write_all_at(&data, 0).unwrap();
    arrival.grew(data.len() as u64);
    let mut range = FileRange::new(file, 0, data.len() as u64).arriving(arrival.clone());
    let mut all = Vec::new();
    let writer = {
        let arrival = arrival.clone();
        std::thread::spawn(move || {
            arrival.finish(Err("blob sha256:ab does not match its digest".into()))
        })
    };
    let err = range.read_to_end(&mut all).unwrap_err();
    writer.join().unwrap();
    assert!(err.to_string().contains("does not match"), "{err}");
    // Asked again, by the reader or anyone: the same error, never a
    // clean end.
    let again = range.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    assert_eq!(arrival.verdict().unwrap().to_string(), err.to_string());
}

#[test]
fn a_writer_that_stops_fails_its_readers() {
    let (file, arrival, _) = halves(100);
    let mut range = FileRange::new(file, 0, 100).arriving(arrival.clone());
    let writer = {
        let arrival = arrival.clone();
        std::thread::spawn(move || {
            let _guard = FinishGuard(&arrival);
            arrival.grew(0);
            panic!("writer dies");
        })
    };
    assert!(writer.join().is_err());
    let err = range.read(&mut [0u8; 8]).unwrap_err();
    assert!(err.to_string().contains("without finishing"), "{err}");
}

#[test]
fn peek_waits_for_the_bytes_it_shows() {
    let (file, arrival, data) = halves(64);
    let range = FileRange::new(file.clone(), 0, 64).arriving(arrival.clone());
    let writer = {
        let (arrival, data) = (arrival.clone(), data.clone());
        std::thread::spawn(move || {
            file.write_all_at(&data[..2], 0).unwrap();
            arrival.grew(2);
            file.write_all_at(&data[2..], 2).unwrap();
            arrival.grew(64);
        })
    };
    let mut head = [0u8; 4];
    assert_eq!(range.peek(&mut head).unwrap(), 4);
    assert_eq!(head, data[..4]);
    writer.join().unwrap();
}

/// Writes `data` the way the spool does, `chunk` bytes (at most
/// [`BUFFER`]) at a time: to the file until a reader is on, then
/// handed over in memory.
fn spool_like(file: &std::fs::File, arrival: &Arrival, data: &[u8], chunk: usize) {
    let mut at = 0;
    let mut buf = arrival.buffer();
    for piece in data.chunks(chunk) {
        buf[..piece.len()].copy_from_slice(piece);
        buf = match arrival.hand_over(buf, 0, piece.len()) {
            Ok(next) => next,
            Err(back) => {
                file.write_all_at(piece, at as u64).unwrap();
                arrival.grew((at + piece.len()) as u64);
                back
            }
        };
        at += piece.len();
    }
}

#[test]
fn once_a_reader_is_on_what_arrives_comes_in_memory_not_through_the_file() {
    let (file, arrival, data) = halves(300_000);
    // Before the reader comes: the file.
    file.write_all_at(&data[..100_000], 0).unwrap();
    arrival.grew(100_000);
    let mut range = FileRange::new(file.clone(), 0, data.len() as u64).arriving(arrival.clone());
    let writer = {
        let (file, arrival, data) = (file.clone(), arrival.clone(), data.clone());
        std::thread::spawn(move || {
            // The rest, handed over (the offsets as the spool keeps them).
            let mut buf = arrival.buffer();
            for piece in data[100_000..].chunks(10_000) {
                buf[..piece.len()].copy_from_slice(piece);
                buf = arrival
                    .hand_over(buf, 0, piece.len())
                    .expect("a reader is on the layer");
            }
            arrival.finish(Ok(()));
            drop(file);
        })
    };
    let mut head = [0u8; 16];
    assert_eq!(range.peek(&mut head).unwrap(), 16);
    assert_eq!(head, data[..16]);
    let mut all = Vec::new();
    range.read_to_end(&mut all).unwrap();
    writer.join().unwrap();
    assert!(all == data, "the bytes read differ from those written");
    // Only what came before the reader was written to the file.
    assert_eq!(file.metadata().unwrap().len(), 100_000);
}

#[test]
fn the_file_is_freed_once_when_the_reader_leaves_it() {
    let (file, arrival, data) = halves(300_000);
    file.write_all_at(&data[..100_000], 0).unwrap();
    arrival.grew(100_000);
    assert!(arrival.file_unread(), "no reader yet");
    let mut reader = Arriving::new(arrival.clone());
    assert!(arrival.file_unread(), "the file's bytes are not read yet");
    let writer = {
        let (arrival, data) = (arrival.clone(), data.clone());
        std::thread::spawn(move || {
            let mut buf = arrival.buffer();
            for piece in data[100_000..].chunks(10_000) {
                buf[..piece.len()].copy_from_slice(piece);
                buf = arrival.hand_over(buf, 0, piece.len()).unwrap();
            }
            arrival.finish(Ok(()));
        })
    };
    let (mut pos, mut all) = (0u64, Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader
            .read(&file, &mut pos, data.len() as u64, &mut buf)
            .unwrap()
        {
            0 => break,
            n => all.extend_from_slice(&buf[..n]),
        }
    }
    writer.join().unwrap();
    assert!(all == data, "the bytes read differ from those written");
    // One punch, as the reader left the file for the held buffers; none
    // for the twenty buffers after (they were never in the file).
    assert_eq!(reader.punches, 1);
    assert_eq!(reader.freed, None);
    assert!(!arrival.file_unread(), "the reader has left the file");
}

// Two held buffers stay under HELD_MAX: the next test's writer shares its
// reader's thread, and past HELD_MAX it would wait for ever.
const _: () = assert!(2 * BUFFER <= HELD_MAX);

/// What the converter asks before writing its store back: whether the
/// file holds bytes still to be read (dirty pages a `syncfs` would write).
#[test]
fn the_file_counts_as_unread_only_while_it_holds_bytes_to_read() {
    // Its writer runs on this thread: a writer waiting on its reader
    // would wait on itself, so a hang fails here rather than stalling CI.
    within(the_file_counts_as_unread_body);
}

fn the_file_counts_as_unread_body() {
    // A reader on the blob before anything arrives: all in memory.
    let (file, arrival, data) = halves(100_000);
    let mut range = FileRange::new(file.clone(), 0, data.len() as u64).arriving(arrival.clone());
    assert!(
        !arrival.file_unread(),
        "a reader is on it, the file is empty"
    );
    // Two buffers: this thread is the reader too, so the writer must not
    // reach HELD_MAX and wait for it (held to at compile time, above).
    spool_like(&file, &arrival, &data, 50_000);
    arrival.finish(Ok(()));
    assert!(!arrival.file_unread(), "everything was handed over");
    let mut all = Vec::new();
    range.read_to_end(&mut all).unwrap();
    assert!(all == data, "the bytes read differ from those written");

    // A blob that arrived whole before its reader came: in the file
    // until the reader is done with it.
    let (file, arrival, data) = halves(100_000);
    spool_like(&file, &arrival, &data, 10_000);
    arrival.finish(Ok(()));
    assert!(arrival.file_unread(), "no reader yet");
    let mut range = FileRange::new(file.clone(), 0, data.len() as u64).arriving(arrival.clone());
    let mut all = Vec::new();
    range.read_to_end(&mut all).unwrap();
    assert!(all == data, "the bytes read differ from those written");
    assert!(arrival.file_unread(), "read, but the reader is still on it");
    drop(range);
    assert!(!arrival.file_unread(), "the reader has gone");
}

/// A reader on `total` bytes that a writer thread spools as the spool
/// does, ending the download with `end`.
struct Spooled {
    file: Arc<std::fs::File>,
    arrival: Arc<Arrival>,
    data: Vec<u8>,
    range: FileRange,
    writer: std::thread::JoinHandle<()>,
}

fn spooled(total: usize, end: fn() -> Result<(), Failure>) -> Spooled {
    let (file, arrival, data) = halves(total);
    let range = FileRange::new(file.clone(), 0, total as u64).arriving(arrival.clone());
    let writer = {
        let (file, arrival, data) = (file.clone(), arrival.clone(), data.clone());
        std::thread::spawn(move || {
            spool_like(&file, &arrival, &data, 256 * 1024);
            arrival.finish(end());
        })
    };
    Spooled {
        file,
        arrival,
        data,
        range,
        writer,
    }
}

#[test]
fn the_writer_holds_no_more_than_held_max_ahead_of_its_reader() {
    let Spooled {
        file,
        arrival,
        data,
        mut range,
        writer,
    } = spooled(3 * HELD_MAX + 12_345, || Ok(()));
    let mut all = Vec::new();
    let mut buf = vec![0u8; 100_000];
    loop {
        // What the writer holds: never more than one buffer past the
        // bound, however slowly the reader goes.
        let held = arrival.lock().held_bytes;
        assert!(held <= HELD_MAX + 256 * 1024, "{held} bytes held");
        match range.read(&mut buf).unwrap() {
            0 => break,
            n => all.extend_from_slice(&buf[..n]),
        }
    }
    writer.join().unwrap();
    assert!(all == data, "the bytes read differ from those written");
    assert_eq!(file.metadata().unwrap().len(), 0);
}

/// What `f` returns, failing (not hanging) if it does not return.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, ended) = mpsc::channel();
    std::thread::spawn(move || done.send(f()));
    match ended.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("still waiting after 60 s: a writer waits on a reader that will not read")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("it panicked (above)"),
    }
}

/// Waits for `writer`, failing (not hanging) if it does not end.
fn ends(writer: std::thread::JoinHandle<()>) {
    assert!(within(move || writer.join().is_ok()), "the writer panicked");
}

#[test]
fn a_reader_that_goes_away_lets_the_writer_finish() {
    let Spooled {
        arrival,
        data,
        mut range,
        writer,
        ..
    } = spooled(3 * HELD_MAX, || Ok(()));
    let mut some = [0u8; 1000];
    range.read_exact(&mut some).unwrap();
    assert_eq!(some, data[..1000]);
    drop(range);
    ends(writer);
    assert!(arrival.verdict().is_none());
    assert!(arrival.lock().held.is_empty(), "dropped bytes still held");
}

#[test]
fn asking_for_the_verdict_stops_the_writer_waiting_for_the_reader() {
    // The flattener asks why a layer broke while its reader, which
    // stopped reading, is still open.
    let Spooled {
        arrival,
        range,
        writer,
        ..
    } = spooled(3 * HELD_MAX, || {
        Err("blob sha256:cd does not match its digest".into())
    });
    let asked = arrival.clone();
    let failure = within(move || asked.verdict()).expect("the download failed");
    assert!(failure.to_string().contains("does not match"), "{failure}");
    ends(writer);
    drop(range);
}

#[test]
fn a_peek_past_what_is_held_does_not_wait_for_ever() {
    // Small reads fill the held room (counted by buffer) with few
    // bytes; a peek wanting more than those lets the writer go on.
    let (file, arrival, data) = halves(256 * 1024);
    let range = FileRange::new(file.clone(), 0, data.len() as u64).arriving(arrival.clone());
    let writer = {
        let (arrival, data) = (arrival.clone(), data.clone());
        std::thread::spawn(move || {
            let mut buf = arrival.buffer();
            for piece in data.chunks(1024) {
                buf[..piece.len()].copy_from_slice(piece);
                buf = arrival.hand_over(buf, 0, piece.len()).unwrap();
            }
            arrival.finish(Ok(()));
        })
    };
    let head = within(move || {
        let mut head = vec![0u8; 64 * 1024];
        let n = range.peek(&mut head).unwrap();
        (n, head)
    });
    assert_eq!(head.0, 64 * 1024);
    assert!(head.1 == data[..64 * 1024], "peeked bytes differ");
    ends(writer);
    drop(file);
}
