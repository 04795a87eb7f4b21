# syntax=docker/dockerfile:1
#
# signet in a container: `signet serve` as a non-root user on Debian 12.
#
#   docker build -t signet .
#   docker run --rm -p 8443:8443 \
#     -v /srv/signet/etc:/etc/signet:ro \
#     -v signet-data:/var/lib/signet -v signet-logs:/var/log/signet \
#     signet
#
# The configuration directory is mounted read-only (signet.toml, pki/, the
# HSM profile and its PIN file, mode 0600, owned by uid 10001). The key
# device comes from outside: a network HSM's PKCS#11 client mounted in (its
# module path as the profile names it), or a TPM with
#   --device /dev/tpmrm0 --group-add "$(getent group tss | cut -d: -f3)"
# SoftHSM2 (development only: its keys are files) is left out of the image
# unless asked for: --build-arg EXTRA_PACKAGES=softhsm2.
#
# packaging/README.md has the details; tests/packaging.rs checks this file
# against the repository (paths, features, libraries, port, user).

ARG RUST_VERSION=1.95

# ---- build ----
FROM rust:${RUST_VERSION}-bookworm AS build
# tss-esapi links libtss2-esys/-mu/-sys/-tctildr, found with pkg-config.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libtss2-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo reads every target of the manifest, benches included.
COPY benches ./benches
# Compiled in with include_str!/include_bytes!: the MDS and Android
# attestation roots and the OpenAPI document served at /v1/openapi.json.
COPY certs ./certs
COPY docs/openapi.json ./docs/openapi.json
# The PostgreSQL schema, compiled into the binary (signet store migrate).
COPY migrations ./migrations
# Production builds use the default features (none): testkit adds the
# device simulator and the soft authenticator, which have no place here.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin signet \
 && install -D -m 0755 target/release/signet /out/signet

# ---- runtime ----
FROM debian:bookworm-slim
ARG EXTRA_PACKAGES=""
# Exactly the shared libraries signet links (ldd): libtss2-esys, -mu, -sys,
# -tctildr and OpenSSL's libcrypto (through libtss2-esys); libc6 and
# libgcc-s1 are in the base image. libtss2-tcti-device0 is the TCTI that
# tctildr dlopen()s for tcti = "device:/dev/tpmrm0" (a dependency of
# libtss2-esys on Debian, named so that it stays). ca-certificates: the
# system roots the MDS download (rustls-native-certs) trusts.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates \
      libssl3 \
      libtss2-esys-3.0.2-0 \
      libtss2-mu0 \
      libtss2-sys1 \
      libtss2-tctildr0 \
      libtss2-tcti-device0 \
      ${EXTRA_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid, so that mounted files can be owned by it on the host.
RUN groupadd --system --gid 10001 signet \
 && useradd --system --uid 10001 --gid signet --home-dir /var/lib/signet \
      --shell /usr/sbin/nologin signet \
 && install -d -m 0750 -o root -g signet /etc/signet \
 && install -d -m 0700 -o signet -g signet /var/lib/signet /var/lib/signet/data /var/log/signet
COPY --from=build /out/signet /usr/bin/signet
COPY signet.example.toml /usr/share/doc/signet/signet.example.toml
COPY hsm-profiles/templates /usr/share/doc/signet/hsm-profiles/templates
COPY packaging/README.md /usr/share/doc/signet/packaging.md

# signet.example.toml listens on 127.0.0.1:8443, which no one outside the
# container reaches: listen on every interface of the container's own
# network namespace instead. Set SIGNET_LISTEN= (empty) to use the file's.
ENV SIGNET_LISTEN=0.0.0.0:8443
EXPOSE 8443
# The store (store.data_dir = "/var/lib/signet/data"), and the trust policy
# that PUT /v1/policy rewrites; the verification log
# (transactions.verification_log = "/var/log/signet/verification.jsonl").
VOLUME ["/var/lib/signet", "/var/log/signet"]
USER signet
WORKDIR /var/lib/signet
# SIGTERM drains in-flight requests (server.shutdown_grace_ms, 30 s by
# default), checkpoints the audit log and flushes the store: give
# `docker stop` more time than that (docker stop -t 45, or
# stop_grace_period: 45s in compose).
STOPSIGNAL SIGTERM
# No HEALTHCHECK: every route needs a client certificate (mutual TLS only).
# Orchestrators probe /readyz with a certificate of the monitor role.
ENTRYPOINT ["/usr/bin/signet"]
CMD ["serve", "--config", "/etc/signet/signet.toml"]
