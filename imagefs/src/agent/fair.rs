//! Fair sharing of the host's fetches between VMs.
//!
//! Every VM's chunk store is the host's one [`TieredStore`] seen through a
//! [`FairStore`]: a get first takes a slot from the host-wide [`FairGate`].
//! The gate has `capacity` slots in all and lets one VM hold at most
//! `per_vm` of them; when slots free up they go to the waiting VMs in
//! turn (round robin), one request each, so a VM with a thousand cold
//! misses queued delays another VM's next read by at most one request
//! per VM, never by its whole queue.
//!
//! [`TieredStore`]: cachetiers::TieredStore

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use cachetiers::checked::Verified;
use cachetiers::{ChunkStore, PutOutcome, StoreError};
use manifest::ChunkId;

#[derive(Debug, Default)]
struct Client {
    holding: usize,
    waiting: VecDeque<u64>,
}

#[derive(Debug, Default)]
struct State {
    holding: usize,
    clients: BTreeMap<u64, Client>,
    /// Tickets granted a slot whose waiter has not woken yet.
    granted: BTreeSet<u64>,
    next_ticket: u64,
    next_client: u64,
    /// The client granted last: the turn passes to the next one after it.
    last_served: u64,
}

/// The host-wide slots (see the module docs).
#[derive(Debug)]
pub struct FairGate {
    capacity: usize,
    per_vm: usize,
    state: Mutex<State>,
    wake: Condvar,
}

impl FairGate {
    /// A gate of `capacity` slots of which one VM holds at most `per_vm`
    /// (both at least 1).
    pub fn new(capacity: usize, per_vm: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            per_vm: per_vm.max(1),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new VM's place at the gate.
    pub fn client(self: &Arc<Self>) -> GateClient {
        let mut state = self.lock();
        let id = state.next_client;
        state.next_client += 1;
        state.clients.insert(id, Client::default());
        GateClient {
            gate: Arc::clone(self),
            id,
        }
    }

    /// Slots held now, host-wide.
    pub fn holding(&self) -> usize {
        self.lock().holding
    }

    /// Grants free slots to waiting tickets, one client at a time in turn.
    fn dispatch(&self, state: &mut State) {
        let mut granted_any = false;
        while state.holding < self.capacity {
            let after = state.last_served;
            let eligible =
                |(_, c): &(&u64, &Client)| !c.waiting.is_empty() && c.holding < self.per_vm;
            let next = state
                .clients
                .range(after + 1..)
                .find(eligible)
                .or_else(|| state.clients.range(..=after).find(eligible))
                .map(|(&id, _)| id);
            let Some(id) = next else { break };
            let client = state.clients.get_mut(&id).expect("found above");
            let ticket = client.waiting.pop_front().expect("eligible has a waiter");
            client.holding += 1;
            state.holding += 1;
            state.granted.insert(ticket);
            state.last_served = id;
            granted_any = true;
        }
        if granted_any {
            self.wake.notify_all();
        }
    }
}

/// One VM's place at a [`FairGate`]; leaving (drop) gives up its queue.
#[derive(Debug)]
pub struct GateClient {
    gate: Arc<FairGate>,
    id: u64,
}

impl GateClient {
    /// Waits for this VM's turn and a free slot; the slot is held until
    /// the permit is dropped.
    pub fn acquire(&self) -> Permit<'_> {
        let gate = &self.gate;
        let mut state = gate.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        if let Some(c) = state.clients.get_mut(&self.id) {
            c.waiting.push_back(ticket);
        }
        gate.dispatch(&mut state);
        while !state.granted.remove(&ticket) {
            state = gate
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Permit { client: self }
    }
}

impl Drop for GateClient {
    fn drop(&mut self) {
        let gate = &self.gate;
        let mut state = gate.lock();
        // A client is dropped once nothing of its own waits or holds (its
        // permits borrow it), so only the entry is left to remove.
        if let Some(c) = state.clients.remove(&self.id) {
            state.holding -= c.holding;
        }
        gate.dispatch(&mut state);
    }
}

/// A held slot.
#[derive(Debug)]
pub struct Permit<'a> {
    client: &'a GateClient,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let gate = &self.client.gate;
        let mut state = gate.lock();
        if let Some(c) = state.clients.get_mut(&self.client.id) {
            c.holding -= 1;
            state.holding -= 1;
        }
        gate.dispatch(&mut state);
    }
}

/// One VM's view of the host's chunk store: gets wait for a slot of the
/// gate (puts and the rest pass straight through).
pub struct FairStore {
    inner: Arc<dyn ChunkStore>,
    client: GateClient,
}

impl FairStore {
    /// `inner` behind a new place at `gate`.
    pub fn new(inner: Arc<dyn ChunkStore>, gate: &Arc<FairGate>) -> Self {
        Self {
            inner,
            client: gate.client(),
        }
    }
}

impl ChunkStore for FairStore {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let _slot = self.client.acquire();
        self.inner.get(id)
    }

    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        self.inner.put(id, object)
    }

    fn put_verified(&self, verified: Verified<'_>) -> Result<PutOutcome, StoreError> {
        self.inner.put_verified(verified)
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.inner.contains(id)
    }

    fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.inner.remove(id)
    }

    fn checks_gets(&self) -> bool {
        self.inner.checks_gets()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    /// Waits until `n` tickets wait at the gate (no timing: polls state).
    fn wait_for_waiters(gate: &FairGate, n: usize) {
        loop {
            let waiting: usize = gate.lock().clients.values().map(|c| c.waiting.len()).sum();
            if waiting >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_late_vm_is_served_before_an_early_vm_drains_its_queue() {
        let gate = FairGate::new(1, 1);
        let a = gate.client();
        let b = gate.client();
        let (tx, rx) = channel::<&'static str>();
        std::thread::scope(|s| {
            // A holds the only slot while it queues five more requests.
            let first = a.acquire();
            for _ in 0..5 {
                let (a, tx) = (&a, tx.clone());
                s.spawn(move || {
                    let _p = a.acquire();
                    tx.send("a").unwrap();
                });
            }
            wait_for_waiters(&gate, 5);
            {
                let (b, tx) = (&b, tx.clone());
                s.spawn(move || {
                    let _p = b.acquire();
                    tx.send("b").unwrap();
                });
            }
            wait_for_waiters(&gate, 6);
            drop(first);
        });
        drop(tx);
        let order: Vec<_> = rx.iter().collect();
        assert_eq!(order.len(), 6);
        // B's one request goes right after A's first, not after all five.
        assert_eq!(order[0], "b", "grant order {order:?}");
    }

    #[test]
    fn one_vm_holds_at_most_its_share() {
        let gate = FairGate::new(4, 2);
        let a = gate.client();
        let b = gate.client();
        let p1 = a.acquire();
        let p2 = a.acquire();
        std::thread::scope(|s| {
            let blocked = s.spawn(|| {
                let _p = a.acquire();
                gate.holding()
            });
            wait_for_waiters(&gate, 1);
            // A is at its share, but B still gets both free slots.
            let q1 = b.acquire();
            let q2 = b.acquire();
            assert_eq!(gate.holding(), 4);
            assert!(!blocked.is_finished());
            drop((q1, q2));
            // A is still at its share: freed slots do not go to it.
            assert!(!blocked.is_finished());
            drop(p1);
            let held = blocked.join().unwrap();
            assert!(held <= 3, "A held {held} of 4");
        });
        drop(p2);
        assert_eq!(gate.holding(), 0);
    }

    #[test]
    fn a_dropped_client_frees_its_place() {
        let gate = FairGate::new(1, 1);
        let a = gate.client();
        drop(a.acquire());
        drop(a);
        let b = gate.client();
        drop(b.acquire());
        assert_eq!(gate.holding(), 0);
        assert_eq!(gate.lock().clients.len(), 1);
    }
}
