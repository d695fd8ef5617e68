//! Steady-state proxying makes no heap allocation per request.
//!
//! The gateway runs in this process under a counting global allocator. Its upstream is a
//! second `weir` process (a mock route), and the client is a thread that reuses fixed
//! buffers, so what the counter sees after warm-up is Weir's own request path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `request` and reads one Content-Length response into `buf`, allocation-free.
fn round_trip(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> usize {
    s.write_all(request).unwrap();
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).unwrap();
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&buf[..have])
        );
        have += n;
        let got = &buf[..have];
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &got[..end];
            let cl = head
                .split(|&b| b == b'\n')
                .find_map(|line| {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
                    name.eq_ignore_ascii_case(b"content-length").then(|| {
                        std::str::from_utf8(&value[1..])
                            .unwrap()
                            .trim()
                            .parse::<usize>()
                            .unwrap()
                    })
                })
                .expect("content-length");
            if have >= end + 4 + cl {
                assert!(
                    got.starts_with(b"HTTP/1.1 200"),
                    "{:?}",
                    String::from_utf8_lossy(head)
                );
                return cl;
            }
        }
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn steady_state_proxying_allocates_nothing_per_request() {
    // The upstream: another weir process serving a 1 KiB mock body.
    let body = "x".repeat(1024);
    let origin_config =
        std::env::temp_dir().join(format!("weir-alloc-origin-{}.toml", std::process::id()));
    std::fs::write(
        &origin_config,
        format!("[server]\nworkers = 1\n[http]\nkeepalive_requests = 1000000\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/{{*p}}\"\nmock = {{ body = \"{body}\" }}\n"),
    )
    .unwrap();
    let mut origin = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "-c"])
            .arg(&origin_config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut log = String::new();
    let mut stderr = origin.0.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log.contains(" worker") && Instant::now() < deadline {
        let mut b = [0u8; 512];
        let n = stderr.read(&mut b).unwrap();
        log.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    let origin_addr = log
        .split("listening on http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("origin address")
        .to_string();

    // The gateway under test, in this process, with its access log on (JSON, to a file)
    // and its metrics counted (on with [admin]).
    let access_log = std::env::temp_dir().join(format!("weir-alloc-{}.log", std::process::id()));
    let access_log = access_log.display();
    let config = weir::config::parse(
        &format!(
            "[server]\nworkers = 1\n[http]\nkeepalive_requests = 1000000\n[access_log]\npath = \"{access_log}\"\n[admin]\naddress = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.origin]\ntargets = [\"{origin_addr}\"]\n[[route]]\npath = \"/items/{{*p}}\"\nupstream = \"origin\"\n\
             [[route]]\npath = \"/cached/{{*p}}\"\nupstream = \"origin\"\nstrip_prefix = \"/cached\"\ncache = {{ }}\n\
             [[api_key]]\nid = \"alloc\"\nvalue = \"alloc-test-key-0123456789\"\n\
             [[route]]\npath = \"/keyed/{{*p}}\"\nupstream = \"origin\"\napi_key_required = true\nthrottle = {{ rate = 1000000, burst = 1000000, headers = true }}\n\
             [[route]]\npath = \"/mocked\"\nmock = {{ body = \"{body}\" }}\n"
        ),
        "alloc-test",
    )
    .unwrap();
    let running = weir::server::start(config, std::path::Path::new("allocations.toml")).unwrap();
    let addr = running.listeners[0].addr;

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = b"GET /items/42?full=1 HTTP/1.1\r\nHost: api.example.com\r\nAccept: application/json\r\nUser-Agent: alloc-test\r\n\r\n";
    // A browser's head with cookies: larger than the 1 KiB a connection idles with.
    let browser = format!(
        "GET /items/42 HTTP/1.1\r\nHost: api.example.com\r\nCookie: session={}\r\n\r\n",
        "c".repeat(1500)
    );
    // And a cache hit, answered from the worker's shard. (The routes share no prefix:
    // matchit allocates a backtracking stack when a root catch-all overlaps a static one.)
    let cached = b"GET /cached/items/42 HTTP/1.1\r\nHost: api.example.com\r\nAccept: application/json\r\n\r\n";
    // The API key and throttle stages (with RateLimit fields), and a mock integration.
    let keyed = b"GET /keyed/items/42 HTTP/1.1\r\nHost: api.example.com\r\nx-api-key: alloc-test-key-0123456789\r\n\r\n";
    let mocked = b"GET /mocked HTTP/1.1\r\nHost: api.example.com\r\n\r\n";
    let requests = [
        &request[..],
        browser.as_bytes(),
        &cached[..],
        &keyed[..],
        &mocked[..],
    ];
    let mut buf = vec![0u8; 16 * 1024];
    for i in 0..2_000 {
        assert_eq!(
            round_trip(&mut s, requests[i % requests.len()], &mut buf),
            1024
        );
    }
    const MEASURED: u64 = 20_000;
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for i in 0..MEASURED as usize {
        round_trip(&mut s, requests[i % requests.len()], &mut buf);
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;

    running.shutdown();
    drop(origin);
    let _ = std::fs::remove_file(&origin_config);
    let logged = std::fs::read_to_string(access_log.to_string()).unwrap_or_default();
    let _ = std::fs::remove_file(access_log.to_string());
    // Every request was logged (the warm-up's and the measured ones).
    assert_eq!(logged.lines().count(), 2_000 + MEASURED as usize);
    println!("{allocations} allocations over {MEASURED} proxied requests");
    // Amortised growth may show as a handful; one per request would be 20,000.
    assert!(
        allocations <= MEASURED / 100,
        "{allocations} allocations over {MEASURED} requests"
    );
}
