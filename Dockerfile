# syntax=docker/dockerfile:1
# Two images from one file, each installing edgerec as the README does (pip, one extra):
#
#   docker build --target node -t edgerec-node .   # node daemon + supervised edge server ("edgerec[node,otel]")
#   docker build --target sync -t edgerec-sync .   # sync service ("edgerec[sync,postgres,otel,s3]")
#
# Both run as an unprivileged user with their state under /var/lib/edgerec (a volume), take
# secrets from files (token files, PGPASSFILE), never from the command line, and stop on SIGTERM.
FROM python:3.11-slim-bookworm AS source
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk sdk
COPY converter converter
COPY edge_server edge_server
COPY sync sync
COPY examples examples

FROM source AS node
RUN python -m pip install ".[node,otel]" \
 && useradd --system --uid 10001 --home-dir /var/lib/edgerec --create-home --shell /usr/sbin/nologin edgerec \
 && rm -rf /src
USER edgerec
WORKDIR /var/lib/edgerec
VOLUME /var/lib/edgerec
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgerec"]
# Enroll once first (docker compose run, see compose.yaml), then this runs for good.
CMD ["node", "run", "--state-dir", "/var/lib/edgerec/node", "--model-dir", "/var/lib/edgerec/models", "--serve", "--serve-host", "0.0.0.0", "--serve-port", "8080"]

FROM source AS sync
RUN python -m pip install ".[sync,postgres,otel,s3]" \
 && useradd --system --uid 10001 --home-dir /var/lib/edgerec --create-home --shell /usr/sbin/nologin edgerec \
 && rm -rf /src
USER edgerec
WORKDIR /var/lib/edgerec
VOLUME /var/lib/edgerec
EXPOSE 8470
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgerec"]
CMD ["sync", "serve", "--data-dir", "/var/lib/edgerec/sync", "--host", "0.0.0.0", "--port", "8470", "--workers", "2"]
