"""infra/docker: the Dockerfile passes hadolint, and build.sh hands the engine the right build.

The image itself is built outside the tests (7.3 GB with the CUDA torch build; infra/README.md
has the command and the in-image run); here the script runs against a stand-in engine that
records its arguments, which is the boundary."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.image import DEFAULT_IMAGE

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
HADOLINT = str(Path(sys.executable).parent / "hadolint")


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True)


def test_dockerfile_passes_hadolint():
    done = hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_the_mistakes_it_should(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install torch\nUSER root\n")
    found = hadolint(bad).stdout
    for rule in ("DL3007", "DL3003", "DL3013", "DL3002"):  # latest tag, cd, unpinned pip, root user
        assert rule in found, found


def test_dockerfile_runs_as_non_root_and_bakes_no_weights():
    text = DOCKERFILE.read_text()
    assert "\nUSER 1000:1000\n" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in ("data/", "runs/", "mlruns/", ".venv/", "**/*.env"):
        assert path in ignored


@pytest.fixture()
def recording_engine(tmp_path):
    """A `podman` on PATH that records its arguments instead of building."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    engine = bin_dir / "podman"
    engine.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    engine.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"}
    env.pop("OSTAF_IMAGE", None)
    return env, log


def build(env, *args):
    return subprocess.run(
        ["bash", str(REPO / "infra" / "docker" / "build.sh"), *args], env=env, capture_output=True, text=True
    )


def test_build_script_tags_the_image_the_pipeline_compiles_in(recording_engine):
    env, log = recording_engine
    done = build(env, "--base", "local/python:3.11", "--mount", "/opt/wheels", "--extra-index", "file:///opt/wheels")
    assert done.returncode == 0, done.stderr
    call = log.read_text().split()
    assert call[0] == "build" and call[call.index("-t") + 1] == DEFAULT_IMAGE
    assert "--isolation" in call and call[call.index("--isolation") + 1] == "chroot"
    assert "BASE_IMAGE=local/python:3.11" in call and "PIP_EXTRA_INDEX_URL=file:///opt/wheels" in call
    assert "/opt/wheels:/opt/wheels:ro" in call
    assert call[-1] == str(REPO) and call[call.index("-f") + 1] == str(DOCKERFILE)


def test_build_script_takes_the_tag_from_the_environment_and_refuses_unknown_options(recording_engine):
    env, log = recording_engine
    assert build({**env, "OSTAF_IMAGE": "team/ostaf:7"}).returncode == 0
    assert "team/ostaf:7" in log.read_text().split()
    refused = build(env, "--bogus")
    assert refused.returncode == 2 and "unknown option --bogus" in refused.stderr


def test_image_tunes_the_allocator_like_the_commands_do():
    """The image's MALLOC_* settings are the ones `ostaf.allocator` applies in-process (one set of values)."""
    from ostaf.allocator import CPU_ALLOCATOR_ENV, tune_cpu_allocator

    text = DOCKERFILE.read_text()
    for key, value in CPU_ALLOCATOR_ENV.items():
        assert f"{key}={value}" in text
        assert 0 < int(value) < 2**31  # mallopt takes a C int
    assert tune_cpu_allocator() is True  # glibc on Linux: both settings accepted
