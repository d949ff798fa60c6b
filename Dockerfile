# Multi-stage build of the fleetflow binaries.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/fleetflow /src/target/release/fleetflow-sim /usr/local/bin/
COPY fleetflow.example.toml /etc/fleetflow/fleetflow.toml
EXPOSE 9464
ENTRYPOINT ["fleetflow", "--config", "/etc/fleetflow/fleetflow.toml"]
