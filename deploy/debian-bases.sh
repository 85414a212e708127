#!/usr/bin/env bash
# Base images built from Debian's own packages, for a machine that reaches Debian's archive but no image
# registry. They stand in for python:3.11-slim-bookworm and prom/prometheus in deploy/smoke.sh:
#
#   bash deploy/debian-bases.sh [PYTHON_TAG] [PROMETHEUS_TAG]
#   bash deploy/smoke.sh --cpu-base local/python:3.11-bookworm --prometheus-image local/prometheus:bookworm ...
#
# Needs root, mmdebstrap and a Docker engine. Each image is skipped when its tag already exists. The host's own
# extra CA certificates (/usr/local/share/ca-certificates) go into the Python base, so that pip inside a build
# trusts what the host trusts (a proxy that re-signs TLS, say).
# shellcheck disable=SC2016  # the hooks' "$1" is mmdebstrap's (the root being built): single quotes
set -euo pipefail
PYTHON_TAG="${1:-local/python:3.11-bookworm}"
PROMETHEUS_TAG="${2:-local/prometheus:bookworm}"
SUITE=bookworm # Python 3.11, as in python:3.11-slim-bookworm

has_image() { docker image inspect "$1" >/dev/null 2>&1; }

# minbase and no Recommends: no compiler, no pip outside the venv (python3-venv brings pip's wheel for venvs).
if ! has_image "$PYTHON_TAG"; then
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --customize-hook='for c in /usr/local/share/ca-certificates/*.crt; do [ ! -f "$c" ] || cp "$c" "$1/usr/local/share/ca-certificates/"; done' \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
    --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/*' \
    "$SUITE" - |
    docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$PYTHON_TAG"
fi

# Laid out as the official image: the binary as entrypoint, data in /prometheus owned by nobody, run as nobody.
if ! has_image "$PROMETHEUS_TAG"; then
  mmdebstrap --variant=minbase --include=prometheus,ca-certificates \
    --customize-hook='mkdir -p "$1/prometheus" && chown 65534:65534 "$1/prometheus"' \
    --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/*' \
    "$SUITE" - |
    docker import -c 'USER nobody' -c 'WORKDIR /prometheus' -c 'EXPOSE 9090' \
      -c 'ENTRYPOINT ["/usr/bin/prometheus"]' \
      -c 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' \
      - "$PROMETHEUS_TAG"
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(${PYTHON_TAG}|${PROMETHEUS_TAG}) " || true
