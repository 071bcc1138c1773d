# Build: docker build -t ghcr.io/proxmox-netbox-operator/proxmox-netbox-operator:0.1.0 .
# A static musl binary on a distroless, non-root base.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
 && install -m 755 target/x86_64-unknown-linux-musl/release/proxmox-netbox-operator /proxmox-netbox-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /proxmox-netbox-operator /proxmox-netbox-operator
USER 65532:65532
ENTRYPOINT ["/proxmox-netbox-operator"]
CMD ["run"]
