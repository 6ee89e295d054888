"""Properties of the request models and of the names and paths they carry into storage and
mounts: any input gives a model or the one validation error, accepted bodies round-trip and
satisfy the document's schema, and nothing accepted can name a place outside its root."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from baponi_core import _limits as limits
from baponi_core._errors import ValidationError
from baponi_core._models import ExecuteRequest, FileRequest, parse
from baponi_core._sandbox.spec import DATA, volume_mounts
from baponi_core._storage.backend import ensure_workspace
from baponi_core._storage.cloud import CloudBackend
from baponi_core._storage.paths import parts
from tests.core.strategies import (
    any_json,
    execute_bodies,
    file_bodies,
    names,
    request_paths,
    sub_path_lists,
)

MODELS = (ExecuteRequest, FileRequest)
SCHEMAS = {model: Draft202012Validator(model.model_json_schema()) for model in MODELS}
PROPERTY = settings(max_examples=150, deadline=None)


def accepted(model: type[ExecuteRequest] | type[FileRequest], data: Any) -> Any:
    """The model of ``data``, or None when it is refused, which must be with the one
    validation error (never another exception) and a message."""
    try:
        return parse(model, data)
    except ValidationError as exc:
        assert exc.status == 400 and exc.message
        return None


@PROPERTY
@given(data=any_json | execute_bodies, model=st.sampled_from(MODELS))
def test_any_input_is_a_model_or_a_validation_error(data: Any, model: Any) -> None:
    accepted(model, data)


@PROPERTY
@given(data=any_json | file_bodies, model=st.sampled_from(MODELS))
def test_any_files_input_is_a_model_or_a_validation_error(data: Any, model: Any) -> None:
    accepted(model, data)


@PROPERTY
@given(data=execute_bodies)
def test_accepted_execute_bodies_round_trip_and_fit_the_schema(data: dict[str, Any]) -> None:
    request = accepted(ExecuteRequest, data)
    if request is None:
        return
    dumped = request.model_dump(exclude_none=True)
    assert parse(ExecuteRequest, json.loads(json.dumps(dumped))) == request
    SCHEMAS[ExecuteRequest].validate(data)  # the document never refuses what is accepted


@PROPERTY
@given(data=file_bodies)
def test_accepted_file_bodies_round_trip_and_fit_the_schema(data: dict[str, Any]) -> None:
    request = accepted(FileRequest, data)
    if request is None:
        return
    dumped = request.model_dump(exclude_none=True)
    assert parse(FileRequest, json.loads(json.dumps(dumped))) == request
    SCHEMAS[FileRequest].validate(data)


def test_valid_bodies_are_generated_often() -> None:
    """The strategies must reach the accepting side, or the properties above prove little."""
    found = {"execute": 0, "files": 0}

    @settings(max_examples=200, deadline=None, database=None)
    @given(execute=execute_bodies, files=file_bodies)
    def count(execute: dict[str, Any], files: dict[str, Any]) -> None:
        found["execute"] += accepted(ExecuteRequest, execute) is not None
        found["files"] += accepted(FileRequest, files) is not None

    count()
    assert found["execute"] >= 20 and found["files"] >= 20, found


# --------------------------------------------------------------------------- thread ids


@PROPERTY
@given(name=names)
@example(name="a\n")
@example(name="..")
@example(name="a/b")
def test_an_accepted_thread_id_is_one_plain_component(name: str) -> None:
    """Accepted by both models or by neither, and then a single safe name in a path."""
    execute = accepted(ExecuteRequest, {"code": "1", "thread_id": name})
    files = accepted(FileRequest, {"id": name})
    assert (execute is None) == (files is None)
    if files is None:
        return
    assert name not in (".", "..") and len(name) <= limits.MAX_THREAD_ID_LENGTH
    assert name.isascii() and name.isprintable() and "/" not in name and "\\" not in name
    assert PurePosixPath(name).parts == (name,)


@settings(max_examples=100, deadline=None)
@given(org=names, thread=names)
def test_a_thread_workspace_stays_below_its_storage(org: str, thread: str) -> None:
    """The key join made on disk for an accepted thread id lies below the storage base."""
    if accepted(FileRequest, {"id": thread}) is None or accepted(FileRequest, {"id": org}) is None:
        return
    with tempfile.TemporaryDirectory() as base:
        made, _ = ensure_workspace(Path(base), ("threads", org, thread), None)
        real = os.path.realpath(made)
        assert real == os.path.join(os.path.realpath(base), "threads", org, thread)
        assert os.path.isdir(real)


# --------------------------------------------------------------------------- sub_paths


@PROPERTY
@given(sub_paths=sub_path_lists)
@example(sub_paths=["/data/v/../../etc"])
@example(sub_paths=["/data/v/./a//b"])
@example(sub_paths=["/data/v/%2e%2e/x"])
def test_accepted_sub_paths_mount_only_below_their_volume(sub_paths: list[Any]) -> None:
    """Whatever ExecuteRequest accepts, the mounts made of it lie inside the volume named,
    at a target below /data/<slug>, walked by plain names."""
    request = accepted(ExecuteRequest, {"code": "1", "sub_paths": sub_paths})
    if request is None or request.sub_paths is None:
        return
    volumes = [("v", Path("/srv/volumes/v"), False), ("w", Path("/srv/volumes/w"), True)]
    try:
        mounts = volume_mounts(volumes, request.sub_paths)
    except ValueError:  # outside any volume: refused at admission (400)
        return
    for mount in mounts:
        slug = PurePosixPath(mount.target).parts[2]
        source = dict((s, p) for s, p, _ in volumes)[slug]
        assert mount.source == source
        joined = os.path.normpath(os.path.join(source, *mount.names))
        assert os.path.commonpath([source, joined]) == str(source)
        target = os.path.normpath(mount.target)
        assert target == mount.target and target.startswith(f"{DATA}/{slug}")


# --------------------------------------------------------------------------- storage paths


@PROPERTY
@given(path=request_paths, thread=names)
@example(path="a/../../x", thread="t")
@example(path="./a//b/", thread="t")
def test_cloud_object_names_stay_below_their_root(path: str, thread: str) -> None:
    """A request path joined into a bucket object name stays below the thread's prefix."""
    try:
        names_ = parts(path)
    except ValidationError:
        return
    if accepted(FileRequest, {"id": thread}) is None:
        return
    with tempfile.TemporaryDirectory() as scratch:
        backend = CloudBackend(
            fsspec.filesystem("memory"), "bucket/base", Path(scratch), None, Path(scratch)
        )
        key = ("threads", "org_1", thread)
        name = backend._remote(key, names_)
    root = "bucket/base/threads/org_1/" + thread
    assert name == f"{root}/{'/'.join(names_)}"
    assert PurePosixPath(name).parts[: len(PurePosixPath(root).parts)] == PurePosixPath(root).parts
    assert ".." not in PurePosixPath(name).parts and os.path.normpath(name) == name
