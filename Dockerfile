# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are compiled in their own layer (cached until
# Cargo.toml/Cargo.lock change), the binary in the next, and the runtime image
# holds only the binary, CA certificates and an unprivileged user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# 1. Dependencies only: a stub crate with the real manifest and lockfile.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/refund-bench.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
# 2. The crate itself (migrations are embedded at compile time).
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin refund-gateway \
 && strip target/release/refund-gateway

FROM debian:bookworm-slim AS runtime
# ca-certificates is left unpinned on purpose: the image should carry the
# distribution's current CA bundle, not one frozen at the time of writing.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/refund-gateway --create-home refund-gateway
COPY --from=build /src/target/release/refund-gateway /usr/local/bin/refund-gateway
USER 10001:10001
WORKDIR /var/lib/refund-gateway
ENV REFUND_GATEWAY_LISTEN=0.0.0.0:8080 \
    REFUND_GATEWAY_LOG_FORMAT=json \
    RUST_LOG=info
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
  CMD ["refund-gateway", "probe", "http://127.0.0.1:8080/healthz"]
# No secrets here: configuration comes from --config / environment at run time.
ENTRYPOINT ["refund-gateway"]
CMD ["serve"]
