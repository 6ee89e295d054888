"""What the tools tell the model: their descriptions, argument schemas and result models.

Arguments are typed for the schema only; their values are checked by the same
``ExecuteRequest`` / ``FileRequest`` as REST, so both adapters refuse with the same words.
No ``from __future__ import annotations``: the SDK reads these at run time.
"""

from typing import Annotated

from pydantic import BaseModel, Field

from baponi_core import _limits as limits
from baponi_core._models import SandboxResult

INSTRUCTIONS = """\
Runs code in isolated, single-use Linux sandboxes (python, bash or node) with no network.
Pass the same thread_id to keep files in /home/baponi between calls; fetch a file the code
wrote there with files_download (source "thread", id = the thread_id, path relative to
/home/baponi), e.g. a plot saved as PNG."""

EXECUTE_DESCRIPTION = (
    "Run code in a fresh, isolated Linux sandbox (no network access) and return its output: "
    "stdout, then a [stderr] block, [exit code: N] when non-zero, and an [error] block (e.g. "
    "timeout) when the sandbox was stopped. A non-zero exit comes back as an error result: "
    "read stderr, fix the code and run it again. Each call starts from a clean sandbox unless "
    "thread_id is given; then files in /home/baponi persist between calls with that thread_id. "
    "While the code runs, its output also arrives as progress notifications."
)
DOWNLOAD_DESCRIPTION = (
    "Get a file that code wrote, e.g. a plot saved as /home/baponi/plot.png in a thread "
    "(source 'thread', id = the thread_id, path 'plot.png'). Returns a signed download URL "
    "and its expiry and, for files up to 1 MiB, the content itself: text as text, PNG, JPEG, "
    "GIF and WebP as an image."
)


class ExecutionResult(SandboxResult):
    """The finished execution: what POST /v1/sandbox/execute answers (a SandboxResult).
    success is exit_code == 0; error names why it ended otherwise (timeout,
    memory_limit_exceeded, output_limit_exceeded, security_policy_violation)."""


class FileDownload(BaseModel):
    """A signed download URL for the file; its content comes as further content blocks
    when content_included."""

    url: str = Field(description="Signed GET URL of the file; no other credentials needed.")
    expires_at: str = Field(description="When the URL stops working (ISO 8601, UTC).")
    size: int | None = Field(description="Size in bytes; null when above 1 MiB.")
    mime_type: str | None = Field(
        description="text/plain, image/png, image/jpeg, image/gif or image/webp; "
        "null for other binary files and files above 1 MiB."
    )
    content_included: bool = Field(description="Whether the content is in this result.")


Code = Annotated[
    str,
    Field(
        description="The complete program to run, as source text (up to 1 MiB). Print what "
        "you want to see: only stdout and stderr come back.",
    ),
]
Language = Annotated[
    str,
    Field(
        description="Interpreter: python (Python 3), bash, or node (Node.js).",
        json_schema_extra={"enum": list(limits.LANGUAGES)},
    ),
]
ThreadId = Annotated[
    str | None,
    Field(
        description="Persistent workspace: files under /home/baponi (the working directory) "
        "are kept between calls with the same thread_id, e.g. 'analysis-1'. Omit for a "
        "throwaway sandbox. One execution per thread at a time.",
        json_schema_extra={
            "pattern": limits.THREAD_ID_PATTERN.pattern,
            "maxLength": limits.MAX_THREAD_ID_LENGTH,
        },
    ),
]
Timeout = Annotated[
    int,
    Field(
        description="Seconds before the sandbox is killed (the result then has error "
        f"'timeout'). Default {limits.DEFAULT_TIMEOUT}.",
        json_schema_extra={"minimum": limits.MIN_TIMEOUT, "maximum": limits.MAX_TIMEOUT},
    ),
]
Metadata = Annotated[
    dict[str, str] | None,
    Field(
        description="Up to 10 string labels stored with the execution record "
        "(keys 1-40 letters, digits, '_', '-', '.'; values up to 256 characters).",
        json_schema_extra={"maxProperties": limits.MAX_METADATA_KEYS},
    ),
]
EnvVars = Annotated[
    dict[str, str] | None,
    Field(
        description='Environment variables for the program, e.g. {"MODE": "fast"}: up to '
        "50, names in upper case (A-Z, 0-9, _); system names such as PATH and HOME are "
        "reserved.",
        json_schema_extra={"maxProperties": limits.MAX_ENV_VARS},
    ),
]
SubPaths = Annotated[
    list[str] | None,
    Field(
        description="Mount only these sub-directories of the attached volumes, e.g. "
        "['/data/reports/2024/'] (up to 10, each starting with /data/).",
        json_schema_extra={"maxItems": limits.MAX_SUB_PATHS},
    ),
]
Source = Annotated[
    str,
    Field(
        description="'thread' (the /home/baponi of a thread_id) or 'volume' (an attached "
        "volume, by slug).",
        json_schema_extra={"enum": ["thread", "volume"]},
    ),
]
StorageId = Annotated[
    str,
    Field(description="The thread_id the file was written under, or the volume's slug."),
]
FilePath = Annotated[
    str,
    Field(
        description="Path of the file relative to the thread's /home/baponi (or the volume's "
        "root), e.g. 'plot.png' or 'out/report.csv'.",
    ),
]
