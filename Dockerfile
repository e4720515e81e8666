# Multi-stage build: compile with the full toolchain, run on a slim image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY entity entity
COPY migration migration
COPY src src
COPY playground playground
RUN cargo build --release --locked --bin chat-server

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app chat
WORKDIR /app
COPY --from=build /src/target/release/chat-server /usr/local/bin/chat-server
RUN mkdir -p /app/data && chown chat /app/data
USER chat
ENV HOST=0.0.0.0 PORT=5001
EXPOSE 5001
HEALTHCHECK --interval=10s --timeout=3s --retries=5 CMD curl -fsS http://127.0.0.1:5001/api/health || exit 1
ENTRYPOINT ["chat-server"]
