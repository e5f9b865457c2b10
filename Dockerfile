# syntax=docker/dockerfile:1
# One image for both binaries: `metastore` (a member) and `metastore-operator`.
#
#   docker build -t metastore:0.1.0 .
#   docker run --rm -p 12380:12380 -v metastore-data:/var/lib/metastore metastore:0.1.0
#
# Ports: 12380 client API (HTTP), 12379 raft peer traffic, 8080 the operator's /metrics.
# Data: /var/lib/metastore (mount a volume; the operator gives each member a PVC there).

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# RocksDB's bindings are generated with libclang; its C++ needs a compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin metastore --bin metastore-operator \
 && install -D -m 0755 target/release/metastore target/release/metastore-operator -t /out/

# glibc and libstdc++ for RocksDB, CA certificates for the operator's API-server connection.
FROM debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="metaStore" \
      org.opencontainers.image.description="Replicated, strongly consistent key-value store for metadata, and its Kubernetes operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/metastore"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 metastore \
 && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin metastore \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/metastore
COPY --from=build /out/metastore /out/metastore-operator /usr/local/bin/
USER 65532:65532
# In a container the listeners face the pod or bridge network, not the loopback.
ENV METASTORE_DATA_DIR=/var/lib/metastore \
    METASTORE_BIND_ADDRESS=0.0.0.0
VOLUME ["/var/lib/metastore"]
EXPOSE 12379 12380 8080
ENTRYPOINT []
CMD ["metastore"]
