"""Where a benchmark comes from: a folder, a registered group's references, or a DVC remote.

This is the steps layer's business (the pipeline's select step and the CLI that feeds it);
the manifest schema in `ostaf.benchmark` never talks to DVC.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ostaf import groups
from ostaf.benchmark import MANIFEST
from ostaf.errors import OstafError
from ostaf.io import atomic_dir


def pull(source: str) -> Path:
    """The benchmark folder behind `source`: a folder holding manifest.yaml; the name of a registered group's
    source (e.g. ``world``: held-out Attribute World references, written once into a temporary folder); or
    ``dvc:<repo>[@<remote>]``, which fetches the data from that repository's default remote (or the one named)
    into DVC's cache and only then checks it out, so a failed transfer never leaves a partial ``data/``."""
    group = groups.of_source(source)
    if group is not None:
        folder = Path(tempfile.gettempdir()) / f"ostaf-{group.name}-benchmark-v{group.version}"
        return folder if (folder / MANIFEST).is_file() else atomic_dir(folder, group.write_benchmark)
    if not source.startswith("dvc:"):
        return Path(source)
    repo, _, remote = source.removeprefix("dvc:").partition("@")
    remote_args = ["-r", remote] if remote else []
    fetched = _dvc(repo, "fetch", *remote_args)
    if fetched.returncode != 0:
        raise OstafError(
            f"`dvc fetch` from {describe_remote(repo, remote)} failed; data/ was left as it was. Check that the "
            f"remote is reachable and its credentials (AWS_* environment variables for s3): "
            f"{_last_line(fetched.stderr)}"
        )
    data = Path(repo) / "data"
    existed = data.exists()
    checked = _dvc(repo, "checkout")
    if checked.returncode != 0:  # files the fetch did not bring (DVC reports that at checkout)
        if not existed:
            shutil.rmtree(data, ignore_errors=True)  # no partial data/
        raise OstafError(
            f"the benchmark is not complete after `dvc fetch` from {describe_remote(repo, remote)}: check that the "
            f"remote holds the data (`dvc push` to it) and is reachable; data/ was left as it was: "
            f"{_last_line(checked.stderr)}"
        )
    return data / "attribute-benchmark"


def default_source(model: str, repo: str | Path) -> str:
    """The benchmark a run on `model` uses unless told: its group's references (the world model), else DVC."""
    group = groups.of_model(model)
    return group.source if group else f"dvc:{repo}"


def _dvc(repo: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-400:] if lines else "(no message)"


def describe_remote(repo: str, remote: str = "") -> str:
    """'remote NAME (URL)' as DVC resolves it, for error messages."""
    listed = _dvc(repo, "remote", "list")
    remotes = {parts[0]: parts[1] for parts in map(str.split, listed.stdout.splitlines()) if len(parts) >= 2}
    if not remote:
        default = _dvc(repo, "remote", "default")
        remote = default.stdout.strip() or "(no default remote)"
    return f"remote {remote} ({remotes.get(remote, 'not configured')})"


def digest(source: str, folder: str | Path) -> str:
    """The benchmark's version: the DVC hash of the data (`data.dvc`) for a dvc: source, else the manifest's own
    hash (32 hex digits)."""
    if source.startswith("dvc:"):
        from ostaf.tracking import provenance_tags

        repo = source.removeprefix("dvc:").partition("@")[0]
        found = provenance_tags(repo).get("dvc_data_md5")
        if found:
            return found
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()[:32]
