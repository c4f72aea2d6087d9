# One image, five entrypoints (auth-service, command-service, projector,
# query-service, notification-service). Multi-stage: dependencies are built in a cached layer
# before the sources are copied; the runtime image is small and non-root.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependency layer: manifests only, with stub targets.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY proto/Cargo.toml proto/build.rs proto/
COPY proto/bank proto/bank
COPY proto/google proto/google
COPY crates/domain/Cargo.toml crates/domain/
COPY crates/platform/Cargo.toml crates/platform/
COPY crates/testkit/Cargo.toml crates/testkit/
COPY crates/readmodel/Cargo.toml crates/readmodel/
COPY auth-service/Cargo.toml auth-service/
COPY command-service/Cargo.toml command-service/
COPY projector/Cargo.toml projector/
COPY query-service/Cargo.toml query-service/
COPY notification-service/Cargo.toml notification-service/
RUN for d in proto crates/domain crates/platform crates/testkit crates/readmodel; do mkdir -p $d/src && echo > $d/src/lib.rs; done \
 && mkdir -p proto/src/bin && echo 'fn main(){}' > proto/src/bin/write-descriptor-set.rs \
 && for d in auth-service command-service projector query-service notification-service; do mkdir -p $d/src && echo > $d/src/lib.rs && echo 'fn main(){}' > $d/src/main.rs; done \
 && cargo build --release --locked --bins || true
COPY . .
RUN touch proto/src/lib.rs crates/*/src/lib.rs */src/lib.rs */src/main.rs \
 && cargo build --release --locked --bins \
 && mkdir /out && cp target/release/auth-service target/release/command-service target/release/projector target/release/query-service \
    target/release/notification-service /out/ \
 && cargo run --release --locked -q -p bank-proto --bin write-descriptor-set -- /out/bank.pb

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 bank
COPY --from=build /out/ /usr/local/bin/
USER 10001
ENV LOG_FORMAT=json
