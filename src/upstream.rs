//! Upstream groups: choosing a target, connecting, and keeping idle connections.
//!
//! Owns: each worker's keep-alive pools and balancer state ([`Pools`], never shared), and
//! the passive health of each target ([`TargetHealth`], shared by all workers through
//! atomics so that every worker learns of a failing target at once). Also owns the runtime
//! specs [`Upstream`], [`Target`] and [`Balance`] (re-exported by `config`).
//!
//! Must not: take a lock, or hand out a pooled connection that it has not checked is
//! still open. What goes wrong here (a connect refused or timed out, an upstream
//! certificate that does not verify, a target left out and back) is logged where it is
//! found, rate-limited per target ([`crate::log`]), never on the success path.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use serde::Deserialize;

use crate::clock::Now;
use crate::tls::TlsStream;

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub targets: Vec<Target>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// TLS toward the targets, if they speak HTTPS.
    pub tls: Option<crate::tls::UpstreamTls>,
}

impl Upstream {
    /// How the error log names target `target`: ``upstream `api` target 10.0.0.7:80``,
    /// with the address it resolved to when the target was written as a name.
    pub fn target_label(&self, target: usize) -> TargetLabel<'_> {
        TargetLabel(self, target)
    }
}

/// See [`Upstream::target_label`].
pub struct TargetLabel<'a>(&'a Upstream, usize);

impl std::fmt::Display for TargetLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.0.targets[self.1];
        write!(f, "upstream `{}` target {}", self.0.name, t.authority)?;
        if t.authority.parse::<SocketAddr>() != Ok(t.addr) {
            write!(f, " ({})", t.addr)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    /// The target as written (`host:port`); sent as `Host` unless the route says otherwise.
    pub authority: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

/// Load-balancing policy of an upstream group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round-robin (nginx's default).
    RoundRobin,
    /// Fewest requests in flight on this worker, weighted (Envoy's LEAST_REQUEST).
    LeastOutstanding,
}

/// A connection to a target: plain TCP, or TLS over TCP.
///
/// The TLS variant's operations run as boxed futures: inlined, they would enlarge every
/// connection's state machine (and so every idle connection) by about 2.5 KiB, plain ones
/// included. TLS upstreams pay one small allocation per I/O call instead; plain proxying
/// stays allocation-free (tests/allocations.rs).
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<ClientConnection>>),
}

impl UpstreamStream {
    /// The TCP connection underneath (for the idle liveness peek).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Plain(s) => s,
            UpstreamStream::Tls(s) => s.tcp(),
        }
    }
}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls(s) => Box::pin(s.read(buf)).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.readv(buf).await,
            UpstreamStream::Tls(s) => Box::pin(s.readv(buf)).await,
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write(buf).await,
            UpstreamStream::Tls(s) => Box::pin(s.write(buf)).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.writev(buf).await,
            UpstreamStream::Tls(s) => Box::pin(s.writev(buf)).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.flush().await,
            UpstreamStream::Tls(s) => Box::pin(s.flush()).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.shutdown().await,
            UpstreamStream::Tls(s) => Box::pin(s.shutdown()).await,
        }
    }
}

/// TLS toward a group's targets: the client configuration and each target's server name.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub names: Vec<ServerName<'static>>,
}

/// Passive health of one target, shared by all workers.
#[derive(Debug, Default)]
pub struct TargetHealth {
    consecutive_failures: AtomicU32,
    /// Milliseconds on [`crate::clock`] until which the target is left out; 0 when up.
    down_until_ms: AtomicU64,
}

impl TargetHealth {
    /// Whether the target is in use at `now_ms` ([`crate::clock::Now::ms`]).
    pub fn is_up(&self, now_ms: u64) -> bool {
        self.down_until_ms() <= now_ms
    }

    /// Until when the target is left out (0 when up).
    pub fn down_until_ms(&self) -> u64 {
        self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Records a success of target `target` of `up`: the target is up again (it may have
    /// been tried while left out, see [`GroupState::pick`]), and the worker that brings it
    /// back says so. Cheap when nothing failed: loads, no store.
    pub fn success(&self, up: &Upstream, target: usize) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.down_until_ms.load(Ordering::Relaxed) != 0
            && self.down_until_ms.swap(0, Ordering::Relaxed) != 0
        {
            let addr = up.targets[target].addr;
            crate::info_limited!(key = addr; "{}: back up", up.target_label(target));
        }
    }

    /// Records a failure of target `target` of `up`; the `max_fails`-th in a row leaves
    /// the target out for `fail_timeout`. The only target of a group is never left out
    /// (as in nginx): there is nowhere else to send its requests. Only the failure that
    /// takes an up target down is logged, not those while it is down.
    pub fn failure(&self, up: &Upstream, target: usize) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if up.max_fails > 0 && n >= up.max_fails && up.targets.len() > 1 {
            let now = crate::clock::now().ms();
            let until = now + up.fail_timeout.as_millis() as u64;
            let was = self.down_until_ms.swap(until, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            // Workers failing at once on the same target: the first swap says it.
            if was <= now {
                let addr = up.targets[target].addr;
                crate::warn_limited!(key = addr;
                    "{}: marked down for {:?} after {n} failures",
                    up.target_label(target),
                    up.fail_timeout
                );
            }
        }
    }
}

/// An upstream group as all workers see it: its config, its targets' health, and its TLS.
#[derive(Debug)]
pub struct SharedUpstream {
    pub config: Upstream,
    /// Each target's health, by target index; shared with every generation that has the
    /// same target address (see `crate::registry`).
    pub health: Box<[Arc<TargetHealth>]>,
    pub tls: Option<UpstreamTls>,
}

impl SharedUpstream {
    /// Compiles an upstream group; `health` gives each target's shared health by address
    /// (the registry's, so a target keeps its health across generations).
    pub fn new(
        config: Upstream,
        mut health: impl FnMut(SocketAddr) -> Arc<TargetHealth>,
    ) -> Result<SharedUpstream, String> {
        let health = config.targets.iter().map(|t| health(t.addr)).collect();
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                let client = crate::tls::upstream_client_config(t)
                    .map_err(|e| format!("upstream `{}`: {e}", config.name))?;
                let names = config
                    .targets
                    .iter()
                    .map(|target| {
                        let host = t
                            .server_name
                            .clone()
                            .unwrap_or_else(|| host_of(&target.authority).to_string());
                        ServerName::try_from(host.clone()).map_err(|e| {
                            format!("upstream `{}`: `{host}` as a TLS name: {e}", config.name)
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(UpstreamTls {
                    config: client,
                    names,
                })
            }
        };
        Ok(SharedUpstream {
            config,
            health,
            tls,
        })
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Pooled connections idle at least this long are peeked at before reuse.
pub const PEEK_AFTER_IDLE: Duration = Duration::from_millis(100);

struct IdleConnection {
    stream: UpstreamStream,
    /// When it went idle (the clock reading of the request that last used it).
    since: Now,
}

/// One worker's state for one target.
struct TargetState {
    idle: Vec<IdleConnection>,
    /// Requests in flight from this worker (least-outstanding balancing).
    outstanding: u32,
    /// Smooth weighted round-robin's running weight.
    current_weight: i64,
}

/// One worker's state for one upstream group.
pub struct GroupState {
    pub shared: Arc<SharedUpstream>,
    targets: Vec<TargetState>,
    /// Rotates ties in least-outstanding selection.
    next: usize,
}

/// A worker's pools and balancers for every upstream group, indexed like `Config::upstreams`.
pub struct Pools {
    pub groups: Vec<GroupState>,
}

/// A set of target indices already tried for one request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    fn has(self, i: usize) -> bool {
        self.0 & (1 << (i % 64)) != 0
    }
    pub fn add(&mut self, i: usize) {
        self.0 |= 1 << (i % 64);
    }
}

impl Pools {
    pub fn new(shared: &[Arc<SharedUpstream>]) -> Pools {
        let groups = shared
            .iter()
            .map(|s| GroupState {
                shared: s.clone(),
                targets: s
                    .config
                    .targets
                    .iter()
                    .map(|_| TargetState {
                        idle: Vec::new(),
                        outstanding: 0,
                        current_weight: 0,
                    })
                    .collect(),
                next: 0,
            })
            .collect();
        Pools { groups }
    }

    /// Takes the idle connections of `old` (a previous generation's pools) to targets
    /// this generation still has: same address, spoken to the same way (plain, or TLS
    /// with the same server name). The others close when `old` is dropped.
    pub fn take_idle_from(&mut self, old: &mut Pools) {
        for og in &mut old.groups {
            for (oi, ot) in og.targets.iter_mut().enumerate() {
                if ot.idle.is_empty() {
                    continue;
                }
                let addr = og.shared.config.targets[oi].addr;
                let name = og.shared.tls.as_ref().map(|t| &t.names[oi]);
                let found = self.groups.iter_mut().find_map(|g| {
                    let i = g
                        .shared
                        .config
                        .targets
                        .iter()
                        .position(|t| t.addr == addr)?;
                    let same = g.shared.tls.as_ref().map(|t| &t.names[i]) == name;
                    same.then_some((g, i))
                });
                if let Some((g, i)) = found {
                    let room = g
                        .shared
                        .config
                        .max_idle
                        .saturating_sub(g.targets[i].idle.len());
                    let n = ot.idle.len().min(room);
                    g.targets[i].idle.extend(ot.idle.drain(..n));
                }
            }
        }
    }
}

impl GroupState {
    /// Chooses a target not yet tried: a healthy one if there is any, balanced as the
    /// group says. When every untried target is left out, the one whose `fail_timeout`
    /// ends first is tried anyway, rather than answering 503 for up to `fail_timeout` after
    /// the targets came back (nginx, finding every server down, forgets their failures so
    /// that the next request tries them again). `None`: every target was tried, which
    /// bounds a request's retries by the number of targets.
    pub fn pick(&mut self, tried: Tried, now: Now) -> Option<usize> {
        let now = now.ms();
        self.pick_healthy(tried, now).or_else(|| {
            let health = &self.shared.health;
            (0..self.targets.len())
                .filter(|&i| !tried.has(i))
                .min_by_key(|&i| health[i].down_until_ms())
        })
    }

    fn pick_healthy(&mut self, tried: Tried, now: u64) -> Option<usize> {
        let health = &self.shared.health;
        let eligible = |i: usize| !tried.has(i) && health[i].is_up(now);
        let cfg = &self.shared.config;
        match cfg.balance {
            Balance::RoundRobin => {
                // nginx's smooth weighted round-robin over the eligible targets.
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..self.targets.len() {
                    if !eligible(i) {
                        continue;
                    }
                    let w = i64::from(cfg.targets[i].weight);
                    self.targets[i].current_weight += w;
                    total += w;
                    let cw = self.targets[i].current_weight;
                    if best.is_none_or(|b| cw > self.targets[b].current_weight) {
                        best = Some(i);
                    }
                }
                let best = best?;
                self.targets[best].current_weight -= total;
                Some(best)
            }
            Balance::LeastOutstanding => {
                let n = self.targets.len();
                let start = self.next;
                self.next = (self.next + 1) % n;
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| eligible(i))
                    .min_by_key(|&i| {
                        // In-flight requests per unit of weight, in thousandths.
                        u64::from(self.targets[i].outstanding) * 1000
                            / u64::from(cfg.targets[i].weight)
                    })
            }
        }
    }

    /// Takes the most recently used idle connection to `target` that is still open.
    ///
    /// A connection idle for [`PEEK_AFTER_IDLE`] or more is checked with a non-blocking
    /// peek first, so one the upstream closed while it sat idle is never used. Hot
    /// connections skip that syscall: no upstream closes a keep-alive connection within
    /// a fraction of a second of answering on it without saying so.
    pub fn take_idle(&mut self, target: usize, now: Now) -> Option<UpstreamStream> {
        let timeout = self.shared.config.idle_timeout;
        let idle = &mut self.targets[target].idle;
        while let Some(conn) = idle.pop() {
            let idle_for = Duration::from_nanos(now.since(conn.since));
            if idle_for < timeout
                && (idle_for < PEEK_AFTER_IDLE
                    || crate::net::idle_connection_alive(conn.stream.tcp()))
            {
                return Some(conn.stream);
            }
        }
        None
    }

    /// Returns a connection that finished a response cleanly, for a request whose clock
    /// reading is `now` (its idle time is counted from the start of that request: the
    /// peek and the idle timeout come a little early, never late).
    pub fn put_idle(&mut self, target: usize, stream: UpstreamStream, now: Now) {
        let max = self.shared.config.max_idle;
        let idle = &mut self.targets[target].idle;
        if idle.len() >= max {
            if max == 0 {
                return;
            }
            // Keep the hottest connections; the oldest is the one most likely to time out.
            idle.remove(0);
        }
        idle.push(IdleConnection { stream, since: now });
    }

    pub fn started(&mut self, target: usize) {
        self.targets[target].outstanding += 1;
    }

    pub fn finished(&mut self, target: usize) {
        let t = &mut self.targets[target];
        t.outstanding = t.outstanding.saturating_sub(1);
    }
}

/// Why an upstream could not be reached.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    /// The TCP connect failed.
    Io(io::Error),
    /// The TLS handshake failed (a certificate that does not verify, most often).
    Tls(io::Error),
}

/// Opens a new connection to target `target` of `group`, with Nagle off (heads and bodies
/// are written whole), and the TLS handshake if the group speaks TLS, all within the
/// connect timeout. A failure is logged here, where its cause is known.
pub async fn connect(
    group: &SharedUpstream,
    target: usize,
) -> Result<UpstreamStream, ConnectError> {
    let addr = group.config.targets[target].addr;
    let open = async {
        let stream = TcpStream::connect_addr(addr)
            .await
            .map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        match &group.tls {
            None => Ok(UpstreamStream::Plain(stream)),
            Some(tls) => {
                let name = tls.names[target].clone();
                // Boxed, like the TLS stream's I/O: see `UpstreamStream`.
                let s = Box::pin(TlsStream::connect(stream, tls.config.clone(), name))
                    .await
                    .map_err(ConnectError::Tls)?;
                Ok(UpstreamStream::Tls(Box::new(s)))
            }
        }
    };
    let result = match monoio::time::timeout(group.config.connect_timeout, open).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(result) => result,
    };
    if let Err(e) = &result {
        log_connect_error(&group.config, target, e);
    }
    result
}

/// One rate-limited line per kind of connect failure and target.
#[cold]
fn log_connect_error(up: &Upstream, target: usize, e: &ConnectError) {
    let addr = up.targets[target].addr;
    let label = up.target_label(target);
    match e {
        ConnectError::Timeout => crate::warn_limited!(key = addr;
            "{label}: connect timed out after {:?}",
            up.connect_timeout
        ),
        ConnectError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            crate::warn_limited!(key = addr; "{label}: connect refused ({e})")
        }
        ConnectError::Io(e) => crate::warn_limited!(key = addr; "{label}: connect failed ({e})"),
        // rustls's reason: `invalid peer certificate: UnknownIssuer`, ...
        ConnectError::Tls(e) => {
            crate::error_limited!(key = addr; "{label}: TLS handshake failed: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn group(src: &str) -> GroupState {
        let c = config::parse(
            &format!("[[listener]]\naddress = \"127.0.0.1:0\"\n{src}"),
            "t",
        )
        .unwrap();
        let registry = crate::registry::Registry::new().unwrap();
        let shared = vec![Arc::new(
            SharedUpstream::new(c.upstreams[0].clone(), |a| registry.next().health(a)).unwrap(),
        )];
        Pools::new(&shared).groups.remove(0)
    }

    #[test]
    fn weighted_round_robin_is_smooth() {
        let mut g = group(
            "[upstream.u]\ntargets = [{ address = \"127.0.0.1:1\", weight = 5 }, \"127.0.0.1:2\", \"127.0.0.1:3\"]\n",
        );
        let picks: Vec<usize> = (0..7)
            .map(|_| g.pick(Tried::default(), crate::clock::now()).unwrap())
            .collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn tried_and_down_targets_are_skipped() {
        let mut g =
            group("[upstream.u]\ntargets = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nmax_fails = 1\n");
        let mut tried = Tried::default();
        let first = g.pick(tried, crate::clock::now()).unwrap();
        tried.add(first);
        let second = g.pick(tried, crate::clock::now()).unwrap();
        assert_ne!(first, second);
        tried.add(second);
        assert_eq!(g.pick(tried, crate::clock::now()), None);
        let cfg = g.shared.config.clone();
        g.shared.health[0].failure(&cfg, 0);
        for _ in 0..4 {
            assert_eq!(g.pick(Tried::default(), crate::clock::now()), Some(1));
        }
    }

    #[test]
    fn the_only_target_is_never_left_out() {
        let mut g = group(
            "[upstream.u]\ntargets = [\"127.0.0.1:1\"]\nmax_fails = 1\nfail_timeout = \"60s\"\n",
        );
        let cfg = g.shared.config.clone();
        for _ in 0..3 {
            g.shared.health[0].failure(&cfg, 0);
        }
        assert!(g.shared.health[0].is_up(crate::clock::now().ms()));
        assert_eq!(g.pick(Tried::default(), crate::clock::now()), Some(0));
    }

    #[test]
    fn when_every_target_is_down_the_first_to_come_back_is_tried() {
        for balance in ["round_robin", "least_outstanding"] {
            let mut g = group(&format!(
                "[upstream.u]\ntargets = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n\
                 max_fails = 1\nfail_timeout = \"60s\"\nbalance = \"{balance}\"\n"
            ));
            let cfg = g.shared.config.clone();
            let now = crate::clock::now().ms();
            for (i, later) in [(0, 3000), (1, 1000), (2, 2000)] {
                g.shared.health[i].failure(&cfg, i);
                g.shared.health[i]
                    .down_until_ms
                    .store(now + 60_000 + later, Ordering::Relaxed);
            }
            let mut tried = Tried::default();
            let mut order = Vec::new();
            while let Some(i) = g.pick(tried, crate::clock::now()) {
                order.push(i);
                tried.add(i);
            }
            assert_eq!(order, [1, 2, 0], "{balance}");
            // A success brings a target back at once: it is picked as a healthy one.
            g.shared.health[2].success(&cfg, 2);
            for _ in 0..3 {
                assert_eq!(
                    g.pick(Tried::default(), crate::clock::now()),
                    Some(2),
                    "{balance}"
                );
            }
        }
    }

    #[test]
    fn the_error_log_names_a_target_as_written_and_its_address_if_that_differs() {
        let g = group("[upstream.api]\ntargets = [\"127.0.0.1:81\", \"localhost:82\"]\n");
        let up = &g.shared.config;
        assert_eq!(
            up.target_label(0).to_string(),
            "upstream `api` target 127.0.0.1:81"
        );
        assert_eq!(
            up.target_label(1).to_string(),
            format!(
                "upstream `api` target localhost:82 ({})",
                up.targets[1].addr
            )
        );
    }

    #[test]
    fn least_outstanding_prefers_the_idle_target() {
        let mut g = group(
            "[upstream.u]\ntargets = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nbalance = \"least_outstanding\"\n",
        );
        g.started(0);
        g.started(0);
        assert_eq!(g.pick(Tried::default(), crate::clock::now()), Some(1));
        g.started(1);
        g.started(1);
        g.started(1);
        assert_eq!(g.pick(Tried::default(), crate::clock::now()), Some(0));
    }
}
