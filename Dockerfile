# syntax=docker/dockerfile:1
# regcache: build with the Rust toolchain, run the single static-ish binary as non-root on a
# small Debian base (CA certificates for registries; no shell tools needed at run time).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Everything the manifest names (bench targets included) must exist; .dockerignore keeps
# build outputs and virtualenvs out. Only the binary is built.
COPY . .
RUN cargo build --release --locked --bin regcache \
    && strip target/release/regcache

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/regcache /usr/local/bin/regcache
# The numeric user matches the chart's securityContext (runAsNonRoot needs a number).
USER 65532:65532
# The read API and registry webhooks.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/regcache"]
CMD ["controller"]
