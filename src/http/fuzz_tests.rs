//! Randomised robustness: mutated requests, responses and chunked bodies must never make
//! the codec panic, and whatever it accepts must be self-consistent. Deterministic (a fixed
//! xorshift seed), so a failure reproduces.

use super::*;
use crate::config;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING: &[u8] = b"\r\n\0 \t:;,\"\\/.%0aAzZ-\x7f\x80\xff";

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(b'x');
        }
        let at = rng.below(v.len());
        match rng.below(5) {
            0 => v[at] = INTERESTING[rng.below(INTERESTING.len())],
            1 => v.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 => {
                v.remove(at);
            }
            3 => v.truncate(at),
            _ => {
                let end = (at + rng.below(16)).min(v.len());
                let piece = v[at..end].to_vec();
                let to = rng.below(v.len());
                v.splice(to..to, piece);
            }
        }
    }
    v
}

const REQUESTS: &[&[u8]] = &[
    b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\nhello",
    b"PUT http://h:8080/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"OPTIONS * HTTP/1.0\r\nX-Request-Id: abc\r\n\r\n",
];

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    b"HTTP/1.0 404 Not Found\r\nTransfer-Encoding: chunked\r\nX-Request-Id: r\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
];

#[test]
fn mutated_requests_never_panic_and_accepted_heads_are_in_bounds() {
    let limits = config::parse("[[listener]]\naddress = \"127.0.0.1:0\"\n", "t")
        .unwrap()
        .http;
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut head = RequestHead::default();
    let mut accepted = 0;
    for i in 0..300_000 {
        let input = mutate(&mut rng, REQUESTS[i % REQUESTS.len()]);
        if let Ok(true) = parse_request(&input, &limits, &mut head) {
            accepted += 1;
            assert!(head.len <= input.len());
            for h in &head.headers {
                assert!(h.line.end as usize <= head.len && h.name.end <= h.line.end);
                assert!(h.line.of(&input).ends_with(b"\r\n"));
            }
            assert!(head.target.end as usize <= head.len);
            let _ = head.path(&input);
        }
    }
    // Some mutations leave a valid request; most must be refused.
    assert!(accepted > 500 && accepted < 250_000, "{accepted} accepted");
}

#[test]
fn mutated_responses_and_chunked_bodies_never_panic() {
    let mut rng = Rng(0x0dd_ba11_c0ff_ee00);
    let mut head = ResponseHead::default();
    for i in 0..300_000 {
        let input = mutate(&mut rng, RESPONSES[i % RESPONSES.len()]);
        if let Ok(true) = parse_response(&input, i % 2 == 0, &mut head) {
            assert!(head.len <= input.len());
            assert!(head.status_rest.end as usize <= head.len);
        }
        let body = mutate(
            &mut rng,
            b"5;a=b\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n",
        );
        let mut d = ChunkedDecoder::new();
        // Fed whole, and fed in two pieces at a random split: never a panic, and the
        // same verdict either way.
        let whole = d.scan(&body).map(|n| (n, d.is_done()));
        let mut d2 = ChunkedDecoder::new();
        let split = rng.below(body.len() + 1);
        let pieces = d2.scan(&body[..split]).and_then(|a| {
            if d2.is_done() {
                Ok((a, true))
            } else {
                d2.scan(&body[split..]).map(|b| (a + b, d2.is_done()))
            }
        });
        assert_eq!(
            whole,
            pieces,
            "{:?} split at {split}",
            String::from_utf8_lossy(&body)
        );
    }
}
