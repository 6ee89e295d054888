"""Wire models: what requests may carry and what responses look like.

Validation mirrors the official SDK's ``validate_execute_params`` message for
message, so a client sees the same words whether it checks locally or not.
"""

from __future__ import annotations

import time
import urllib.parse
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from baponi_core import _limits as limits
from baponi_core._errors import ValidationError
from baponi_core._net.addresses import literal
from baponi_core._net.names import normal_name
from baponi_core._records import DeliveryMode, Execution, ExecutionStatus, WebhookStatus
from baponi_core._storage.paths import MAX_PATH_BYTES


def _schema(**facts: Any) -> Any:
    """Facts for the JSON schema only (the OpenAPI document's). The validators enforce them,
    with the SDK's messages, so pydantic must not check them itself."""
    return Field(json_schema_extra=facts)


ThreadName = Annotated[
    StrictStr,
    _schema(
        pattern=limits.THREAD_ID_PATTERN.pattern,
        minLength=1,
        maxLength=limits.MAX_THREAD_ID_LENGTH,
    ),
]
_ENV_CONTROL = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f]*$"  # TAB, LF, CR allowed


def _utf8(value: str, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid UTF-8") from None
    return value


class ExecuteRequest(BaseModel):
    """Body of ``POST /v1/sandbox/execute``. Unknown fields are ignored.

    Patterns are matched whole (``fullmatch``): the SDK's ``re.match`` with ``$`` lets a
    trailing newline through, which would end up in a directory or variable name.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: Annotated[
        StrictStr,
        _schema(minLength=1, maxLength=limits.MAX_CODE_BYTES, description="At most 1 MiB."),
    ]
    language: Annotated[StrictStr, _schema(enum=list(limits.LANGUAGES))] = "python"
    timeout: Annotated[
        StrictInt,
        _schema(
            minimum=limits.MIN_TIMEOUT,
            maximum=limits.MAX_TIMEOUT,
            description="Seconds; above the key's plan limit it is a 429.",
        ),
    ] = limits.DEFAULT_TIMEOUT
    thread_id: ThreadName | None = None
    metadata: (
        Annotated[
            dict[StrictStr, Any],
            _schema(
                maxProperties=limits.MAX_METADATA_KEYS,
                propertyNames={
                    "pattern": limits.METADATA_KEY_PATTERN.pattern,
                    "minLength": 1,
                    "maxLength": limits.MAX_METADATA_KEY_LENGTH,
                },
                additionalProperties={
                    "type": "string",
                    "maxLength": limits.MAX_METADATA_VALUE_LENGTH,
                },
            ),
        ]
        | None
    ) = None
    env_vars: (
        Annotated[
            dict[StrictStr, Any],
            _schema(
                maxProperties=limits.MAX_ENV_VARS,
                propertyNames={
                    "pattern": limits.ENV_KEY_PATTERN.pattern,
                    "maxLength": limits.MAX_ENV_KEY_LENGTH,
                    "not": {"enum": sorted(limits.RESERVED_ENV_NAMES)},
                },
                additionalProperties={
                    "type": "string",
                    "maxLength": limits.MAX_ENV_VALUE_LENGTH,
                    "pattern": _ENV_CONTROL,
                },
                description="Names with a reserved prefix ("
                + ", ".join(limits.RESERVED_ENV_PREFIXES)
                + ") are refused too; 64 KiB in all.",
            ),
        ]
        | None
    ) = None
    sub_paths: (
        Annotated[
            list[Any],
            _schema(
                maxItems=limits.MAX_SUB_PATHS,
                items={
                    "type": "string",
                    "pattern": "^/data/",
                    "maxLength": limits.MAX_SUB_PATH_LENGTH,
                    "description": "No '..', '%2e', '%2f', '%5c', '%00', '%25', '%c0', '%c1', "
                    "NUL or backslash.",
                },
            ),
        ]
        | None
    ) = None
    webhook_url: (
        Annotated[
            StrictStr,
            _schema(
                pattern="^https://",
                maxLength=limits.MAX_WEBHOOK_URL_LENGTH,
                description="Only with the header Prefer: respond-async.",
            ),
        ]
        | None
    ) = None

    @field_validator("code")
    @classmethod
    def _code(cls, code: str) -> str:
        if not code:
            raise ValueError("code must not be empty")
        if len(_utf8(code, "code").encode("utf-8")) > limits.MAX_CODE_BYTES:
            raise ValueError(f"code exceeds maximum size of {limits.MAX_CODE_BYTES} bytes")
        return code

    @field_validator("language")
    @classmethod
    def _language(cls, language: str) -> str:
        if language not in limits.LANGUAGES:
            raise ValueError(
                f"unsupported language {language!r}, must be one of: {', '.join(limits.LANGUAGES)}"
            )
        return language

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: int) -> int:
        if not limits.MIN_TIMEOUT <= timeout <= limits.MAX_TIMEOUT:
            raise ValueError(
                f"timeout must be between {limits.MIN_TIMEOUT} and {limits.MAX_TIMEOUT} seconds"
            )
        return timeout

    @field_validator("thread_id")
    @classmethod
    def _thread_id(cls, thread_id: str | None) -> str | None:
        return None if thread_id is None else _thread_name(thread_id, "thread_id", optional=True)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if len(url) > limits.MAX_WEBHOOK_URL_LENGTH:
            raise ValueError(
                f"webhook_url exceeds maximum length of {limits.MAX_WEBHOOK_URL_LENGTH} characters"
            )
        if not url.startswith("https://"):
            raise ValueError("webhook_url must use HTTPS")
        if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
            raise ValueError("webhook_url must be printable ASCII (IDNA host, encoded path)")
        try:
            parsed = urllib.parse.urlsplit(url)
            host = parsed.hostname
        except ValueError:  # brackets that hold no IPv6 address
            host = None
        if not host:
            raise ValueError("webhook_url must include a hostname")
        if literal(host) is None and normal_name(host) is None:
            raise ValueError("webhook_url must include a valid hostname")
        try:
            port = parsed.port
        except ValueError:  # out of range, or not a number
            port = 0
        if port == 0:
            raise ValueError("webhook_url port must be a number between 1 and 65535")
        return url

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        if metadata is None:
            return None
        if len(metadata) > limits.MAX_METADATA_KEYS:
            raise ValueError(f"metadata exceeds maximum of {limits.MAX_METADATA_KEYS} keys")
        for key, value in metadata.items():
            if not key or len(key) > limits.MAX_METADATA_KEY_LENGTH:
                raise ValueError(
                    f"metadata key must be 1-{limits.MAX_METADATA_KEY_LENGTH} characters, "
                    f"got {len(key)}"
                )
            if not limits.METADATA_KEY_PATTERN.fullmatch(key) or not key.isascii():
                raise ValueError(
                    f"metadata key {key!r} must start with alphanumeric and contain "
                    "only alphanumeric, underscores, hyphens, or dots"
                )
            if not isinstance(value, str):
                raise ValueError(
                    f"metadata value for key {key!r} must be a string, got {_json_type(value)}"
                )
            if len(_utf8(value, "metadata values")) > limits.MAX_METADATA_VALUE_LENGTH:
                raise ValueError(
                    f"metadata value for key {key!r} exceeds maximum of "
                    f"{limits.MAX_METADATA_VALUE_LENGTH} characters"
                )
        return metadata

    @field_validator("sub_paths")
    @classmethod
    def _sub_paths(cls, sub_paths: list[Any] | None) -> list[Any] | None:
        if sub_paths is None:
            return None
        if len(sub_paths) > limits.MAX_SUB_PATHS:
            raise ValueError(f"sub_paths exceeds maximum of {limits.MAX_SUB_PATHS} entries")
        for path in sub_paths:
            if not isinstance(path, str):
                raise ValueError(f"sub_paths entries must be strings, got {_json_type(path)}")
            if len(_utf8(path, "sub_paths")) > limits.MAX_SUB_PATH_LENGTH:
                raise ValueError(
                    f"sub_path exceeds maximum length of {limits.MAX_SUB_PATH_LENGTH} characters"
                )
            if not path.startswith("/data/"):
                raise ValueError(f"sub_path must start with /data/, got {path!r}")
            if limits.SUB_PATH_DANGEROUS.search(path):
                raise ValueError(f"sub_path contains dangerous characters: {path!r}")
        return sub_paths

    @field_validator("env_vars")
    @classmethod
    def _env_vars(cls, env_vars: dict[str, Any] | None) -> dict[str, Any] | None:
        if env_vars is None:
            return None
        if len(env_vars) > limits.MAX_ENV_VARS:
            raise ValueError(f"Too many environment variables (maximum {limits.MAX_ENV_VARS})")
        total = 0
        for key, value in env_vars.items():
            check_env_var(key, value)
            total += len(key) + len(value)
        if total > limits.MAX_ENV_TOTAL:
            raise ValueError("Total environment variable size exceeds limit (64KB)")
        return env_vars


def _thread_name(value: str, field: str, optional: bool = False) -> str:
    """A thread id, in the SDK's words (``field`` names it in the messages)."""
    if not value:
        raise ValueError(f"{field} must not be empty" + (" when provided" if optional else ""))
    if len(value) > limits.MAX_THREAD_ID_LENGTH:
        raise ValueError(
            f"{field} exceeds maximum length of {limits.MAX_THREAD_ID_LENGTH} characters"
        )
    if not limits.THREAD_ID_PATTERN.fullmatch(value) or not value.isascii():
        raise ValueError(
            f"{field} must start with alphanumeric and contain only "
            "alphanumeric, hyphens, or underscores"
        )
    return value


def check_env_var(key: str, value: Any) -> None:
    if not key.isascii():
        raise ValueError("Environment variable keys must contain only ASCII characters")
    if not key or len(key) > limits.MAX_ENV_KEY_LENGTH:
        raise ValueError(
            f"Environment variable keys must be 1-{limits.MAX_ENV_KEY_LENGTH} characters"
        )
    if not limits.ENV_KEY_PATTERN.fullmatch(key):
        raise ValueError(
            "Environment variable keys must start with an uppercase letter "
            "and contain only uppercase letters, digits, and underscores"
        )
    if not isinstance(value, str):
        raise ValueError(
            f"Environment variable value for key {key!r} must be a string, got {_json_type(value)}"
        )
    if len(value) > limits.MAX_ENV_VALUE_LENGTH:
        raise ValueError(
            f"Environment variable values must be at most {limits.MAX_ENV_VALUE_LENGTH} characters"
        )
    if any(b == 0 or (b < 32 and b not in (9, 10, 13)) for b in _utf8(value, "env").encode()):
        raise ValueError(
            "Environment variable values cannot contain null bytes or control characters"
        )
    if key in limits.RESERVED_ENV_NAMES or key.startswith(limits.RESERVED_ENV_PREFIXES):
        raise ValueError("This environment variable name is reserved by the system")


def _json_type(value: Any) -> str:
    """The type name the SDK puts in the same message (Python's, as decoded from JSON)."""
    return type(value).__name__


class SandboxResult(BaseModel):
    """What the inline mode answers; ``success`` is ``exit_code == 0``."""

    success: bool
    stdout: str
    stderr: str
    exit_code: int
    error: str | None
    trace_id: str


class ExecutionView(BaseModel):
    """Body of ``GET /v1/executions/{trace_id}``."""

    trace_id: str
    status: ExecutionStatus
    exit_code: int | None
    stdout: str | None
    stderr: str | None
    error: str | None
    duration_ms: int
    delivery_mode: DeliveryMode
    created_at: str
    completed_at: str | None
    webhook_url: str | None
    webhook_delivery_status: WebhookStatus | None
    # An extra of ours (the SDK ignores it): the names of the connectors injected.
    connectors: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, record: Execution) -> ExecutionView:
        running = record.completed_at is None
        elapsed = int((time.time() - record.created_at) * 1000)
        return cls(
            trace_id=record.trace_id,
            status=record.status,
            exit_code=None if running else record.exit_code,
            stdout=None if running else record.stdout,
            stderr=None if running else record.stderr,
            error=record.error,
            duration_ms=elapsed if running else (record.duration_ms or 0),
            delivery_mode=record.delivery_mode,
            created_at=iso(record.created_at),
            completed_at=None if record.completed_at is None else iso(record.completed_at),
            webhook_url=record.webhook_url,
            webhook_delivery_status=record.webhook_delivery_status,
            connectors=list(record.connectors),
        )


def iso(epoch: float) -> str:
    """UTC with milliseconds and a ``Z``, as the reference API writes times."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decimal(text: str, max_digits: int = 18) -> int | None:
    """The number ``text`` writes in 1 to ``max_digits`` ASCII digits, else None. Not
    ``str.isdigit`` alone: it accepts digits ``int`` refuses ("²") and other scripts'."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any) -> M:
    """Validate ``data`` into ``model``, raising our ValidationError with one clear message."""
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(_first_message(exc)) from None


def _first_message(exc: pydantic.ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    field = ".".join(str(part) for part in err["loc"])
    if err["type"] == "missing":
        return f"{field} is required"
    return f"{field}: {err['msg']}"


class FileRequest(BaseModel):
    """Body of the ``/v1/files`` endpoints. Which fields count depends on the endpoint."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    source: Annotated[StrictStr, _schema(enum=["thread", "volume"])] = "thread"
    id: Annotated[ThreadName, _schema(description="The thread id, or the volume's slug.")]
    path: (
        Annotated[
            StrictStr,
            _schema(
                maxLength=MAX_PATH_BYTES,
                description="Relative to the thread's home or the volume's root: no leading "
                "'/', no '..' segment, NUL, backslash or control character.",
            ),
        ]
        | None
    ) = None
    content_length: (
        Annotated[StrictInt, _schema(minimum=0, maximum=limits.MAX_FILE_BYTES)] | None
    ) = None
    content_type: (
        Annotated[StrictStr, _schema(pattern="^[\\x20-\\x7e]*$", maxLength=255)] | None
    ) = None

    @field_validator("source")
    @classmethod
    def _source(cls, source: str) -> str:
        if source not in ("thread", "volume"):
            raise ValueError("source must be 'thread' or 'volume'")
        return source

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _thread_name(value, "id")

    @field_validator("content_length")
    @classmethod
    def _content_length(cls, size: int | None) -> int | None:
        if size is None:
            return None
        if size < 0:
            raise ValueError("content_length must not be negative")
        if size > limits.MAX_FILE_BYTES:
            raise ValueError(
                f"content_length exceeds maximum of {limits.MAX_FILE_BYTES} bytes (10 GiB)"
            )
        return size

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, value: str | None) -> str | None:
        if value is not None and (
            len(value) > 255 or not value.isascii() or not value.isprintable()
        ):
            raise ValueError("content_type must be printable ASCII, at most 255 characters")
        return value


class FileEntry(BaseModel):
    name: str
    path: str
    size: int
    modified: str
    is_directory: bool


class SignedUrl(BaseModel):
    url: str
    method: Literal["GET", "PUT"]
    headers: list[dict[str, str]]  # [{"name", "value"}]: the SDK's shape
    expires_at: str


# Constant fields of an answer are in every answer: required in its schema too.
ANSWER = ConfigDict(json_schema_serialization_defaults_required=True)


class FileList(BaseModel):
    """Body of ``POST /v1/files/list``."""

    files: list[FileEntry]


class Deleted(BaseModel):
    """Body of ``DELETE /v1/files``."""

    model_config = ANSWER

    deleted: Literal[True] = True


class Queued(BaseModel):
    """What the webhook mode answers (202), before the code runs."""

    model_config = ANSWER

    trace_id: str
    status: Literal[ExecutionStatus.QUEUED] = ExecutionStatus.QUEUED


class Cancelling(BaseModel):
    """Body of ``POST /v1/executions/{trace_id}/cancel``."""

    model_config = ANSWER

    trace_id: str
    status: Literal["cancelling"] = "cancelling"


class ErrorBody(BaseModel):
    """Every error: a stable code (one per HTTP status) and a message for people."""

    error: str
    message: str


class Health(BaseModel):
    model_config = ANSWER

    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    model_config = ANSWER

    status: Literal["ready"] = "ready"
