"""Provider-signed URLs against real emulators: moto (S3), gcp-storage-emulator (GCS) and
Azurite (Azure Blob).

Azurite checks SAS tokens itself, so refusals are tested there. moto and the GCS emulator
accept any signature, so for them the test re-derives the V4 signature from the URL (HMAC
with the emulator's secret for S3, the service account's public key for GCS): that proves the
URL signs the method, the path, the content type and the expiry it claims.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, urlsplit, urlunsplit

import fsspec
import httpx
import pytest
from fsspec.implementations.dirfs import DirFileSystem

from baponi_core._storage.presign import PresignUnsupported, presign
from tests.emulators import Emulator, random_bytes

pytestmark = pytest.mark.slow  # the emulators (Azurite is a node process)

EXPIRES = 900  # what the Files API uses


@pytest.fixture(params=["s3", "gcs", "azure"])
def emulator(request: pytest.FixtureRequest) -> Emulator:
    return request.getfixturevalue(f"{request.param}_emulator")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, trust_env=False) as client:  # loopback only, no proxies
        yield client


def new_path(emu: Emulator, name: str = "hello world.txt") -> str:
    """A fresh full fsspec path ("bucket/prefix/dir/name"); spaces exercise URL quoting."""
    return f"{emu.bucket}/presign-{secrets.token_hex(4)}/dir/{name}"


def send_headers(headers: list[dict[str, str]]) -> dict[str, str]:
    return {h["name"]: h["value"] for h in headers}


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- every provider -----------------------------------------------------------------------


def test_presigned_get_fetches_the_object(emulator: Emulator, http: httpx.Client) -> None:
    fs = emulator.fs()
    path = new_path(emulator)
    body = random_bytes(2048)
    fs.pipe_file(path, body)

    url, headers = presign(fs, path, "GET", EXPIRES)

    assert headers == []
    assert url.startswith(emulator.endpoint + "/")
    response = http.get(url)
    assert response.status_code == 200, response.text
    assert response.content == body


def test_presigned_put_uploads_the_object(emulator: Emulator, http: httpx.Client) -> None:
    fs = emulator.fs()
    path = new_path(emulator, "upload me.csv")
    body = b"a,b\n1,2\n"
    # Not application/json: gcp-storage-emulator parses JSON bodies of signed PUTs and fails.
    url, headers = presign(fs, path, "PUT", EXPIRES, content_type="text/csv")

    sent = send_headers(headers)
    assert sent["Content-Type"] == "text/csv"
    if emulator.protocol == "az":
        assert sent["x-ms-blob-type"] == "BlockBlob"
    assert url.startswith(emulator.endpoint + "/")
    response = http.put(url, content=body, headers=sent)
    assert response.status_code in (200, 201), response.text
    fs.invalidate_cache()
    assert fs.cat_file(path) == body


def test_memory_filesystem_cannot_presign() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/presign/x.txt", b"x")
    with pytest.raises(PresignUnsupported):
        presign(fs, "/presign/x.txt", "GET", EXPIRES)


def test_bad_arguments_are_refused(s3_emulator: Emulator) -> None:
    fs = s3_emulator.fs()
    path = new_path(s3_emulator)
    for expires in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="expires_s"):
            presign(fs, path, "GET", expires)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        presign(fs, path, "DELETE", EXPIRES)  # type: ignore[arg-type]


# --- S3: SigV4, verified by re-deriving the signature ---------------------------------------


def canonical_request(url: str, method: str, headers: dict[str, str], algo_prefix: str) -> str:
    """The V4 canonical request of a query-signed URL (AWS SigV4 and GCS V4 share it)."""
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query) if k != f"{algo_prefix}-Signature"]
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params)
    )
    signed = dict(params)[f"{algo_prefix}-SignedHeaders"].split(";")
    values = {"host": parts.netloc, **{k.lower(): v.strip() for k, v in headers.items()}}
    canonical_headers = "".join(f"{name}:{values[name]}\n" for name in signed)
    return "\n".join(
        [
            method,
            parts.path,
            canonical_query,
            canonical_headers,
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )


def string_to_sign(url: str, method: str, headers: dict[str, str], prefix: str) -> bytes:
    q = query(url)
    scope = q[f"{prefix}-Credential"].split("/", 1)[1]
    digest = hashlib.sha256(canonical_request(url, method, headers, prefix).encode()).hexdigest()
    return "\n".join([q[f"{prefix}-Algorithm"], q[f"{prefix}-Date"], scope, digest]).encode()


def sigv4_valid(url: str, method: str, headers: dict[str, str], secret: str) -> bool:
    scope = query(url)["X-Amz-Credential"].split("/")[1:]  # date, region, service, request
    key = f"AWS4{secret}".encode()
    for part in scope:
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(
        key, string_to_sign(url, method, headers, "X-Amz"), hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, query(url)["X-Amz-Signature"])


def test_s3_urls_are_sigv4_with_exact_expiry(s3_emulator: Emulator) -> None:
    fs = s3_emulator.fs()
    path = new_path(s3_emulator)
    secret = s3_emulator.options["secret"]

    get_url, _ = presign(fs, path, "GET", EXPIRES)
    put_url, put_headers = presign(fs, path, "PUT", EXPIRES, content_type="text/plain", size=11)

    for url in (get_url, put_url):
        q = query(url)
        assert q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
        assert q["X-Amz-Expires"] == str(EXPIRES)
        assert urlsplit(url).path == "/" + quote(path)
        assert "Signature" not in q and "AWSAccessKeyId" not in q  # no SigV2 leftovers
    assert query(get_url)["X-Amz-SignedHeaders"] == "host"
    assert query(put_url)["X-Amz-SignedHeaders"] == "content-length;content-type;host"

    sent = send_headers(put_headers)
    assert sent == {"Content-Type": "text/plain", "Content-Length": "11"}
    assert sigv4_valid(get_url, "GET", {}, secret)
    assert sigv4_valid(put_url, "PUT", sent, secret)
    # The signature binds the method, the content type, the length and the path.
    assert not sigv4_valid(get_url, "PUT", {}, secret)
    assert not sigv4_valid(put_url, "PUT", {**sent, "Content-Type": "text/html"}, secret)
    assert not sigv4_valid(put_url, "PUT", {**sent, "Content-Length": "12"}, secret)
    assert not sigv4_valid(put_url.replace("hello%20world", "hello%20worle"), "PUT", sent, secret)


def test_s3_filesystem_without_v4_config_still_signs_v4(s3_emulator: Emulator) -> None:
    options = {k: v for k, v in s3_emulator.options.items() if k != "config_kwargs"}
    fs = fsspec.filesystem("s3", **options)
    path = new_path(s3_emulator)

    url, _ = presign(fs, path, "GET", EXPIRES)

    assert query(url)["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert sigv4_valid(url, "GET", {}, s3_emulator.options["secret"])


# --- GCS: V4, verified with the service account's public key --------------------------------


def gcs_v4_valid(url: str, method: str, headers: dict[str, str], key_file: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    pem = json.loads(Path(key_file).read_text())["private_key"].encode()
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    signature = bytes.fromhex(query(url)["X-Goog-Signature"])
    message = string_to_sign(url, method, headers, "X-Goog")
    try:
        private.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def test_gcs_urls_are_v4_with_exact_expiry(gcs_emulator: Emulator) -> None:
    fs = gcs_emulator.fs()
    path = new_path(gcs_emulator)
    key_file = gcs_emulator.options["token"]

    get_url, _ = presign(fs, path, "GET", EXPIRES)
    put_url, put_headers = presign(fs, path, "PUT", EXPIRES, content_type="text/plain", size=11)

    for url in (get_url, put_url):
        q = query(url)
        assert q["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
        assert q["X-Goog-Expires"] == str(EXPIRES)
        assert urlsplit(url).path == "/" + quote(path)
    assert query(get_url)["X-Goog-SignedHeaders"] == "host"
    assert query(put_url)["X-Goog-SignedHeaders"] == "content-type;host;x-goog-content-length-range"

    sent = send_headers(put_headers)
    assert sent == {"Content-Type": "text/plain", "x-goog-content-length-range": "11,11"}
    assert gcs_v4_valid(get_url, "GET", {}, key_file)
    assert gcs_v4_valid(put_url, "PUT", sent, key_file)
    assert not gcs_v4_valid(get_url, "PUT", {}, key_file)
    assert not gcs_v4_valid(put_url, "PUT", {**sent, "Content-Type": "text/html"}, key_file)
    wider = {**sent, "x-goog-content-length-range": "0,1000000"}
    assert not gcs_v4_valid(put_url, "PUT", wider, key_file)


def test_gcs_anonymous_filesystem_cannot_presign(gcs_emulator: Emulator) -> None:
    fs = fsspec.filesystem("gs", endpoint_url=gcs_emulator.endpoint, token="anon")
    with pytest.raises(PresignUnsupported):
        presign(fs, new_path(gcs_emulator), "GET", EXPIRES)


# --- Azure: Azurite checks the SAS ----------------------------------------------------------


def sas_expiry(url: str) -> float:
    return datetime.strptime(query(url)["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@pytest.fixture()
def blob(azure_emulator: Emulator) -> tuple[Any, str]:
    fs = azure_emulator.fs()
    path = new_path(azure_emulator)
    fs.pipe_file(path, b"azure bytes")
    return fs, path


def test_azure_sas_expiry_is_exact(blob: tuple[Any, str]) -> None:
    fs, path = blob
    before = time.time()
    url, _ = presign(fs, path, "GET", EXPIRES)
    # "se" has whole seconds: expect before + 900, truncated.
    assert before + EXPIRES - 1 <= sas_expiry(url) <= time.time() + EXPIRES
    assert query(url)["sp"] == "r"
    assert query(presign(fs, path, "PUT", EXPIRES)[0])["sp"] == "cw"


def test_azure_refuses_a_tampered_signature(blob: tuple[Any, str], http: httpx.Client) -> None:
    fs, path = blob
    url, _ = presign(fs, path, "GET", EXPIRES)
    parts = urlsplit(url)
    params = parse_qsl(parts.query)
    sig = dict(params)["sig"]
    forged = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    params = [(k, forged if k == "sig" else v) for k, v in params]
    tampered = urlunsplit(
        parts._replace(query="&".join(f"{k}={quote(v, safe='')}" for k, v in params))
    )

    assert http.get(url).status_code == 200
    assert http.get(tampered).status_code == 403


def test_azure_refuses_an_expired_sas(blob: tuple[Any, str], http: httpx.Client) -> None:
    fs, path = blob
    url, _ = presign(fs, path, "GET", 1)
    time.sleep(max(0.0, sas_expiry(url) - time.time()) + 1.5)
    assert http.get(url).status_code == 403


def test_azure_refuses_a_get_sas_for_put(blob: tuple[Any, str], http: httpx.Client) -> None:
    fs, path = blob
    url, _ = presign(fs, path, "GET", EXPIRES)
    headers = {"x-ms-blob-type": "BlockBlob", "Content-Type": "text/plain"}
    assert http.put(url, content=b"overwrite", headers=headers).status_code == 403
    assert fs.cat_file(path) == b"azure bytes"


def test_azure_refuses_a_put_sas_for_another_blob(
    blob: tuple[Any, str], azure_emulator: Emulator, http: httpx.Client
) -> None:
    fs, path = blob
    url, headers = presign(fs, path, "PUT", EXPIRES, content_type="text/plain")
    other = new_path(azure_emulator, "other.txt")
    parts = urlsplit(url)
    moved = urlunsplit(parts._replace(path=parts.path.replace(quote(path), quote(other))))
    assert moved != url

    response = http.put(moved, content=b"sneaky", headers=send_headers(headers))

    assert response.status_code == 403
    assert not fs.exists(other)


def test_azure_presigns_through_a_prefix_filesystem(
    blob: tuple[Any, str], http: httpx.Client
) -> None:
    fs, path = blob
    prefix, name = path.rsplit("/", 1)
    url, _ = presign(DirFileSystem(path=prefix, fs=fs), name, "GET", EXPIRES)
    response = http.get(url)
    assert response.status_code == 200
    assert response.content == b"azure bytes"
