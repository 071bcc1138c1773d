# Build: docker build -t ghcr.io/proxmox-netbox-operator/proxmox-netbox-operator:0.1.0 .
# A static musl binary on a distroless, non-root base. Base images are pinned by digest
# (tests/deploy.rs checks it); to move to a newer one: `crane digest <image:tag>` (or
# `docker buildx imagetools inspect`), then update the digest and the tag together.
FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
 && install -m 755 target/x86_64-unknown-linux-musl/release/proxmox-netbox-operator /proxmox-netbox-operator

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
COPY --from=build /proxmox-netbox-operator /proxmox-netbox-operator
USER 65532:65532
ENTRYPOINT ["/proxmox-netbox-operator"]
CMD ["run"]
