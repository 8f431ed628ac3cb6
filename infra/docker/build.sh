#!/usr/bin/env bash
# Build the component image with docker or podman.
#   infra/docker/build.sh [--base IMAGE] [--torch-index URL] [--tag NAME]
# The tag defaults to the image the pipeline compiles in (components/image.py, or $OSTAF_IMAGE).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
base="python:3.11-slim"
torch_index=""
tag="$(cd "$root" && python3 -c 'from components.image import IMAGE; print(IMAGE)')"
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base="$2"; shift 2 ;;
        --torch-index) torch_index="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        *) echo "unknown option $1 (use --base, --torch-index, --tag)" >&2; exit 2 ;;
    esac
done
engine="$(command -v podman || command -v docker || true)"
if [ -z "$engine" ]; then
    echo "neither podman nor docker is installed" >&2
    exit 2
fi
extra=()
if [ "$(basename "$engine")" = podman ]; then
    extra+=(--isolation chroot)  # builds without an OCI runtime (see ../shared/notes/mlops.md §4)
fi
exec "$engine" build "${extra[@]}" -f "$root/infra/docker/Dockerfile" \
    --build-arg "BASE_IMAGE=$base" --build-arg "TORCH_INDEX=$torch_index" -t "$tag" "$root"
