# warmline container image. Not built by CI (no Docker engine on the CI machine); kept plain.
# Build: docker build -t warmline .
# Run:   docker run -p 8080:8080 -v warmline-data:/data \
#          -e WARMLINE_PUBLIC_URL=https://voice.example.com \
#          -e WARMLINE_TWILIO__AUTH_TOKEN=... -e WARMLINE_OPENAI__API_KEY=... warmline
# Recordings in a bucket: add -e WARMLINE_RECORDING__STORE=s3://bucket/prefix
#          -e AWS_REGION=... -e AWS_ACCESS_KEY_ID=... -e AWS_SECRET_ACCESS_KEY=...

FROM rust:1.95-bookworm AS build
# libopus for call recordings (audiopus links it; found with pkg-config).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopus-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Without the default `sim` feature: no simulators, no `demo` or `loadgen` subcommands.
RUN cargo build --release --locked --no-default-features --bin warmline

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libopus0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin warmline \
 && mkdir -p /data && chown warmline /data
COPY --from=build /src/target/release/warmline /usr/local/bin/warmline
USER warmline
WORKDIR /data
VOLUME ["/data"]
ENV WARMLINE_SERVER__LISTEN=0.0.0.0:8080 \
    WARMLINE_DATABASE__URL=sqlite:///data/warmline.db?mode=rwc \
    WARMLINE_LOG__FORMAT=json
EXPOSE 8080
# Liveness: `warmline healthcheck` asks this process's /healthz (no curl in the image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["warmline", "healthcheck"]
ENTRYPOINT ["warmline"]
CMD ["serve"]
