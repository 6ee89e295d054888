"""The OpenSandbox lifecycle API's request and response bodies, with the field names of
its specification (``specs/sandbox-lifecycle.yml``) and SDK 1.1.1's generated client."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from baponi_core._records import Sandbox as SandboxRecord

MAX_ENTRIES = 128  # env and metadata pairs a sandbox may have
MAX_TEXT = 4096  # one value, one argv element


class Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class ImageSpec(Wire):
    uri: str = Field(min_length=1, max_length=256)


class NetworkRule(Wire):
    action: Literal["allow", "deny"]
    target: str = Field(min_length=1, max_length=256)


class NetworkPolicyBody(Wire):
    default_action: Literal["allow", "deny"] = Field("deny", alias="defaultAction")
    egress: list[NetworkRule] | None = Field(None, max_length=256)


class CreateSandboxRequest(Wire):
    image: ImageSpec | None = None
    timeout: int | None = Field(None, ge=1)
    resource_limits: dict[str, str] | None = Field(None, alias="resourceLimits", max_length=16)
    entrypoint: list[str] | None = Field(None, max_length=256)
    env: dict[str, str] | None = Field(None, max_length=MAX_ENTRIES)
    metadata: dict[str, str] | None = Field(None, max_length=MAX_ENTRIES)
    network_policy: NetworkPolicyBody | None = Field(None, alias="networkPolicy")
    volumes: list[dict[str, object]] | None = None
    snapshot_id: str | None = Field(None, alias="snapshotId")
    template_id: str | None = Field(None, alias="templateId")


class RenewExpirationRequest(Wire):
    expires_at: dt.datetime = Field(alias="expiresAt")


class Status(Wire):
    state: str
    reason: str | None = None
    message: str | None = None


class Image(Wire):
    uri: str


class SandboxBody(Wire):
    id: str
    image: Image
    status: Status
    metadata: dict[str, str]
    entrypoint: list[str]
    expires_at: str = Field(alias="expiresAt")
    created_at: str = Field(alias="createdAt")

    @classmethod
    def of(cls, record: SandboxRecord) -> SandboxBody:
        return cls(
            id=record.id,
            image=Image(uri=record.runtime),
            status=Status(state=record.state.value, reason=record.reason, message=record.message),
            metadata=record.metadata,
            entrypoint=record.entrypoint,
            expiresAt=timestamp(record.expires_at),
            createdAt=timestamp(record.created_at),
        )


class Pagination(Wire):
    page: int
    page_size: int = Field(alias="pageSize")
    total_items: int = Field(alias="totalItems")
    total_pages: int = Field(alias="totalPages")
    has_next_page: bool = Field(alias="hasNextPage")


class SandboxList(Wire):
    items: list[SandboxBody]
    pagination: Pagination


class Endpoint(Wire):
    endpoint: str
    headers: dict[str, str] = {}


class RenewExpirationResponse(Wire):
    expires_at: str = Field(alias="expiresAt")


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC, as the SDK parses it."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")
