//! Usage-plan quotas: requests per API key per DAY, WEEK or MONTH, counted exactly across
//! workers and kept in an embedded database (redb) so they survive restarts.
//!
//! Owns: one counter per (plan, key) ([`QuotaCounter`], one atomic word holding the period
//! and the count), the UTC period arithmetic, and the persister thread ([`Persister`])
//! that writes changed counts at least once a second and on shutdown. Also owns the runtime
//! spec [`Quota`] (re-exported by `config`).
//!
//! Must not: touch the database on a worker loop. Workers only do atomic operations; all
//! file I/O happens on the persister's own thread. A crash (`kill -9`) loses at most the
//! counts of the last second.
//!
//! Periods are aligned to UTC: a DAY starts at 00:00 UTC, a WEEK on Monday 00:00 UTC
//! (ISO 8601 weeks), a MONTH on the 1st at 00:00 UTC.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::calendar::{civil_from_days, days_from_civil};

/// (plan name, key id) → (period index, count).
const USAGE: TableDefinition<(&str, &str), (u32, u64)> = TableDefinition::new("usage");

#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub limit: u64,
    pub period: Period,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        match s.to_ascii_uppercase().as_str() {
            "DAY" => Some(Period::Day),
            "WEEK" => Some(Period::Week),
            "MONTH" => Some(Period::Month),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "DAY",
            Period::Week => "WEEK",
            Period::Month => "MONTH",
        }
    }

    /// Which period `unix_secs` falls in: days, Monday-aligned weeks, or months since 1970.
    pub fn index(self, unix_secs: u64) -> u32 {
        let days = unix_secs / 86_400;
        match self {
            Period::Day => days as u32,
            // 1970-01-01 was a Thursday: shift by 3 days so weeks start on Monday.
            Period::Week => ((days + 3) / 7) as u32,
            Period::Month => {
                let (y, m, _) = civil_from_days(days as i64);
                ((y - 1970) * 12 + (m as i64 - 1)) as u32
            }
        }
    }

    /// When period `index` starts, in Unix seconds.
    pub fn start(self, index: u32) -> u64 {
        match self {
            Period::Day => u64::from(index) * 86_400,
            Period::Week => (u64::from(index) * 7).saturating_sub(3) * 86_400,
            Period::Month => {
                let (y, m) = (1970 + i64::from(index) / 12, i64::from(index) % 12 + 1);
                days_from_civil(y, m as u32, 1) as u64 * 86_400
            }
        }
    }

    /// Seconds from `unix_secs` to the start of the next period.
    pub fn until_next(self, unix_secs: u64) -> u64 {
        self.start(self.index(unix_secs) + 1) - unix_secs
    }
}

/// Wall-clock Unix seconds for quota periods. `WEIR_CLOCK_SKEW_SECS` (read once, may be
/// negative) shifts it, so tests and operators can check a period boundary without
/// waiting for midnight.
pub fn wall_clock(now: crate::clock::Now) -> u64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    let skew = *SKEW.get_or_init(|| {
        std::env::var("WEIR_CLOCK_SKEW_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    now.wall_secs().saturating_add_signed(skew)
}

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn pack(period: u32, count: u64) -> u64 {
    u64::from(period) << COUNT_BITS | count.min(COUNT_MASK)
}

fn unpack(word: u64) -> (u32, u64) {
    ((word >> COUNT_BITS) as u32, word & COUNT_MASK)
}

/// One key's quota in one plan, shared by all workers.
#[derive(Debug)]
pub struct QuotaCounter {
    pub plan: String,
    pub key: String,
    pub limit: u64,
    pub period: Period,
    /// Period index (high 24 bits) and count (low 40 bits).
    state: AtomicU64,
    /// The state last written to the store (only the store's thread writes it).
    stored: AtomicU64,
}

/// The counters the store's thread persists: swapped by a reload, read once a second.
pub type QuotaSet = Arc<std::sync::Mutex<Arc<[Arc<QuotaCounter>]>>>;

impl QuotaCounter {
    pub fn new(plan: &str, key: &str, limit: u64, period: Period) -> QuotaCounter {
        QuotaCounter {
            plan: plan.to_string(),
            key: key.to_string(),
            limit,
            period,
            state: AtomicU64::new(0),
            stored: AtomicU64::new(0),
        }
    }

    /// The same key's counter under a changed limit or period (a reload): the count goes
    /// on.
    pub fn with_limit(&self, limit: u64, period: Period) -> QuotaCounter {
        let state = self.state.load(Ordering::Relaxed);
        QuotaCounter {
            plan: self.plan.clone(),
            key: self.key.clone(),
            limit,
            period,
            state: AtomicU64::new(state),
            stored: AtomicU64::new(self.stored.load(Ordering::Relaxed)),
        }
    }

    /// Counts one request, or refuses with the seconds until the next period.
    pub fn try_reserve(&self, now_secs: u64) -> Result<(), u64> {
        let period = self.period.index(now_secs);
        let mut word = self.state.load(Ordering::Relaxed);
        loop {
            let (p, count) = unpack(word);
            let count = if p == period { count } else { 0 };
            if count >= self.limit {
                return Err(self.period.until_next(now_secs).max(1));
            }
            match self.state.compare_exchange_weak(
                word,
                pack(period, count + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => word = actual,
            }
        }
    }

    /// Gives back a reservation a later stage refused, so a refused request costs no quota.
    pub fn release(&self, now_secs: u64) {
        let period = self.period.index(now_secs);
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (p, count) = unpack(word);
                (p == period && count > 0).then(|| pack(p, count - 1))
            });
    }

    /// Requests counted in the period containing `now_secs`.
    pub fn used(&self, now_secs: u64) -> u64 {
        let (p, count) = unpack(self.state.load(Ordering::Relaxed));
        if p == self.period.index(now_secs) {
            count
        } else {
            0
        }
    }

    /// Restores a stored count (at start-up), keeping whichever is newer.
    fn restore(&self, period: u32, count: u64) {
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (p, c) = unpack(word);
                (period > p || (period == p && count > c)).then(|| pack(period, count))
            });
    }
}

/// Loads stored counts into `counters`. A missing store is an empty one.
pub fn load(path: &Path, counters: &[Arc<QuotaCounter>]) -> Result<(), String> {
    if !path.exists() || counters.is_empty() {
        return Ok(());
    }
    let rows =
        read_all(path).map_err(|e| format!("cannot open quota store {}: {e}", path.display()))?;
    for c in counters {
        if let Some((_, _, period, count)) = rows
            .iter()
            .find(|(plan, key, _, _)| *plan == c.plan && *key == c.key)
        {
            c.restore(*period, *count);
            c.stored
                .store(c.state.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Checks that the quota store at `path` can be created, or opened for writing, before
/// Weir relies on it (`weir check` and `weir run` both, through the config). An existing
/// store is opened for writing and left as it is; a missing one is created, which proves
/// the directory takes it, and removed again. The message names the path and the cause.
///
/// A store another process holds (a running Weir writing its counts, `weir usage` reading
/// them) is fine: that is redb's lock, not a permission, and opening the file for writing
/// does not take it.
pub fn check_store(path: &Path) -> Result<(), String> {
    use std::fs::OpenOptions;
    let cannot = |cause: &dyn std::fmt::Display| {
        format!("cannot write the quota store {}: {cause}", path.display())
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(cannot(&"it is a directory")),
        Ok(_) => {
            // O_RDWR without O_TRUNC: proves the permission and a writable file system,
            // and changes nothing in the file.
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map(drop)
                .map_err(|e| cannot(&e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| cannot(&e))?;
            // Removed again, under redb's own lock: a running Weir that opened this empty
            // file in the meantime finds it locked, retries a second later and creates it
            // afresh; if it got the lock first, the file is its store now and stays.
            if try_lock(&file) {
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
        // A parent that is not a directory, or one that cannot be searched.
        Err(e) => Err(cannot(&e)),
    }
}

/// Takes the exclusive lock redb takes on a store it opens for writing (flock(2), as
/// `File::try_lock` does, which is newer than Weir's minimum Rust).
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor `file` owns; LOCK_NB never blocks.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Why a write of the counts did not happen.
enum StoreError {
    /// Another process holds the store (`weir usage` reading it): try again later.
    Busy,
    Failed(String),
}

/// Writes every counter whose state changed since it was last stored, in one
/// transaction. Ok(true): something was written; what was stored is noted only once it
/// is committed.
fn store(path: &Path, counters: &[Arc<QuotaCounter>]) -> Result<bool, StoreError> {
    let changed: Vec<(usize, u64)> = (0..counters.len())
        .map(|i| (i, counters[i].state.load(Ordering::Relaxed)))
        .filter(|&(i, word)| word != counters[i].stored.load(Ordering::Relaxed))
        .collect();
    if changed.is_empty() {
        return Ok(false);
    }
    let failed = |e: &dyn std::fmt::Display| StoreError::Failed(e.to_string());
    // Opened for each write and closed after, so `weir usage` can read in between.
    let db = match redb::Database::create(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Busy),
        Err(e) => return Err(failed(&e)),
    };
    let txn = db.begin_write().map_err(|e| failed(&e))?;
    {
        let mut table = txn.open_table(USAGE).map_err(|e| failed(&e))?;
        for &(i, word) in &changed {
            let c = &counters[i];
            let (period, count) = unpack(word);
            table
                .insert((c.plan.as_str(), c.key.as_str()), (period, count))
                .map_err(|e| failed(&e))?;
        }
    }
    txn.commit().map_err(|e| failed(&e))?;
    for (i, word) in changed {
        counters[i].stored.store(word, Ordering::Relaxed);
    }
    Ok(true)
}

/// How many writes in a row may find the store busy before that is reported as a failure
/// (another process holding it for this long is not `weir usage` reading).
const BUSY_TRIES: u32 = 10;

/// The thread that persists counts once a second and once more at shutdown.
pub struct Persister {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// How often counts are written: at most this much is lost in a crash.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Persister {
    pub fn start(path: PathBuf, set: QuotaSet) -> Result<Persister, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("weir-quota-store".into())
            .spawn(move || {
                let mut stopping = false;
                // A failing store is reported once, and its recovery once, not every second.
                let mut failing = false;
                let mut busy = 0;
                while !stopping {
                    // Sleep in short steps so shutdown does not wait a whole second.
                    for _ in 0..10 {
                        if flag.load(Ordering::Relaxed) {
                            stopping = true;
                            break;
                        }
                        thread::sleep(FLUSH_EVERY / 10);
                    }
                    // The set a reload may have swapped in since the last write.
                    let counters = set.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let mut result = store(&path, &counters);
                    // The last write waits out a reader, as `weir usage` waits out a write.
                    for _ in 0..50 {
                        if !stopping || !matches!(result, Err(StoreError::Busy)) {
                            break;
                        }
                        thread::sleep(Duration::from_millis(20));
                        result = store(&path, &counters);
                    }
                    let cause = match result {
                        Ok(wrote) => {
                            busy = 0;
                            if wrote && failing {
                                failing = false;
                                crate::info!("quota store {} written again", path.display());
                            }
                            continue;
                        }
                        Err(StoreError::Busy) if busy < BUSY_TRIES && !stopping => {
                            busy += 1;
                            continue;
                        }
                        Err(StoreError::Busy) => "another process holds it open".to_string(),
                        Err(StoreError::Failed(e)) => e,
                    };
                    if !failing {
                        failing = true;
                        crate::error!(
                            "cannot write the quota store {}: {cause}; counts are kept in \
                             memory and written once it can be (set [quotas] store to a \
                             writable path)",
                            path.display()
                        );
                    }
                }
                if failing {
                    crate::error!(
                        "quota store {} not written at shutdown: the counts since it \
                         failed are lost",
                        path.display()
                    );
                }
            })
            .map_err(|e| format!("cannot start the quota store thread: {e}"))?;
        Ok(Persister {
            stop,
            thread: Some(thread),
        })
    }

    /// Writes the final counts and stops.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads every stored count, for `weir usage`: (plan, key, period index, count). Retries
/// briefly while a running Weir holds the store for a write.
pub fn read_all(path: &Path) -> Result<Vec<(String, String, u32, u64)>, String> {
    let mut last_err = String::new();
    for _ in 0..50 {
        match redb::ReadOnlyDatabase::open(path) {
            Ok(db) => {
                let txn = db.begin_read().map_err(|e| e.to_string())?;
                let table = match txn.open_table(USAGE) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.to_string()),
                };
                let mut out = Vec::new();
                for entry in table.iter().map_err(|e| e.to_string())? {
                    let (k, v) = entry.map_err(|e| e.to_string())?;
                    let (plan, key) = k.value();
                    let (period, count) = v.value();
                    out.push((plan.to_string(), key.to_string(), period, count));
                }
                return Ok(out);
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                last_err = "the store is busy".into();
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
        }
    }
    Err(last_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn periods_are_aligned_to_utc() {
        // 2026-11-22 (a Sunday) 13:00 UTC.
        let t = days_from_civil(2026, 11, 22) as u64 * DAY + 13 * 3600;
        assert_eq!(civil_from_days((t / DAY) as i64), (2026, 11, 22));
        assert_eq!(Period::Day.until_next(t), 11 * 3600);
        // The week began on Monday 2026-11-16 and the next begins on Monday the 23rd.
        let week = Period::Week.index(t);
        assert_eq!(
            Period::Week.start(week),
            days_from_civil(2026, 11, 16) as u64 * DAY
        );
        assert_eq!(Period::Week.until_next(t), 11 * 3600);
        let month = Period::Month.index(t);
        assert_eq!(
            Period::Month.start(month),
            days_from_civil(2026, 11, 1) as u64 * DAY
        );
        assert_eq!(
            Period::Month.start(month + 1),
            days_from_civil(2026, 12, 1) as u64 * DAY
        );
        // December rolls into the next year.
        let dec = days_from_civil(2026, 12, 31) as u64 * DAY;
        assert_eq!(
            Period::Month.start(Period::Month.index(dec) + 1),
            days_from_civil(2027, 1, 1) as u64 * DAY
        );
    }

    #[test]
    fn a_quota_is_exhausted_then_rolls_over_at_the_period() {
        let q = QuotaCounter::new("gold", "acme", 3, Period::Day);
        let t = 20_000 * DAY + DAY - 10;
        for _ in 0..3 {
            assert!(q.try_reserve(t).is_ok());
        }
        assert_eq!(q.try_reserve(t), Err(10));
        assert_eq!(q.used(t), 3);
        // A release gives one back.
        q.release(t);
        assert!(q.try_reserve(t).is_ok());
        // The next day starts again from zero.
        assert_eq!(q.used(t + 10), 0);
        assert!(q.try_reserve(t + 10).is_ok());
        assert_eq!(q.used(t + 10), 1);
    }

    #[test]
    fn counts_survive_a_store_and_load() {
        let dir = std::env::temp_dir().join(format!("weir-quota-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.redb");
        let _ = std::fs::remove_file(&path);
        let t = 20_000 * DAY;
        let before = [Arc::new(QuotaCounter::new("gold", "acme", 10, Period::Day))];
        for _ in 0..4 {
            before[0].try_reserve(t).unwrap();
        }
        assert!(matches!(store(&path, &before), Ok(true)));
        assert!(matches!(store(&path, &before), Ok(false)), "nothing new");
        let after = [Arc::new(QuotaCounter::new("gold", "acme", 10, Period::Day))];
        load(&path, &after).unwrap();
        assert_eq!(after[0].used(t), 4);
        assert_eq!(
            read_all(&path).unwrap(),
            vec![("gold".into(), "acme".into(), 20_000, 4)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[test]
    fn check_store_proves_a_store_writable_and_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("weir-check-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A missing store: the directory takes it, and none is left behind.
        let path = dir.join("usage.redb");
        check_store(&path).unwrap();
        assert!(!path.exists());
        // An existing store, held by redb as a running Weir holds it while it writes: fine,
        // and its counts are untouched.
        let t = 20_000 * DAY;
        let counters = [Arc::new(QuotaCounter::new("gold", "acme", 10, Period::Day))];
        counters[0].try_reserve(t).unwrap();
        assert!(matches!(store(&path, &counters), Ok(true)));
        let held = redb::Database::create(&path).unwrap();
        check_store(&path).unwrap();
        // The persister itself waits for such a holder rather than failing.
        counters[0].try_reserve(t).unwrap();
        assert!(matches!(store(&path, &counters), Err(StoreError::Busy)));
        assert_eq!(
            unpack(counters[0].stored.load(Ordering::Relaxed)).1,
            1,
            "the second count is not noted as written"
        );
        drop(held);
        check_store(&path).unwrap();
        assert_eq!(
            read_all(&path).unwrap(),
            vec![("gold".into(), "acme".into(), 20_000, 1)]
        );
        assert!(matches!(store(&path, &counters), Ok(true)));
        assert_eq!(read_all(&path).unwrap()[0].3, 2);
        // A directory, a path under a file, a missing directory: the path and the cause.
        let err = check_store(&dir).unwrap_err();
        assert!(
            err.contains(&format!("{}: it is a directory", dir.display())),
            "{err}"
        );
        let err = check_store(&path.join("x.redb")).unwrap_err();
        assert!(err.contains("Not a directory"), "{err}");
        let err = check_store(&dir.join("missing/usage.redb")).unwrap_err();
        assert!(err.contains("No such file or directory"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
