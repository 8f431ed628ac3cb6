"""Reference images in an object store: `s3://bucket/key` (or `minio://bucket/key`, the same protocol) read by a
pipeline step, and a local file uploaded by `submit` so that a cluster's pods can read it.

boto3 takes the endpoint and credentials from the environment (`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`; on a cluster the `ostaf-s3` secret and `ostaf-s3-endpoint` map), never from arguments.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ostaf.errors import OstafError

SCHEMES = ("s3://", "minio://")


def is_object_uri(location: str) -> bool:
    return str(location).startswith(SCHEMES)


def split_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an `s3://` / `minio://` URI."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise OstafError(f"{uri} names no bucket: use s3://BUCKET/KEY")
    return bucket, key


def _client():
    import boto3

    return boto3.client("s3")


def download(uri: str, dest: str | Path) -> Path:
    """Fetch `uri` to the file `dest` (one clear error naming the URI when the store does not give it)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_uri(uri)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _client().download_file(bucket, key, str(dest))
    except (BotoCoreError, ClientError) as err:
        dest.unlink(missing_ok=True)
        raise OstafError(
            f"cannot read {uri} ({err.__class__.__name__}: {err}); check the object exists, AWS_ENDPOINT_URL_S3 "
            "and the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        ) from None
    return dest


def upload(path: str | Path, prefix: str) -> str:
    """Put the local file `path` under the `prefix` URI, named by its content (an upload is idempotent); its URI."""
    from botocore.exceptions import BotoCoreError, ClientError

    path = Path(path)
    bucket, key_prefix = split_uri(prefix.rstrip("/") + "/")
    name = f"{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}{path.suffix.lower()}"
    key = f"{key_prefix}{name}"
    try:
        _client().upload_file(str(path), bucket, key)
    except (BotoCoreError, ClientError) as err:
        raise OstafError(
            f"cannot upload {path} to {prefix} ({err.__class__.__name__}: {err}); check the bucket exists, "
            "AWS_ENDPOINT_URL_S3 and the credentials, or pass an s3:// URI the cluster can read as --image"
        ) from None
    return f"{prefix.split('://', 1)[0]}://{bucket}/{key}"
