//! The response cache's hot paths: building a request's key, finding its entry in a full
//! shard, storing into a full shard (with eviction). Before them, the hit ratio of the
//! shard's S3-FIFO eviction against LRU on Zipf traces, printed as a table.
//!
//! `cargo bench --bench cache`.

use std::hint::black_box;
use std::rc::Rc;

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use weir::cache::eviction::reference::{hit_ratios, zipf_trace};
use weir::cache::policy::Freshness;
use weir::cache::{Key, Shard, Stored};
use weir::http::RequestHead;

fn config() -> weir::config::Config {
    weir::config::parse(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.u]\ntargets = [\"127.0.0.1:1\"]\n\
         [[route]]\npath = \"/{*rest}\"\nupstream = \"u\"\ncache = { key_headers = [\"accept\"] }\n",
        "bench",
    )
    .unwrap()
}

/// A typical API GET: 8 headers, a query.
fn request(id: usize) -> (Vec<u8>, RequestHead) {
    let text = format!(
        "GET /v1/items/{id}?fields=name,price&lang=en HTTP/1.1\r\nHost: api.example.com\r\n\
         User-Agent: bench/1.0\r\nAccept: application/json\r\nAccept-Encoding: gzip\r\n\
         X-Request-Id: 0123456789abcdef\r\nAuthorization-Hint: none\r\nConnection: keep-alive\r\n\
         Cookie: a=b\r\n\r\n"
    );
    let mut head = RequestHead::default();
    assert!(weir::http::parse_request(text.as_bytes(), &config().http, &mut head).unwrap());
    (text.into_bytes(), head)
}

fn stored(key: &Key, body: usize) -> Rc<Stored> {
    Rc::new(Stored {
        variant: key.variant().into(),
        vary: Box::default(),
        route: 0,
        head: Bytes::from_static(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: Sun, 22 Nov 2026 10:00:00 GMT\r\n",
        ),
        not_modified: Bytes::from_static(b"HTTP/1.1 304 Not Modified\r\n"),
        status: 200,
        body: Bytes::from(vec![b'x'; body]),
        etag: None,
        last_modified: None,
        stored_ms: 0,
        freshness: Freshness::lasting(3600),
    })
}

fn hot_paths(c: &mut Criterion) {
    let cfg = config();
    let rc = cfg.routes[0].cache.as_ref().unwrap();
    let (buf, head) = request(4242);
    let mut key = Key::default();

    c.bench_function("cache_key_build", |b| {
        b.iter(|| {
            key.build(rc, black_box(&buf), &head, b"GET");
            key.full_hash
        })
    });

    // A shard holding 10,000 1 KiB entries.
    let mut shard = Shard::new(64 << 20);
    for id in 0..10_000 {
        let (b, h) = request(id);
        let mut k = Key::default();
        k.build(rc, &b, &h, b"GET");
        shard.insert(&k, stored(&k, 1024));
    }
    key.build(rc, &buf, &head, b"GET");
    c.bench_function("cache_lookup_hit_10k_entries", |b| {
        b.iter(|| shard.lookup(black_box(&key), &buf, &head.headers).is_some())
    });
    c.bench_function("cache_key_build_and_lookup", |b| {
        b.iter(|| {
            key.build(rc, black_box(&buf), &head, b"GET");
            shard.lookup(&key, &buf, &head.headers).is_some()
        })
    });

    // Inserting into a full 1 MiB shard evicts on every insert.
    let mut full = Shard::new(1 << 20);
    let keys: Vec<Key> = (0..4096)
        .map(|id| {
            let (b, h) = request(id);
            let mut k = Key::default();
            k.build(rc, &b, &h, b"GET");
            k
        })
        .collect();
    let entries: Vec<Rc<Stored>> = keys.iter().map(|k| stored(k, 1024)).collect();
    let mut i = 0;
    c.bench_function("cache_insert_with_eviction", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            full.insert(&keys[i], entries[i].clone());
        })
    });
}

/// Hit ratios of S3-FIFO and LRU with room for 0.1 %, 1 % and 10 % of the keys.
fn print_hit_ratios() {
    println!("hit ratio on Zipf traces (100,000 keys, 1,000,000 requests): S3-FIFO vs LRU");
    println!("| Zipf s | cache size | S3-FIFO | LRU | S3-FIFO/LRU |");
    println!("|---:|---:|---:|---:|---:|");
    for s in [0.7, 0.9, 1.1] {
        let trace = zipf_trace(100_000, 1_000_000, s, 42);
        for capacity in [100, 1_000, 10_000] {
            let (s3, lru) = hit_ratios(&trace, capacity);
            println!(
                "| {s} | {:.1} % | {:.3} | {:.3} | {:.3} |",
                capacity as f64 / 1000.0,
                s3,
                lru,
                s3 / lru
            );
        }
    }
}

criterion_group!(benches, hot_paths);

fn main() {
    print_hit_ratios();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
