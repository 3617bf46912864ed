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
//! Fetches a guest waits for come before background ones (prefetch and
//! read-ahead threads, [`is_background`]): in a VM's own queue a demand
//! request goes first, a VM's background fetches hold at most half its
//! share, and background fetches never take the last quarter of the
//! host's slots. So a prefetch filling its queue cannot make the guest's
//! own next miss wait for a slot.
//!
//! [`TieredStore`]: cachetiers::TieredStore

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use cachetiers::checked::Verified;
use cachetiers::{ChunkStore, PutOutcome, StoreError};

use crate::lazy::priority::is_background;
use manifest::ChunkId;

#[derive(Debug, Default)]
struct Client {
    holding: usize,
    /// Of `holding`, the background permits.
    holding_background: usize,
    demand: VecDeque<u64>,
    background: VecDeque<u64>,
}

#[derive(Debug, Default)]
struct State {
    holding: usize,
    /// Of `holding`, the background permits.
    holding_background: usize,
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

    /// Most background permits one VM holds.
    fn background_per_vm(&self) -> usize {
        (self.per_vm / 2).max(1)
    }

    /// Most background permits held host-wide.
    fn background_host(&self) -> usize {
        (self.capacity - self.capacity / 4).max(1)
    }

    /// Whether `c` may be granted a slot now, and for what (demand first).
    fn grantable(&self, state: &State, c: &Client) -> Option<bool> {
        if c.holding >= self.per_vm {
            return None;
        }
        if !c.demand.is_empty() {
            return Some(false);
        }
        let room = c.holding_background < self.background_per_vm()
            && state.holding_background < self.background_host();
        (!c.background.is_empty() && room).then_some(true)
    }

    /// Grants free slots to waiting tickets, one client at a time in turn.
    fn dispatch(&self, state: &mut State) {
        let mut granted_any = false;
        while state.holding < self.capacity {
            let after = state.last_served;
            let eligible = |(_, c): &(&u64, &Client)| self.grantable(state, c).is_some();
            let next = state
                .clients
                .range(after + 1..)
                .find(eligible)
                .or_else(|| state.clients.range(..=after).find(eligible))
                .map(|(&id, c)| (id, self.grantable(state, c) == Some(true)));
            let Some((id, background)) = next else { break };
            let client = state.clients.get_mut(&id).expect("found above");
            let queue = if background {
                &mut client.background
            } else {
                &mut client.demand
            };
            let ticket = queue.pop_front().expect("grantable has a waiter");
            client.holding += 1;
            state.holding += 1;
            if background {
                client.holding_background += 1;
                state.holding_background += 1;
            }
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
    /// the permit is dropped. `background`: a prefetch or read-ahead
    /// fetch, which waits behind the VM's demand fetches.
    pub fn acquire(&self, background: bool) -> Permit<'_> {
        let gate = &self.gate;
        let mut state = gate.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        if let Some(c) = state.clients.get_mut(&self.id) {
            if background {
                c.background.push_back(ticket);
            } else {
                c.demand.push_back(ticket);
            }
        }
        gate.dispatch(&mut state);
        while !state.granted.remove(&ticket) {
            state = gate
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Permit {
            client: self,
            background,
        }
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
            state.holding_background -= c.holding_background;
        }
        gate.dispatch(&mut state);
    }
}

/// A held slot.
#[derive(Debug)]
pub struct Permit<'a> {
    client: &'a GateClient,
    background: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let gate = &self.client.gate;
        let mut state = gate.lock();
        if let Some(c) = state.clients.get_mut(&self.client.id) {
            c.holding -= 1;
            if self.background {
                c.holding_background -= 1;
                state.holding_background -= 1;
            }
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
        let _slot = self.client.acquire(is_background());
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
            let waiting: usize = gate
                .lock()
                .clients
                .values()
                .map(|c| c.demand.len() + c.background.len())
                .sum();
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
            let first = a.acquire(false);
            for _ in 0..5 {
                let (a, tx) = (&a, tx.clone());
                s.spawn(move || {
                    let _p = a.acquire(false);
                    tx.send("a").unwrap();
                });
            }
            wait_for_waiters(&gate, 5);
            {
                let (b, tx) = (&b, tx.clone());
                s.spawn(move || {
                    let _p = b.acquire(false);
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
        let p1 = a.acquire(false);
        let p2 = a.acquire(false);
        std::thread::scope(|s| {
            let blocked = s.spawn(|| {
                let _p = a.acquire(false);
                gate.holding()
            });
            wait_for_waiters(&gate, 1);
            // A is at its share, but B still gets both free slots.
            let q1 = b.acquire(false);
            let q2 = b.acquire(false);
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
    fn demand_goes_before_background_and_background_keeps_to_its_share() {
        // 4 slots; a VM's background holds at most 2 of them, and the
        // host's background at most 3.
        let gate = FairGate::new(4, 4);
        let a = gate.client();
        let b1 = a.acquire(true);
        let b2 = a.acquire(true);
        let (tx, rx) = channel::<&'static str>();
        std::thread::scope(|s| {
            // A third background fetch waits although two slots are free...
            {
                let (a, tx) = (&a, tx.clone());
                s.spawn(move || {
                    let _p = a.acquire(true);
                    tx.send("background").unwrap();
                });
            }
            wait_for_waiters(&gate, 1);
            // ... and a demand fetch takes a free slot at once.
            let d1 = a.acquire(false);
            assert_eq!(gate.holding(), 3);
            // With every slot but one held, a demand queued after the
            // background goes first when a slot frees.
            let d2 = a.acquire(false);
            {
                let (a, tx) = (&a, tx.clone());
                s.spawn(move || {
                    let _p = a.acquire(false);
                    tx.send("demand").unwrap();
                });
            }
            wait_for_waiters(&gate, 2);
            drop(d1);
            assert_eq!(rx.recv().unwrap(), "demand");
            drop((b1, b2, d2));
        });
        drop(tx);
        assert_eq!(rx.iter().collect::<Vec<_>>(), ["background"]);
        assert_eq!(gate.holding(), 0);
    }

    #[test]
    fn a_dropped_client_frees_its_place() {
        let gate = FairGate::new(1, 1);
        let a = gate.client();
        drop(a.acquire(false));
        drop(a);
        let b = gate.client();
        drop(b.acquire(false));
        assert_eq!(gate.holding(), 0);
        assert_eq!(gate.lock().clients.len(), 1);
    }
}
