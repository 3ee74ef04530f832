//! Admission: what the server (uploads, realtime passes, async jobs) and `whisperd batch` put
//! in front of the engine alike. A request's key (`cache::cache_key`: audio hash, model,
//! options) is looked up in the result cache (`crate::cache`, one set of defaults there); on a
//! miss, single flight: identical work in flight at once runs once, and every other asker waits
//! for that run's result on the same channel — asynchronously (the server's handlers) or from a
//! blocking thread (batch's transcription threads). Job threads take their work from one
//! shared queue with [`next_job`].

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::broadcast;

/// Work in flight, by key: the channel its result goes out on, and what the caller keeps with
/// it (`X`: the server's progress and cross-replica lock, batch's first input with the content).
pub struct Flights<T, X> {
    map: Mutex<HashMap<String, Flight<T, X>>>,
}

struct Flight<T, X> {
    tx: broadcast::Sender<T>,
    extra: X,
}

/// A caller, after [`Flights::join`].
pub struct Joined<T, V> {
    /// Receives the flight's result (once; then the channel closes).
    pub rx: broadcast::Receiver<T>,
    /// What the `view` passed to `join` took from the flight's extra.
    pub view: V,
    /// For the caller that started the flight: it runs the work, and [`Flights::take`] hands
    /// back this sender for the result. Its `receiver_count` says whether anyone still waits.
    pub leader: Option<broadcast::Sender<T>>,
}

impl<T: Clone, X> Default for Flights<T, X> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone, X> Flights<T, X> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Flight<T, X>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Join the flight of `key`, or start it (with `new()` as its extra) when there is none.
    pub fn join<V>(
        &self,
        key: &str,
        new: impl FnOnce() -> X,
        view: impl FnOnce(&X) -> V,
    ) -> Joined<T, V> {
        let mut map = self.lock();
        if let Some(f) = map.get(key) {
            return Joined {
                rx: f.tx.subscribe(),
                view: view(&f.extra),
                leader: None,
            };
        }
        let (tx, rx) = broadcast::channel(1);
        let extra = new();
        let view = view(&extra);
        map.insert(
            key.to_string(),
            Flight {
                tx: tx.clone(),
                extra,
            },
        );
        Joined {
            rx,
            view,
            leader: Some(tx),
        }
    }

    /// Change the extra of `key`'s flight, if it is still in flight.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut X)) {
        if let Some(flight) = self.lock().get_mut(key) {
            f(&mut flight.extra);
        }
    }

    /// End `key`'s flight: later askers start a new one (so store the result where they look
    /// first, the result cache, before this). Hands back the sender the result goes out on, and
    /// the extra.
    pub fn take(&self, key: &str) -> Option<(broadcast::Sender<T>, X)> {
        self.lock().remove(key).map(|f| (f.tx, f.extra))
    }

    /// For the leader of `key`: ends the flight when dropped unless [`Lead::finish`] did, so
    /// that if the leader panics its waiters' channel closes instead of waiting forever.
    pub fn lead<'a>(&'a self, key: &'a str) -> Lead<'a, T, X> {
        Lead {
            flights: self,
            key,
            done: false,
        }
    }

    /// Flights now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// See [`Flights::lead`].
pub struct Lead<'a, T: Clone, X> {
    flights: &'a Flights<T, X>,
    key: &'a str,
    done: bool,
}

impl<T: Clone, X> Lead<'_, T, X> {
    /// End the flight and send `result` to its waiters (after storing it in the result cache).
    pub fn finish(mut self, result: T) {
        self.done = true;
        if let Some((tx, _)) = self.flights.take(self.key) {
            let _ = tx.send(result);
        }
    }
}

impl<T: Clone, X> Drop for Lead<'_, T, X> {
    fn drop(&mut self) {
        if !self.done {
            self.flights.take(self.key);
        }
    }
}

/// The next job of a queue that several job threads take from (the server's per-model queues,
/// batch's prepared inputs); `None` once every sender is gone.
pub fn next_job<J>(queue: &Mutex<std::sync::mpsc::Receiver<J>>) -> Option<J> {
    queue.lock().unwrap_or_else(|p| p.into_inner()).recv().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn identical_work_runs_once_and_every_waiter_gets_its_result() {
        let flights: Arc<Flights<u32, &str>> = Arc::new(Flights::default());
        let first = flights.join("k", || "first", |x| *x);
        assert!(first.leader.is_some());
        assert_eq!(first.view, "first");
        // A blocking thread and another key meanwhile.
        let second = flights.join("k", || "second", |x| *x);
        assert!(second.leader.is_none());
        assert_eq!(second.view, "first", "a joiner sees the leader's extra");
        let other = flights.join("other", || "o", |x| *x);
        assert!(other.leader.is_some());
        let mut rx = second.rx;
        let waiter = std::thread::spawn(move || rx.blocking_recv());
        flights.update("k", |x| *x = "updated");
        let (tx, extra) = flights.take("k").expect("in flight");
        assert_eq!(extra, "updated");
        assert_eq!(tx.receiver_count(), 2);
        tx.send(7).expect("waiters");
        assert_eq!(waiter.join().expect("no panic"), Ok(7));
        let mut rx = first.rx;
        assert_eq!(rx.try_recv(), Ok(7));
        // Taken: the next asker leads a new flight.
        assert!(flights.join("k", || "new", |_| ()).leader.is_some());
        assert_eq!(flights.len(), 2);
    }

    #[test]
    fn a_leader_that_goes_without_a_result_closes_its_waiters_channel() {
        let flights: Flights<u32, ()> = Flights::default();
        let lead = flights.join("k", || (), |_| ());
        let mut wait = flights.join("k", || (), |_| ()).rx;
        drop(lead);
        drop(flights.take("k"));
        assert!(wait.blocking_recv().is_err());
    }

    #[test]
    fn a_lead_dropped_unfinished_closes_its_waiters_channel_and_finish_answers_them() {
        let flights: Flights<u32, ()> = Flights::default();
        let first = flights.join("k", || (), |_| ());
        let mut wait = flights.join("k", || (), |_| ()).rx;
        let lead = flights.lead("k");
        drop(first.leader); // the leader's own sender goes with it (as in a panic)
        drop(lead);
        assert!(wait.blocking_recv().is_err());
        assert!(flights.is_empty());
        let first = flights.join("k", || (), |_| ());
        let mut wait = flights.join("k", || (), |_| ()).rx;
        flights.lead("k").finish(3);
        assert_eq!(wait.blocking_recv(), Ok(3));
        drop(first);
    }
}
