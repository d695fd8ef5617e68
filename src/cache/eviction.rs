//! Which entries a cache shard keeps: S3-FIFO (Yang et al., SOSP 2023), weighted by bytes.
//!
//! Three FIFO queues: a small one (a tenth of the bytes) where new entries prove
//! themselves, a main one for entries that were read again, and a ghost queue of hashes
//! recently dropped from the small one, so an entry that comes back soon goes straight to
//! main. One-hit wonders (most keys in a skewed API trace) leave through the small queue
//! without pushing out the popular entries, which plain LRU does not manage. A hit only
//! bumps a 2-bit counter: no list surgery, so lookups stay cheap.
//!
//! Owns: the index from key hash to value, and the byte budget. Must not: know what the
//! values are (the shard in `cache/mod.rs` does), or allocate on a lookup.

use std::collections::VecDeque;

use ahash::AHashMap;

/// Share of the budget the small queue may hold.
const SMALL_SHARE: f64 = 0.1;
/// Highest access count kept per entry (2 bits, as in the paper).
const MAX_FREQ: u8 = 3;

struct Slot<V> {
    hash: u64,
    value: Option<V>,
    weight: u64,
    freq: u8,
    in_main: bool,
    /// Bumped when the slot is freed, so queue entries that name an old tenant are skipped.
    generation: u32,
}

/// A byte-bounded map from 64-bit key hashes to values with S3-FIFO eviction.
pub struct S3Fifo<V> {
    index: AHashMap<u64, u32>,
    slots: Vec<Slot<V>>,
    free: Vec<u32>,
    small: VecDeque<(u32, u32)>,
    main: VecDeque<(u32, u32)>,
    ghost: VecDeque<u64>,
    ghost_index: AHashMap<u64, u32>,
    small_bytes: u64,
    main_bytes: u64,
    capacity: u64,
}

impl<V> S3Fifo<V> {
    pub fn new(capacity: u64) -> S3Fifo<V> {
        S3Fifo {
            index: AHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_index: AHashMap::default(),
            small_bytes: 0,
            main_bytes: 0,
            capacity,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether a value is stored for `hash` (not counted as a hit).
    pub fn contains(&self, hash: u64) -> bool {
        self.index.contains_key(&hash)
    }

    /// The value for `hash`, counted as a hit.
    pub fn get(&mut self, hash: u64) -> Option<&mut V> {
        let &slot = self.index.get(&hash)?;
        let s = &mut self.slots[slot as usize];
        s.freq = (s.freq + 1).min(MAX_FREQ);
        s.value.as_mut()
    }

    /// The value for `hash` without counting a hit.
    pub fn peek_mut(&mut self, hash: u64) -> Option<&mut V> {
        let &slot = self.index.get(&hash)?;
        self.slots[slot as usize].value.as_mut()
    }

    /// Inserts or replaces the value for `hash`, then evicts until the budget holds.
    /// A value heavier than the whole budget is not stored (and is returned).
    pub fn insert(&mut self, hash: u64, value: V, weight: u64) -> Result<(), V> {
        if weight > self.capacity {
            self.remove(hash);
            return Err(value);
        }
        if let Some(&slot) = self.index.get(&hash) {
            // Replacing keeps the entry's place and its history.
            self.slots[slot as usize].value = Some(value);
            self.reweigh(slot, weight);
        } else {
            let in_main = self.ghost_index.contains_key(&hash);
            let slot = match self.free.pop() {
                Some(i) => {
                    let s = &mut self.slots[i as usize];
                    s.hash = hash;
                    s.value = Some(value);
                    s.weight = weight;
                    s.freq = 0;
                    s.in_main = in_main;
                    i
                }
                None => {
                    self.slots.push(Slot {
                        hash,
                        value: Some(value),
                        weight,
                        freq: 0,
                        in_main,
                        generation: 0,
                    });
                    (self.slots.len() - 1) as u32
                }
            };
            let generation = self.slots[slot as usize].generation;
            if in_main {
                self.main.push_back((slot, generation));
                self.main_bytes += weight;
            } else {
                self.small.push_back((slot, generation));
                self.small_bytes += weight;
            }
            self.index.insert(hash, slot);
        }
        self.evict();
        Ok(())
    }

    /// Removes the value for `hash` (it leaves no ghost).
    pub fn remove(&mut self, hash: u64) -> Option<V> {
        let slot = self.index.remove(&hash)?;
        Some(self.free_slot(slot))
    }

    /// Changes the weight of the value for `hash` (after it grew or shrank in place), then
    /// evicts until the budget holds.
    pub fn set_weight(&mut self, hash: u64, weight: u64) {
        let Some(&slot) = self.index.get(&hash) else {
            return;
        };
        if weight > self.capacity {
            self.remove(hash);
            return;
        }
        self.reweigh(slot, weight);
        self.evict();
    }

    /// Sets a live slot's weight, keeping its queue's byte count right.
    fn reweigh(&mut self, slot: u32, weight: u64) {
        let s = &mut self.slots[slot as usize];
        let old = std::mem::replace(&mut s.weight, weight);
        let queue_bytes = if s.in_main {
            &mut self.main_bytes
        } else {
            &mut self.small_bytes
        };
        *queue_bytes = *queue_bytes - old + weight;
    }

    /// Keeps only the values `keep` accepts; returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) -> usize {
        let doomed: Vec<u64> = self
            .index
            .iter()
            .filter(|(_, &slot)| {
                let v = self.slots[slot as usize].value.as_ref();
                !v.is_some_and(&mut keep)
            })
            .map(|(&h, _)| h)
            .collect();
        for &h in &doomed {
            self.remove(h);
        }
        doomed.len()
    }

    fn free_slot(&mut self, slot: u32) -> V {
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        if s.in_main {
            self.main_bytes -= s.weight;
        } else {
            self.small_bytes -= s.weight;
        }
        s.weight = 0;
        let value = s.value.take().expect("an occupied slot");
        self.free.push(slot);
        self.compact_queues();
        value
    }

    /// Queues hold stale (slot, generation) pairs of removed entries until they reach the
    /// front; if they pile up (many removals, few evictions), sweep them out.
    fn compact_queues(&mut self) {
        let live = self.index.len();
        if self.small.len() + self.main.len() > 2 * live + 1024 {
            let slots = &self.slots;
            let current = |&(slot, generation): &(u32, u32)| {
                slots[slot as usize].generation == generation
                    && slots[slot as usize].value.is_some()
            };
            self.small.retain(current);
            self.main.retain(current);
        }
    }

    fn is_current(&self, (slot, generation): (u32, u32)) -> bool {
        let s = &self.slots[slot as usize];
        s.generation == generation && s.value.is_some()
    }

    fn evict(&mut self) {
        while self.small_bytes + self.main_bytes > self.capacity {
            let small_limit = (self.capacity as f64 * SMALL_SHARE) as u64;
            if self.small_bytes > small_limit || self.main.is_empty() {
                self.evict_small();
            } else {
                self.evict_main();
            }
        }
    }

    fn evict_small(&mut self) {
        while let Some(entry) = self.small.pop_front() {
            if !self.is_current(entry) {
                continue;
            }
            let s = &mut self.slots[entry.0 as usize];
            if s.freq > 0 {
                // Read again while on probation: promote.
                s.freq = 0;
                s.in_main = true;
                self.small_bytes -= s.weight;
                self.main_bytes += s.weight;
                self.main.push_back(entry);
                // Promotion alone frees nothing; the caller's loop evicts from main if needed.
                return;
            }
            let hash = s.hash;
            self.index.remove(&hash);
            self.free_slot(entry.0);
            self.remember(hash);
            return;
        }
        // Nothing left in small: the bytes must be in main.
        self.evict_main();
    }

    fn evict_main(&mut self) {
        while let Some(entry) = self.main.pop_front() {
            if !self.is_current(entry) {
                continue;
            }
            let s = &mut self.slots[entry.0 as usize];
            if s.freq > 0 {
                s.freq -= 1;
                self.main.push_back(entry);
                continue;
            }
            let hash = s.hash;
            self.index.remove(&hash);
            self.free_slot(entry.0);
            return;
        }
    }

    /// Adds a hash to the ghost queue, which holds about as many hashes as there are entries.
    fn remember(&mut self, hash: u64) {
        *self.ghost_index.entry(hash).or_insert(0) += 1;
        self.ghost.push_back(hash);
        let limit = self.index.len().max(64);
        while self.ghost.len() > limit {
            let old = self.ghost.pop_front().expect("non-empty");
            if let Some(n) = self.ghost_index.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.ghost_index.remove(&old);
                }
            }
        }
    }
}

/// Least-recently-used, weighted by bytes: the baseline S3-FIFO is measured against in
/// `benches/cache.rs`. Not used on the request path.
pub mod reference {
    use ahash::AHashMap;

    const NIL: u32 = u32::MAX;

    struct Node {
        hash: u64,
        weight: u64,
        prev: u32,
        next: u32,
    }

    /// A byte-bounded LRU set of hashes (values are irrelevant to hit ratios).
    pub struct Lru {
        index: AHashMap<u64, u32>,
        nodes: Vec<Node>,
        free: Vec<u32>,
        head: u32,
        tail: u32,
        bytes: u64,
        capacity: u64,
    }

    impl Lru {
        pub fn new(capacity: u64) -> Lru {
            Lru {
                index: AHashMap::default(),
                nodes: Vec::new(),
                free: Vec::new(),
                head: NIL,
                tail: NIL,
                bytes: 0,
                capacity,
            }
        }

        fn unlink(&mut self, i: u32) {
            let (prev, next) = (self.nodes[i as usize].prev, self.nodes[i as usize].next);
            match prev {
                NIL => self.head = next,
                p => self.nodes[p as usize].next = next,
            }
            match next {
                NIL => self.tail = prev,
                n => self.nodes[n as usize].prev = prev,
            }
        }

        fn push_front(&mut self, i: u32) {
            self.nodes[i as usize].prev = NIL;
            self.nodes[i as usize].next = self.head;
            if self.head != NIL {
                self.nodes[self.head as usize].prev = i;
            }
            self.head = i;
            if self.tail == NIL {
                self.tail = i;
            }
        }

        /// A hit moves the entry to the front.
        pub fn get(&mut self, hash: u64) -> bool {
            let Some(&i) = self.index.get(&hash) else {
                return false;
            };
            self.unlink(i);
            self.push_front(i);
            true
        }

        pub fn insert(&mut self, hash: u64, weight: u64) {
            if weight > self.capacity || self.get(hash) {
                return;
            }
            let node = Node {
                hash,
                weight,
                prev: NIL,
                next: NIL,
            };
            let i = match self.free.pop() {
                Some(i) => {
                    self.nodes[i as usize] = node;
                    i
                }
                None => {
                    self.nodes.push(node);
                    (self.nodes.len() - 1) as u32
                }
            };
            self.push_front(i);
            self.index.insert(hash, i);
            self.bytes += weight;
            while self.bytes > self.capacity {
                let t = self.tail;
                self.unlink(t);
                self.bytes -= self.nodes[t as usize].weight;
                self.index.remove(&self.nodes[t as usize].hash);
                self.free.push(t);
            }
        }
    }

    /// A reproducible trace of key numbers drawn from a Zipf distribution over `keys` keys
    /// with exponent `s` (API traffic is typically s ≈ 0.8–1.0).
    pub fn zipf_trace(keys: usize, len: usize, s: f64, seed: u64) -> Vec<u64> {
        let mut cdf = Vec::with_capacity(keys);
        let mut total = 0.0;
        for k in 1..=keys {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                // xorshift64*: deterministic, good enough for sampling.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
                let u = r as f64 / (1u64 << 53) as f64 * total;
                cdf.partition_point(|&c| c < u) as u64
            })
            .collect()
    }

    /// Hit ratios of S3-FIFO and LRU replaying `trace` with unit weights and room for
    /// `capacity` entries: (s3fifo, lru).
    pub fn hit_ratios(trace: &[u64], capacity: u64) -> (f64, f64) {
        let mut s3 = super::S3Fifo::new(capacity);
        let mut lru = Lru::new(capacity);
        let (mut s3_hits, mut lru_hits) = (0u64, 0u64);
        for &k in trace {
            let h = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            if s3.get(h).is_some() {
                s3_hits += 1;
            } else {
                let _ = s3.insert(h, (), 1);
            }
            if lru.get(h) {
                lru_hits += 1;
            } else {
                lru.insert(h, 1);
            }
        }
        let n = trace.len() as f64;
        (s3_hits as f64 / n, lru_hits as f64 / n)
    }
}

#[cfg(test)]
mod tests {
    use super::reference::{hit_ratios, zipf_trace};
    use super::*;

    #[test]
    fn bytes_stay_within_the_budget() {
        let mut c = S3Fifo::new(10_000);
        for i in 0..10_000u64 {
            c.insert(i, i, 100 + i % 400).unwrap();
            assert!(c.bytes() <= 10_000);
        }
        assert!(c.len() > 10);
        assert!(c.insert(1 << 40, 0, 10_001).is_err());
    }

    #[test]
    fn replace_and_remove_keep_the_books() {
        let mut c = S3Fifo::new(1000);
        c.insert(1, "a", 100).unwrap();
        c.insert(1, "b", 300).unwrap();
        assert_eq!(c.bytes(), 300);
        assert_eq!(c.get(1).copied(), Some("b"));
        assert_eq!(c.remove(1), Some("b"));
        assert_eq!(c.bytes(), 0);
        assert!(c.get(1).is_none());
        for i in 0..100 {
            c.insert(i, "x", 10).unwrap();
        }
        assert_eq!(c.retain(|_| false), 100);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn popular_entries_survive_a_scan() {
        let mut c = S3Fifo::new(100);
        for round in 0..3 {
            for k in 0..20u64 {
                if c.get(k).is_none() {
                    c.insert(k, round, 1).unwrap();
                }
            }
        }
        // A long scan of one-hit keys goes through the small queue only.
        for k in 1000..5000u64 {
            c.insert(k, 9, 1).unwrap();
        }
        let kept = (0..20u64).filter(|&k| c.get(k).is_some()).count();
        assert!(kept >= 18, "only {kept} of 20 popular keys survived");
    }

    #[test]
    fn beats_lru_on_a_zipf_trace() {
        let trace = zipf_trace(100_000, 400_000, 0.9, 7);
        for capacity in [1_000, 10_000] {
            let (s3, lru) = hit_ratios(&trace, capacity);
            assert!(
                s3 > lru,
                "capacity {capacity}: S3-FIFO {s3:.3} vs LRU {lru:.3}"
            );
        }
    }
}
