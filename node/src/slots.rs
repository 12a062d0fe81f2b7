//! The node's query slots (`--query-parallelism`): at most that many shard searches run at
//! once, and when one ends, the next to run is a search of the query that has used the least
//! search time so far ("least attained service"), less `--query-age-weight` times its age, the
//! earliest waiting among equals.
//!
//! A query fans out to every shard it needs at once, so under a first-come order a cheap
//! question (a service's errors of the last hour: under a millisecond alone) waits behind every
//! shard search of the expensive ones already queued (a day's full-text search or aggregation:
//! tens of milliseconds each). Ordering by time used lets new and cheap questions through; no
//! cost estimate is needed, and the slots never idle while a search waits. The age term bounds
//! how long a long query can be passed over: with weight 0.25, a query that has used 50 ms of
//! search goes ahead of new ones once it is 200 ms old (without it, a day's full-text search
//! under 8 clients of cheap questions waited up to 6.3 s, BENCHMARKS.md). With `n` queries
//! sharing `s` slots, a weight near `s / n` is their fair share of slot time (0.25: two cores,
//! eight clients), so a query behind its share goes first; a large weight approaches "oldest
//! query first".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

/// The shard search slots shared by all queries.
pub struct QuerySlots {
    state: Mutex<State>,
    /// µs of search time a query's age of 1 µs makes up for.
    age_weight: f64,
}

struct State {
    free: usize,
    waiting: Vec<Waiter>,
    next_seq: u64,
}

struct Waiter {
    seq: u64,
    used: Arc<AtomicU64>,
    began: Instant,
    wake: oneshot::Sender<()>,
}

/// One query's search time used so far, in µs, shared by its shard searches, and when the
/// query began.
#[derive(Clone)]
pub struct QueryClock(Arc<AtomicU64>, Instant);

impl QueryClock {
    /// The clock of a query that begins now.
    pub fn start() -> QueryClock {
        QueryClock(Arc::default(), Instant::now())
    }

    /// The clock of a query another node coordinates, which has used `used_us` of search time
    /// and began `age` ago: this node's slots rank its searches as if it had begun here.
    pub fn resume(used_us: u64, age: std::time::Duration) -> QueryClock {
        let began = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        QueryClock(Arc::new(AtomicU64::new(used_us)), began)
    }

    /// Search time used so far, in µs.
    pub fn used_us(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// How long ago the query began.
    pub fn age(&self) -> std::time::Duration {
        self.1.elapsed()
    }
}

/// A slot held by one shard search; dropping it adds the time it was held to its query's clock
/// and hands the slot on.
pub struct Slot {
    slots: Arc<QuerySlots>,
    clock: QueryClock,
    since: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let held = self.since.elapsed().as_micros() as u64;
        self.clock.0.fetch_add(held, Ordering::Relaxed);
        self.slots.release();
    }
}

/// A search waiting for a slot. Dropped before it gets one (its query's deadline passed), it
/// leaves the line; dropped after a slot was handed to it but before it took it, it hands the
/// slot on.
struct Waiting {
    slots: Arc<QuerySlots>,
    wake: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut wake) = self.wake.take() {
            wake.close();
            if wake.try_recv().is_ok() {
                self.slots.release();
            }
        }
    }
}

impl QuerySlots {
    /// `slots` searches at once (at least one); a query's age counts `age_weight` times
    /// against the search time it used.
    pub fn new(slots: usize, age_weight: f64) -> Arc<QuerySlots> {
        Arc::new(QuerySlots {
            state: Mutex::new(State {
                free: slots.max(1),
                waiting: Vec::new(),
                next_seq: 0,
            }),
            age_weight,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoned only by a panic inside these short sections, which leave the state whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot for a search of the query timed by `clock`.
    pub async fn acquire(self: &Arc<Self>, clock: &QueryClock) -> Slot {
        let rx = {
            let mut state = self.lock();
            if state.free > 0 && state.waiting.is_empty() {
                state.free -= 1;
                return self.slot(clock);
            }
            let (tx, rx) = oneshot::channel();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.waiting.push(Waiter {
                seq,
                used: clock.0.clone(),
                began: clock.1,
                wake: tx,
            });
            rx
        };
        let mut waiting = Waiting {
            slots: self.clone(),
            wake: Some(rx),
        };
        let wake = waiting.wake.as_mut().expect("set above");
        // `release` consumes the sender by sending it the slot; it is dropped unsent only if
        // this receiver was closed (it is not, while awaited) or the slots themselves are gone
        // (they are not: `self` is alive). So a receive error cannot happen here.
        let handed = wake.await.is_ok();
        waiting.wake = None;
        debug_assert!(handed, "a waiting search lost its sender");
        self.slot(clock)
    }

    fn slot(self: &Arc<Self>, clock: &QueryClock) -> Slot {
        Slot {
            slots: self.clone(),
            clock: clock.clone(),
            since: Instant::now(),
        }
    }

    /// A slot came free: it goes to the waiting search whose query used the least time less
    /// its weighted age (the earliest among equals), or back to the free ones.
    fn release(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        loop {
            let next = state
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| {
                    let used = w.used.load(Ordering::Relaxed) as f64;
                    let age = now.saturating_duration_since(w.began).as_micros() as f64;
                    ((used - self.age_weight * age) as i64, w.seq)
                })
                .map(|(i, _)| i);
            let Some(i) = next else {
                state.free += 1;
                return;
            };
            let waiter = state.waiting.swap_remove(i);
            if waiter.wake.send(()).is_ok() {
                return;
            }
            // Its query stopped waiting: the next one.
        }
    }

    /// Slots free now.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.lock().free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// The order in which searches of `clocks`' queries, queued in that order behind a held
    /// slot, get it (each gives it back at once).
    async fn order_of(slots: &Arc<QuerySlots>, clocks: &[&QueryClock]) -> Vec<usize> {
        let held = slots.acquire(clocks[0]).await;
        let mut queued: Vec<Option<_>> = clocks
            .iter()
            .map(|c| Some(Box::pin(slots.acquire(c))))
            .collect();
        for q in queued.iter_mut().flatten() {
            assert!(q.as_mut().now_or_never().is_none(), "no slot is free");
        }
        drop(held);
        let mut order = Vec::new();
        while order.len() < clocks.len() {
            let (i, slot) = queued
                .iter_mut()
                .enumerate()
                .find_map(|(i, q)| Some((i, q.as_mut()?.as_mut().now_or_never()?)))
                .expect("the freed slot went to one of them");
            queued[i] = None;
            order.push(i);
            drop(slot);
        }
        order
    }

    #[tokio::test]
    async fn the_query_that_used_least_goes_first_then_the_earliest() {
        let slots = QuerySlots::new(1, 0.1);
        let (busy, fresh, also_fresh) = (
            QueryClock::start(),
            QueryClock::start(),
            QueryClock::start(),
        );
        // 5 s used: its age would have to reach 50 s to count as much.
        busy.0.store(5_000_000, Ordering::Relaxed);
        // Queued: busy, fresh, busy, also_fresh. Fresh ones first, in their order; then busy.
        let order = order_of(&slots, &[&busy, &fresh, &busy, &also_fresh]).await;
        assert_eq!(order, vec![1, 3, 0, 2]);
        assert_eq!(slots.free(), 1, "every slot came back");
    }

    #[tokio::test]
    async fn an_old_query_goes_ahead_of_new_ones_however_much_it_used() {
        let slots = QuerySlots::new(1, 0.1);
        let now = Instant::now();
        let ago = |secs| {
            now.checked_sub(std::time::Duration::from_secs(secs))
                .unwrap()
        };
        // 0.6 s used, 10 s old: 0.6 − 0.1 × 10 = −0.4 s, ahead of a new query (0).
        let old = QueryClock(Arc::new(AtomicU64::new(600_000)), ago(10));
        // 0.5 s used, 1 s old: 0.4 s, behind it.
        let young = QueryClock(Arc::new(AtomicU64::new(500_000)), ago(1));
        let new = QueryClock::start();
        let order = order_of(&slots, &[&young, &new, &old]).await;
        assert_eq!(order, vec![2, 1, 0]);
        // With no weight, only the time used counts (the old query used the most).
        let slots = QuerySlots::new(1, 0.0);
        let order = order_of(&slots, &[&young, &new, &old]).await;
        assert_eq!(order, vec![1, 0, 2]);
    }

    #[tokio::test]
    async fn a_held_slot_adds_its_time_to_its_query() {
        let slots = QuerySlots::new(2, 0.1);
        let clock = QueryClock::start();
        let a = slots.acquire(&clock).await;
        let b = slots.acquire(&clock).await;
        assert_eq!(slots.free(), 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        drop((a, b));
        assert!(clock.used_us() >= 4_000, "{}", clock.used_us());
        assert_eq!(slots.free(), 2);
    }

    #[tokio::test]
    async fn a_search_that_stops_waiting_loses_no_slot() {
        let slots = QuerySlots::new(1, 0.1);
        let clock = QueryClock::start();
        let held = slots.acquire(&clock).await;
        // Gives up before the slot is freed.
        let mut gave_up = Box::pin(slots.acquire(&clock));
        assert!(gave_up.as_mut().now_or_never().is_none());
        drop(gave_up);
        // Handed the slot, then dropped before taking it.
        let mut handed = Box::pin(slots.acquire(&clock));
        assert!(handed.as_mut().now_or_never().is_none());
        drop(held);
        drop(handed);
        assert_eq!(slots.free(), 1, "the slot came back");
        let again = slots.acquire(&clock).now_or_never();
        assert!(again.is_some(), "and is free to take");
    }
}
