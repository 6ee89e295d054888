"""Provider-signed URLs for object stores reached through fsspec (S3, GCS, Azure Blob).

The client talks to the provider directly with the URL, so the bytes never pass through
this server. Filesystems, or credentials, that cannot sign (memory, local disk, anonymous
access...) raise ``PresignUnsupported``, which the cloud backend answers as a 503 "storage
cannot sign URLs"; there is no fallback.

``presign`` is synchronous: call it from a worker thread (``anyio.to_thread.run_sync``) with a
filesystem created in the default synchronous mode (not ``asynchronous=True``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import fsspec
from fsspec.implementations.dirfs import DirFileSystem

from baponi_core._storage.signing import Method

Headers = list[dict[str, str]]

S3_PROTOCOLS = frozenset({"s3", "s3a"})
GCS_PROTOCOLS = frozenset({"gs", "gcs"})
AZURE_PROTOCOLS = frozenset({"az", "abfs", "abfss"})


class PresignUnsupported(NotImplementedError):
    """The filesystem (or its credentials) cannot produce a provider-signed URL."""


def presign(
    fs: fsspec.AbstractFileSystem,
    path: str,
    method: Method,
    expires_s: int,
    content_type: str | None = None,
    size: int | None = None,
) -> tuple[str, Headers]:
    """A provider-signed URL for ``path`` (a full fsspec path, e.g. "bucket/prefix/file" for
    s3fs/gcsfs, "container/prefix/file" for adlfs) and the headers the client must send with
    it (list of {"name","value"} dicts, the shape of the Files API).

    The URL is valid for exactly ``expires_s`` seconds. For PUT, ``content_type`` (when given)
    is signed where the provider allows it and always returned as a header to send, and
    ``size`` (when given) is bound on S3 (a signed Content-Length) and GCS (a signed
    x-goog-content-length-range), so the provider refuses any other length. An Azure SAS
    cannot bind a length.
    """
    if method not in ("GET", "PUT"):
        raise ValueError(f"method must be GET or PUT, not {method!r}")
    if isinstance(expires_s, bool) or not isinstance(expires_s, int) or expires_s <= 0:
        raise ValueError(f"expires_s must be a positive integer, not {expires_s!r}")
    fs, path = _unwrap(fs, path)
    protocols = _protocols(fs)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be a non-negative integer, not {size!r}")
    if protocols & S3_PROTOCOLS:
        return _presign_s3(fs, path, method, expires_s, content_type, size)
    if protocols & GCS_PROTOCOLS:
        return _presign_gcs(fs, path, method, expires_s, content_type, size)
    if protocols & AZURE_PROTOCOLS:
        return _presign_azure(fs, path, method, expires_s, content_type)
    raise PresignUnsupported(f"{type(fs).__name__} ({'/'.join(sorted(protocols))}) cannot sign")


def binds_size(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether an upload URL of ``fs``'s provider can be held to one exact size."""
    return bool(_protocols(_unwrap(fs, "")[0]) & (S3_PROTOCOLS | GCS_PROTOCOLS))


def _unwrap(fs: fsspec.AbstractFileSystem, path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """A prefix-scoped DirFileSystem signs through the filesystem it wraps."""
    while isinstance(fs, DirFileSystem):
        path = fs._join(path)
        fs = fs.fs
    return fs, path


def _protocols(fs: fsspec.AbstractFileSystem) -> frozenset[str]:
    proto = fs.protocol
    return frozenset([proto] if isinstance(proto, str) else proto)


def _content_headers(content_type: str | None) -> Headers:
    return [] if content_type is None else [{"name": "Content-Type", "value": content_type}]


# --- S3 ------------------------------------------------------------------------------------


def _presign_s3(
    fs: Any, path: str, method: Method, expires_s: int, content_type: str | None, size: int | None
) -> tuple[str, Headers]:
    signer = _s3v4(fs)
    if method == "GET":
        url = signer.sign(path, expiration=expires_s, client_method="get_object")
        return str(url), []
    params: dict[str, Any] = {} if content_type is None else {"ContentType": content_type}
    headers = _content_headers(content_type)
    if size is not None:  # signed: S3 refuses a body of any other length
        params["ContentLength"] = size
        headers.append({"name": "Content-Length", "value": str(size)})
    url = signer.sign(path, expiration=expires_s, client_method="put_object", **params)
    return str(url), headers


def _s3v4(fs: Any) -> Any:
    """``fs`` itself when it signs with SigV4, else a twin that does.

    botocore still presigns with SigV2 (``AWSAccessKeyId&Signature&Expires``) unless the
    client was made with ``config_kwargs={"signature_version": "s3v4"}``; SigV2 is refused
    by most regions and cannot bind a Content-Type. The twin has the same storage options
    plus that setting; fsspec caches instances, so it is built once per configuration.
    """
    config = dict(getattr(fs, "config_kwargs", None) or {})
    if config.get("signature_version") == "s3v4":
        return fs
    options = dict(fs.storage_options)
    options["config_kwargs"] = {**config, "signature_version": "s3v4"}
    options["asynchronous"] = False
    return type(fs)(**options)


# --- GCS -----------------------------------------------------------------------------------


def _presign_gcs(
    fs: Any, path: str, method: Method, expires_s: int, content_type: str | None, size: int | None
) -> tuple[str, Headers]:
    _require_gcs_signer(fs)
    if method == "GET":
        return str(fs.sign(path, expiration=expires_s, version="v4", method=method)), []
    extra: dict[str, Any] = {} if content_type is None else {"content_type": content_type}
    headers = _content_headers(content_type)
    if size is not None:  # signed: GCS refuses a body outside the range
        bound = {"name": "x-goog-content-length-range", "value": f"{size},{size}"}
        extra["headers"] = {bound["name"]: bound["value"]}
        headers.append(bound)
    url = fs.sign(path, expiration=expires_s, version="v4", method=method, **extra)
    return str(url), headers


def _require_gcs_signer(fs: Any) -> None:
    """Refuse early instead of letting google-cloud-storage go looking for default
    credentials (the metadata server) or fail deep inside with an AttributeError."""
    from google.auth.credentials import Signing

    holder = getattr(fs, "credentials", None)
    creds = getattr(holder, "credentials", None)
    if creds is None:
        raise PresignUnsupported("anonymous GCS access cannot sign URLs")
    if not isinstance(creds, Signing):
        raise PresignUnsupported(
            f"GCS credentials {type(creds).__name__} cannot sign; use a service account"
        )


# --- Azure Blob ----------------------------------------------------------------------------


def _presign_azure(
    fs: Any, path: str, method: Method, expires_s: int, content_type: str | None
) -> tuple[str, Headers]:
    # adlfs's own sign() hard-codes a read-only SAS, so build the SAS ourselves.
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    container, blob, version_id = fs.split_path(path)
    if not container or not blob:
        raise ValueError(f"{path!r} does not name a blob (container/blob)")
    account_name, account_key = _azure_shared_key(fs)
    if method == "GET":
        permission = BlobSasPermissions(read=True)
    else:
        permission = BlobSasPermissions(create=True, write=True)
        version_id = None  # an upload makes a new version; it cannot target an old one
    sas = generate_blob_sas(
        account_name=account_name,
        container_name=container,
        blob_name=blob,
        account_key=account_key,
        permission=permission,
        expiry=datetime.now(UTC) + timedelta(seconds=expires_s),
        version_id=version_id,
    )
    url = f"{_azure_blob_url(fs, container, blob)}?{sas}"
    if version_id is not None:
        url += f"&versionid={quote(version_id, safe='')}"
    if method == "GET":
        return url, []
    return url, [{"name": "x-ms-blob-type", "value": "BlockBlob"}, *_content_headers(content_type)]


def _azure_shared_key(fs: Any) -> tuple[str, str]:
    """The account name and key the filesystem authenticates with.

    The service client's shared-key policy covers every way adlfs accepts a key (connection
    string, account_key, AZURE_STORAGE_* variables); the fs attributes are the fallback.
    """
    policy = getattr(getattr(fs, "service_client", None), "credential", None)
    name = getattr(policy, "account_name", None) or getattr(fs, "account_name", None)
    key = getattr(policy, "account_key", None) or getattr(fs, "account_key", None)
    if not isinstance(name, str) or not isinstance(key, str) or not name or not key:
        raise PresignUnsupported(
            "Azure presigning needs the account key (connection string or account_key); "
            "SAS-token and Entra ID credentials cannot sign a blob SAS"
        )
    return name, key


def _azure_blob_url(fs: Any, container: str, blob: str) -> str:
    """The blob's URL on the account endpoint the filesystem uses (Azurite included:
    http://127.0.0.1:PORT/devstoreaccount1/...), quoted like the Azure SDK quotes it."""
    endpoint = urlsplit(fs.service_client.primary_endpoint)
    base = f"{endpoint.scheme}://{endpoint.netloc}{endpoint.path.rstrip('/')}"
    return f"{base}/{quote(container)}/{quote(blob, safe='~/')}"
