//! The throttle's admit path: one bucket on one worker, and the same bucket hammered from
//! several threads at once, each compared with the naive design (a token bucket behind a
//! mutex, touched by every request).
//!
//! `cargo bench --bench limits`.

use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use weir::limit::{Leases, SharedBucket};

fn now_nanos() -> u64 {
    weir::clock::now().nanos
}

/// The classic token bucket, shared through a mutex.
struct LockedBucket {
    state: Mutex<(f64, u64)>,
    rate: f64,
    burst: f64,
}

impl LockedBucket {
    fn new(rate: f64, burst: f64) -> Self {
        LockedBucket {
            state: Mutex::new((burst, 0)),
            rate,
            burst,
        }
    }

    fn admit(&self, now: u64) -> bool {
        let mut s = self.state.lock().unwrap();
        let elapsed = now.saturating_sub(s.1) as f64 / 1e9;
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A limit far above the load, so every request is admitted: the cost of saying yes.
const RATE: f64 = 1e9;

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit_one_worker");
    let buckets = [Arc::new(SharedBucket::new("b", RATE, 1_000_000))];
    let leases = Leases::new(1, 1);
    g.bench_function("weir_leases", |b| {
        b.iter(|| leases.admit(&buckets, black_box(&[0]), now_nanos()).is_ok())
    });
    let locked = LockedBucket::new(RATE, 1e6);
    g.bench_function("mutex_bucket", |b| b.iter(|| locked.admit(now_nanos())));
    g.finish();
}

/// `threads` threads admit `iters` requests each against one bucket; time per request.
fn contended(threads: usize, iters: u64, admit: Arc<dyn Fn() + Send + Sync>) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (barrier, admit) = (barrier.clone(), admit.clone());
            thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    admit();
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed() / threads as u32
}

fn shared(c: &mut Criterion) {
    let threads = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let mut g = c.benchmark_group(format!("admit_{threads}_threads"));
    let buckets = Arc::new([Arc::new(SharedBucket::new("b", RATE, 1_000_000))]);
    g.bench_function("weir_leases", |b| {
        b.iter_custom(|iters| {
            let buckets = buckets.clone();
            contended(
                threads,
                iters,
                Arc::new(move || {
                    // Each thread is a worker with its own leases.
                    thread_local! {
                        static LEASES: Leases = Leases::new(1, 8);
                    }
                    LEASES.with(|l| black_box(l.admit(&buckets[..], &[0], now_nanos()).is_ok()));
                }),
            )
        })
    });
    let locked = Arc::new(LockedBucket::new(RATE, 1e6));
    g.bench_function("mutex_bucket", |b| {
        b.iter_custom(|iters| {
            let locked = locked.clone();
            contended(
                threads,
                iters,
                Arc::new(move || {
                    black_box(locked.admit(now_nanos()));
                }),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, single, shared);
criterion_main!(benches);
