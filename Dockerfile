# Weir in a container: built from source, served by an unprivileged user.
#
#   docker build -t weir .
#   docker run --rm -p 8080:8080 weir
#   curl -i http://127.0.0.1:8080/health
#
# io_uring in a container: Docker's default seccomp profile refuses io_uring_setup,
# io_uring_enter and io_uring_register (io_uring operations are not seen by seccomp, so
# the profile takes out the calls that create and drive rings). Weir, with io = "auto",
# then falls back to epoll, and its start-up line says so: "2 workers on epoll" rather
# than "2 workers on io_uring (defer_taskrun)". To get io_uring, run with a seccomp
# profile that allows those three calls (Docker's default profile with them added:
# `docker run --security-opt seccomp=PROFILE.json ...`). io = "io_uring" in the config
# makes start-up fail instead of falling back.
#
# Other notes:
# - workers = "auto" counts the CPUs in the affinity mask: `--cpuset-cpus` changes it,
#   `--cpus` (a CPU-time quota) does not.
# - `docker stop` sends SIGTERM: Weir drains for up to [server] drain_timeout (30s by
#   default), so give it `docker stop -t 35` or more. `docker kill -s HUP` reloads the
#   config, as does `docker exec CONTAINER weir reload -c /etc/weir/weir.toml`.
# - Mount your own config over /etc/weir/weir.toml; /etc/weir is read-only to the weir
#   user, so a config with quotas needs [quotas] store on a writable volume.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked
# The quickstart config, with its public listener on every address: 127.0.0.1 inside a
# container cannot be reached through a published port. Its "origin" listener stays on
# 127.0.0.1: only Weir itself talks to it.
RUN sed 's/^address = "127.0.0.1:8080"/address = "0.0.0.0:8080"/' examples/quickstart.toml \
        > /weir.toml \
    && grep -q '^address = "0.0.0.0:8080"' /weir.toml

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin weir
COPY --from=build /src/target/release/weir /usr/local/bin/weir
COPY --from=build /weir.toml /etc/weir/weir.toml
USER weir
EXPOSE 8080
CMD ["weir", "run", "-c", "/etc/weir/weir.toml"]
