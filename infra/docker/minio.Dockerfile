# MinIO server + mc client for docker-compose.yml, built from source with `go install` at the versions pinned in
# conf/versions.env (the ones the tests run, scripts/fetch_minio.sh, and the Ansible minio role deploy).
# Build context: the repository root.
ARG GO_IMAGE=golang:1.24-bookworm
FROM ${GO_IMAGE} AS build
COPY conf/versions.env /versions.env
RUN set -eu; . /versions.env; \
    CGO_ENABLED=0 GOFLAGS=-trimpath GOBIN=/out go install "github.com/minio/minio@${MINIO_VERSION}"; \
    CGO_ENABLED=0 GOFLAGS=-trimpath GOBIN=/out go install "github.com/minio/mc@${MC_VERSION}"; \
    cp /versions.env /out/versions.env

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/minio /out/mc /usr/local/bin/
COPY --from=build /out/versions.env /etc/minio-versions.env
ENV MINIO_UPDATE=off
EXPOSE 9000 9001
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/minio"]
