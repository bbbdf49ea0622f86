# Builds the toolmesh control plane and the filter (wasm) in one image.
# The Envoy container mounts the wasm from the shared volume (see docker-compose.yml).
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip1
COPY . .
RUN cargo build --release -p toolmesh -p toolmesh-test-servers \
 && cargo build -p toolmesh-filter --target wasm32-wasip1 --profile wasm-release

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/toolmesh /usr/local/bin/toolmesh
COPY --from=build /src/target/release/mcp-test-server /usr/local/bin/mcp-test-server
COPY --from=build /src/target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm /opt/toolmesh/toolmesh_filter.wasm
EXPOSE 8081 18000
ENTRYPOINT ["toolmesh"]
CMD ["serve"]
