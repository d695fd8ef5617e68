//! Weir: an io_uring, thread-per-core edge proxy and API gateway.
//!
//! A request flows through these modules in this order:
//!
//! - [`server`]: binds listeners, starts one pinned [`worker`] per core, handles signals;
//! - [`worker`]: per-core state; [`accept`]: its accept loops and reload tick; each
//!   connection goes to [`proxy`];
//! - [`proxy`]: the request path: read a head ([`http`]), take the request's one
//!   [`clock`] reading, route it ([`router`]), run the route's pipeline of [`stages`]
//!   (API keys: [`auth`]; throttle: [`limit`], [`quota`]; the response [`cache`]), then its
//!   integration (a mock, or an [`upstream`] with [`rewrite`]n headers); every response
//!   goes through one responder, and every request ends in one place with its
//!   [`observe::Record`], which the access log and the metrics ([`observe`]) read.
//!
//! [`config`] reads and checks the file; [`gateway`] compiles it into one generation that
//! workers share, with state from the [`registry`] that outlives generations. A reload
//! ([`server::Control::reload`], reached by SIGHUP or through [`control`]) publishes a new
//! generation; each request runs on the one that served when it started. Around them,
//! [`privileges`] drops root once the listeners are bound, [`notify`] tells a service
//! manager when the gateway is ready, reloading or stopping, and [`admin`] serves the
//! admin API (metrics, health, the route table, reload, purge) on its own threads.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod calendar;
pub mod clock;
pub mod config;
pub mod control;
pub mod gateway;
pub mod http;
pub mod limit;
pub mod log;
pub mod net;
pub mod notify;
pub mod observe;
pub mod privileges;
pub mod proxy;
pub mod quota;
pub mod registry;
pub mod rewrite;
pub mod router;
pub mod server;
pub mod stages;
pub mod tls;
pub mod upstream;
pub mod worker;
