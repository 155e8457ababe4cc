#!/usr/bin/env bash
# Build the base image the Dockerfiles start FROM (default python:3.11-slim) when no registry can
# supply it: a minimal Debian bookworm made with debootstrap, with Python 3.11, venv, pip and the
# host's extra CA certificates (HTTPS from inside a container may pass through a proxy that signs
# with them), imported with `docker import`. Does nothing when the image is already there.
set -euo pipefail
IMAGE="${1:-${BASE_IMAGE:-python:3.11-slim}}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE: present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
root="$(mktemp -d /var/tmp/maskdet-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "base image $IMAGE: building with debootstrap from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1 \
  bookworm "$root" "$MIRROR" >/dev/null
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null
fi
ln -sf python3 "$root/usr/bin/python"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1' \
  --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "base image $IMAGE: built ($(docker image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec))"
