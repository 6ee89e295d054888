"""Storage URLs: which name a bucket (and through which scheme), which a local directory."""

from __future__ import annotations

CLOUD_SCHEMES = ("s3", "gs", "gcs", "az", "abfs")  # S3, Google Cloud Storage, Azure Blob


def is_directory_url(url: str) -> bool:
    return url.startswith("file://") or "://" not in url
