//! Weir driven over real sockets: the built binary, a real backend, real clients.
//! Each module is one area of behaviour; each test is named for the behaviour it checks.

mod access_log;
mod admin;
mod api_keys;
mod cache;
mod check;
mod epoll;
mod error_log;
mod lifecycle;
mod limits;
mod metrics;
mod proxying;
mod quotas;
mod reload;
mod routing;
mod service;
mod smuggling;
mod support;
mod throttling;
mod tls;
mod tracing;
mod upstream_failures;
