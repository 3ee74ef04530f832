//! Admission: what the server (uploads, realtime passes, async jobs) and `whisperd batch` put
//! in front of the engine alike, as one service ([`Admission`]). A request's key (`cache::cache_key`: audio hash, model,
//! options) is looked up in the result cache (`crate::cache`, one set of defaults there); on a
//! miss, single flight: identical work in flight at once runs once, and every other asker waits
//! for that run's result on the same channel — asynchronously (the server's handlers) or from a
//! blocking thread (batch's transcription threads). Work waits in a bounded [`JobQueue`] whose
//! job threads run it: the server's per-model queues and batch's prepared inputs are both one.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::cache::ResultCache;
use crate::transcript::Transcript;

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

/// A transcription's result as admission hands it around (`E`: the caller's error type).
pub type Outcome<E> = Result<Arc<Transcript>, E>;

/// The result cache and single flight as one service: the admission path of the server and of
/// `whisperd batch`. A key is answered from the cache, or joins the flight of identical work in
/// progress, or leads it; a leader's successful result is cached before its flight ends, so an
/// identical asker finds it one way or the other, never neither.
pub struct Admission<E, X> {
    cache: ResultCache,
    flights: Flights<Outcome<E>, X>,
}

/// Where an asker's result comes from.
pub enum Admit<E, V> {
    /// The result cache had it.
    Hit(Arc<Transcript>),
    /// A flight will send it: this asker's (`leader` set: it must run the work and
    /// [`Admission::complete`] it) or an identical one's.
    Flight(Joined<Outcome<E>, V>),
}

/// How [`Admission::run_blocking`] got its result.
pub enum Answered<V> {
    Hit,
    /// This caller ran the work.
    Led,
    /// An identical asker ran it; `V` is what `view` took from that flight's extra.
    Joined(V),
}

impl<E: Clone, X> Admission<E, X> {
    pub fn new(cache: ResultCache) -> Self {
        Self {
            cache,
            flights: Flights::default(),
        }
    }

    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    /// Look `key` up in the cache (unless `cached` is false: work whose result is not to be
    /// reused), else join or start its flight (see [`Flights::join`]).
    pub fn admit<V>(
        &self,
        key: &str,
        cached: bool,
        new: impl FnOnce() -> X,
        view: impl FnOnce(&X) -> V,
    ) -> Admit<E, V> {
        if let Some(t) = cached.then(|| self.cache.get(key)).flatten() {
            return Admit::Hit(t);
        }
        Admit::Flight(self.flights.join(key, new, view))
    }

    /// Change the extra of `key`'s flight, if it is still in flight.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut X)) {
        self.flights.update(key, f)
    }

    /// End `key`'s flight with `result`: cached first when it succeeded and `cached` is set.
    /// Hands back the flight's sender and extra; the caller sends `result` on it (after
    /// anything else it publishes first).
    pub fn complete(
        &self,
        key: &str,
        result: &Outcome<E>,
        cached: bool,
    ) -> Option<(broadcast::Sender<Outcome<E>>, X)> {
        if let (Ok(t), true) = (result, cached) {
            self.cache.put(key.to_string(), t.clone());
        }
        self.flights.take(key)
    }

    /// The whole path for a thread that runs the work itself (batch's job threads): a cache
    /// hit, or the result of an identical flight (waited for, blocking), or `work()` run here
    /// as the flight's leader — whose flight ends even if `work` panics, so identical askers
    /// get `stopped` instead of waiting forever.
    pub fn run_blocking<V>(
        &self,
        key: &str,
        new: impl FnOnce() -> X,
        view: impl FnOnce(&X) -> V,
        work: impl FnOnce() -> Outcome<E>,
        stopped: impl FnOnce() -> E,
    ) -> (Outcome<E>, Answered<V>) {
        let joined = match self.admit(key, true, new, view) {
            Admit::Hit(t) => return (Ok(t), Answered::Hit),
            Admit::Flight(j) => j,
        };
        if joined.leader.is_none() {
            let mut rx = joined.rx;
            let r = rx.blocking_recv().unwrap_or_else(|_| Err(stopped()));
            return (r, Answered::Joined(joined.view));
        }
        let lead = self.flights.lead(key);
        let r = work();
        if let Ok(t) = &r {
            self.cache.put(key.to_string(), t.clone());
        }
        lead.finish(r.clone());
        (r, Answered::Led)
    }
}

/// A bounded queue of jobs and the threads that run them: each model's queue in the server (its
/// transcription threads) and batch's prepared inputs (its transcription threads). Senders put
/// jobs in (`try_send`: refuse when full, `send`: wait for a place); the job threads take them
/// in order until every sender is gone, then end. A job that panics is contained: its thread
/// logs it and takes the next job, so a queue never loses its threads.
pub struct JobQueue<J> {
    tx: SyncSender<J>,
    rx: Mutex<Receiver<J>>,
}

impl<J: Send> JobQueue<J> {
    /// A queue that holds at most `capacity` jobs waiting for a thread.
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = sync_channel(capacity);
        Self {
            tx,
            rx: Mutex::new(rx),
        }
    }

    /// Start `threads` job threads (named `{name}-{i}`) running `run` on each job. Hands back
    /// the queue's sender: when it and its clones are gone, the threads finish what is queued
    /// and end.
    pub fn start(
        self,
        name: &str,
        threads: usize,
        run: impl Fn(J) + Send + Sync + 'static,
    ) -> std::io::Result<SyncSender<J>>
    where
        J: 'static,
    {
        self.start_with(name, threads, run, |b, f| b.spawn(f).map(drop))
    }

    /// [`JobQueue::start`] with threads of `scope`, for jobs and a `run` that borrow from it.
    pub fn start_scoped<'scope, 'env>(
        self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        name: &str,
        threads: usize,
        run: impl Fn(J) + Send + Sync + 'scope,
    ) -> std::io::Result<SyncSender<J>>
    where
        J: 'scope,
    {
        self.start_with(name, threads, run, |b, f| {
            b.spawn_scoped(scope, f).map(drop)
        })
    }

    fn start_with<'a>(
        self,
        name: &str,
        threads: usize,
        run: impl Fn(J) + Send + Sync + 'a,
        mut spawn: impl FnMut(
            std::thread::Builder,
            Box<dyn FnOnce() + Send + 'a>,
        ) -> std::io::Result<()>,
    ) -> std::io::Result<SyncSender<J>>
    where
        J: 'a,
    {
        let (tx, rx) = (self.tx, Arc::new(self.rx));
        let run = Arc::new(run);
        for i in 0..threads.max(1) {
            let (rx, run, thread) = (rx.clone(), run.clone(), format!("{name}-{i}"));
            let builder = std::thread::Builder::new().name(thread.clone());
            spawn(builder, Box::new(move || serve(&rx, &thread, &*run)))?;
        }
        Ok(tx)
    }
}

/// One job thread: the next job, until every sender is gone.
fn serve<J>(rx: &Mutex<Receiver<J>>, thread: &str, run: &(impl Fn(J) + ?Sized)) {
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(job) = next else { return };
        if std::panic::catch_unwind(AssertUnwindSafe(|| run(job))).is_err() {
            tracing::error!(
                thread,
                "a job panicked; its thread goes on with the next job (a bug: please report it)"
            );
        }
    }
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

    use crate::cache::tests::t as transcript;

    /// The service path: a leader runs the work and caches it, an identical asker meanwhile
    /// waits for it, a later one hits the cache; an uncached admission never reads the cache.
    #[test]
    fn admission_caches_a_leaders_result_and_answers_identical_askers() {
        let a: Arc<Admission<String, &str>> =
            Arc::new(Admission::new(ResultCache::new(8, 1 << 20)));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let leader = {
            let a = a.clone();
            std::thread::spawn(move || {
                a.run_blocking(
                    "k",
                    || "first",
                    |x| *x,
                    || {
                        started_tx.send(()).expect("test alive");
                        go_rx.recv().expect("test alive");
                        Ok(transcript("once"))
                    },
                    || "stopped".into(),
                )
            })
        };
        started_rx.recv().expect("leader started");
        let waiter = {
            let a = a.clone();
            std::thread::spawn(move || {
                a.run_blocking(
                    "k",
                    || "second",
                    |x| *x,
                    || panic!("ran twice"),
                    String::new,
                )
            })
        };
        // The waiter joins the leader's flight before the work ends.
        while a.flights.lock().get("k").map(|f| f.tx.receiver_count()) != Some(2) {
            std::thread::yield_now();
        }
        go_tx.send(()).expect("leader waits");
        let (r, how) = leader.join().expect("no panic");
        assert_eq!(r.expect("ok").text, "once");
        assert!(matches!(how, Answered::Led));
        let (r, how) = waiter.join().expect("no panic");
        assert_eq!(r.expect("ok").text, "once");
        assert!(matches!(how, Answered::Joined("first")));
        let (r, how) = a.run_blocking("k", || "third", |x| *x, || panic!("ran"), String::new);
        assert_eq!(r.expect("cached").text, "once");
        assert!(matches!(how, Answered::Hit));
        assert!(matches!(
            a.admit("k", false, || "x", |_| ()),
            Admit::Flight(_)
        ));
        // complete() caches only successes it is asked to.
        let done = a.complete("k", &Err("no".into()), true);
        assert!(done.is_some() && a.cache().get("k").is_some());
        assert!(a.complete("u", &Ok(transcript("u")), false).is_none());
        assert!(a.cache().get("u").is_none());
    }

    /// A leader whose work panics ends its flight: the identical asker gets `stopped`.
    #[test]
    fn a_panicking_leader_releases_its_waiters() {
        let a: Arc<Admission<String, ()>> = Arc::new(Admission::new(ResultCache::new(8, 1 << 20)));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let a2 = a.clone();
        let leader = std::thread::spawn(move || {
            a2.run_blocking(
                "k",
                || (),
                |_| (),
                || {
                    started_tx.send(()).expect("test alive");
                    go_rx.recv().expect("test alive");
                    panic!("engine bug")
                },
                String::new,
            )
        });
        started_rx.recv().expect("leader started");
        let mut rx = match a.admit("k", true, || (), |_| ()) {
            Admit::Flight(j) if j.leader.is_none() => j.rx,
            _ => panic!("the leader's flight is in progress"),
        };
        go_tx.send(()).expect("leader waits");
        assert!(leader.join().is_err());
        assert!(rx.blocking_recv().is_err());
        assert!(a.flights.is_empty() && a.cache().get("k").is_none());
    }

    #[test]
    fn a_job_queue_runs_every_job_survives_a_panic_and_ends_with_its_senders() {
        let done = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            let tx = JobQueue::new(4)
                .start_scoped(scope, "test", 2, |n: u32| {
                    if n == 3 {
                        panic!("a bug in one job");
                    }
                    done.lock().expect("not poisoned").push(n);
                })
                .expect("threads start");
            for n in 0..10 {
                tx.send(n).expect("job threads alive");
            }
            // The scope ends only once both threads have ended: when the sender is gone.
        });
        let mut done = done.into_inner().expect("not poisoned");
        done.sort();
        assert_eq!(done, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_full_job_queue_refuses_the_next_job() {
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (took_tx, took_rx) = std::sync::mpsc::channel::<u32>();
        let gate = Mutex::new(gate_rx);
        std::thread::scope(|scope| {
            let tx = JobQueue::new(1)
                .start_scoped(scope, "test", 1, |n: u32| {
                    took_tx.send(n).expect("test alive");
                    gate.lock()
                        .expect("not poisoned")
                        .recv()
                        .expect("test alive");
                })
                .expect("threads start");
            tx.try_send(1).expect("the thread is idle");
            assert_eq!(took_rx.recv().expect("thread alive"), 1);
            tx.try_send(2).expect("one place in the queue");
            assert!(matches!(
                tx.try_send(3),
                Err(std::sync::mpsc::TrySendError::Full(3))
            ));
            gate_tx.send(()).expect("thread waits");
            assert_eq!(took_rx.recv().expect("thread alive"), 2);
            gate_tx.send(()).expect("thread waits");
        });
    }
}
