# syntax=docker/dockerfile:1
# The one image: the `commerce-mesh` binary, which runs every component
# (`serve <component>`), the migrations (`migrate all`) or the whole mesh (`up`).
#
#   docker build -t commerce-mesh .
#   docker run --rm -p 8080:8080 -e MESH_GATEWAY__LISTEN=0.0.0.0:8080 commerce-mesh up
#
# Dependencies are compiled in a layer of their own (cargo-chef), rebuilt only
# when Cargo.toml or Cargo.lock change; a source change rebuilds only our crates.
#
# Reproducible: the toolchain is an exact release (the workspace's
# rust-version), cargo-chef an exact version with its own lock file, every
# crate from Cargo.lock (--locked); .dockerignore keeps what the build does not
# read out of the context. distroless publishes no version tags, only digests:
# pin both bases by digest where you build and push
# (`docker buildx imagetools inspect <image>`, then `<image>@sha256:...`).
# Label a release:
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE=https://github.com/<you>/commerce-mesh -t commerce-mesh:0.1.0 .

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency graph alone, as a recipe.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# `dist` (fat LTO, Cargo.toml) for what ships; the Tilt dev loop passes
# `release`, whose link is parallel and quick.
ARG PROFILE=dist
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --profile ${PROFILE} --locked --package commerce-mesh --recipe-path recipe.json
COPY . .
RUN cargo build --profile ${PROFILE} --locked --package commerce-mesh --bin commerce-mesh \
    && mkdir -p /out/data \
    && cp target/${PROFILE}/commerce-mesh /out/commerce-mesh

# glibc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
WORKDIR /app
COPY --from=builder /out/commerce-mesh /usr/local/bin/commerce-mesh
# The catalog's example sources (catalog_ingest.sources_dir, relative to /app);
# mount your own over it.
COPY config/catalog/sources /app/config/catalog/sources
# `up`'s embedded storage (data_dir ./data) must be writable by the runtime user.
COPY --from=builder --chown=10001:10001 /out/data /app/data
# The same non-root user the Kubernetes manifests run as.
USER 10001:10001
# Last, so a new revision rebuilds no layer. VERSION: the crate's (Cargo.toml).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://git.example.org/commerce-mesh
LABEL org.opencontainers.image.title="commerce-mesh" \
      org.opencontainers.image.description="Commerce to LMS microservice mesh: gateway, fulfillment, customer-identity, catalog-ingest, purchase-history" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
EXPOSE 8080 50051 50052 50053 50054
ENTRYPOINT ["/usr/local/bin/commerce-mesh"]
CMD ["up"]
