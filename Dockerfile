# Multi-stage. The default (last) stage is the product image: the router alone, stripped, non-root.
# The test stand-in has its own stages, built only when asked for: `docker build --target sim .`
FROM rust:1-bookworm AS source
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY src ./src
COPY crates ./crates
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests

FROM source AS build-sim
RUN cargo build --release --locked -p vllm-sim --bins && strip target/release/vllm-sim

FROM source AS build
RUN cargo build --release --locked -p prefix-router --bin prefix-router && strip target/release/prefix-router

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 65532 --no-create-home app
USER 65532:65532

FROM runtime AS sim
COPY --from=build-sim /src/target/release/vllm-sim /usr/local/bin/
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/vllm-sim"]

FROM runtime AS router
COPY --from=build /src/target/release/prefix-router /usr/local/bin/
EXPOSE 9002 9003 9090
ENTRYPOINT ["/usr/local/bin/prefix-router"]
