#!/usr/bin/env bash
# Build the component image with podman or docker.
#
#   infra/docker/build.sh [--base IMAGE | --debootstrap] [--torch-index URL] [--extra-index URL]
#                         [--mount DIR]... [--tag NAME]
#
#   --base IMAGE       the base image (default python:3.11-slim; for GPUs a CUDA runtime image with python3.11)
#   --debootstrap      make a Debian bookworm base here with mmdebstrap (no registry needed) and use it
#   --torch-index URL  wheel index for torch/torchvision (a CPU or CUDA build)
#   --extra-index URL  extra package index for pip (a mirror, or a wheel folder given with --mount)
#   --mount DIR        bind DIR read-only into the build at the same path (podman only)
#   --tag NAME         default: the image the pipeline compiles in (components/image.py, or $OSTAF_IMAGE)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
base="python:3.11-slim"
debootstrap=0
torch_index=""
extra_index=""
mounts=()
tag="$(cd "$root" && python3 -c 'from components.image import IMAGE; print(IMAGE)')"
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base="$2"; shift 2 ;;
        --debootstrap) debootstrap=1; shift ;;
        --torch-index) torch_index="$2"; shift 2 ;;
        --extra-index) extra_index="$2"; shift 2 ;;
        --mount) mounts+=(-v "$2:$2:ro"); shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
engine="$(command -v podman || command -v docker || true)"
if [ -z "$engine" ]; then
    echo "neither podman nor docker is installed (Debian: apt-get install podman)" >&2
    exit 2
fi
extra=()
if [ "$(basename "$engine")" = podman ]; then
    extra+=(--isolation chroot --format docker)  # no OCI runtime needed; docker format keeps SHELL
    # pip in the build trusts what this machine trusts (needed behind a TLS-inspecting proxy)
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        extra+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    fi
    extra+=("${mounts[@]}")
elif [ ${#mounts[@]} -gt 0 ]; then
    echo "--mount needs podman (docker build cannot bind folders into RUN steps)" >&2
    exit 2
fi
if [ "$debootstrap" = 1 ]; then
    base="localhost/ostaf-base:bookworm"
    if ! "$engine" image exists "$base" 2>/dev/null; then
        command -v mmdebstrap >/dev/null || { echo "--debootstrap needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 2; }
        rootfs="$(mktemp -d)/bookworm.tar"
        echo "making $base with mmdebstrap" >&2
        mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs"
        "$engine" import "$rootfs" "$base"
        rm -rf "$(dirname "$rootfs")"
    fi
fi
exec "$engine" build "${extra[@]}" -f "$root/infra/docker/Dockerfile" \
    --build-arg "BASE_IMAGE=$base" --build-arg "TORCH_INDEX=$torch_index" \
    --build-arg "PIP_EXTRA_INDEX_URL=$extra_index" -t "$tag" "$root"
