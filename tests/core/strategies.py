"""Hypothesis strategies for request bodies and the names and paths in them: dense in the
values that matter (valid ones, and the edges the validators draw), mixed with anything."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from baponi_core import _limits as limits

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
any_json = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Any text at all: lone surrogates, controls, RTL marks, shell metacharacters.
odd_text = st.text(alphabet=st.characters(codec=None), max_size=24) | st.sampled_from(
    ["$(id)", "`id`", "a;b", "a\nb", "\u202eevil", "\x00", "\ud800", "../x", "a" * 129]
)
names = (
    st.from_regex(limits.THREAD_ID_PATTERN, fullmatch=True).filter(
        lambda s: len(s) <= limits.MAX_THREAD_ID_LENGTH
    )
    | odd_text
)
request_paths = (
    st.lists(st.sampled_from(["a", "b", ".", "..", "", "é", "a b", "..a"]), max_size=5).map(
        "/".join
    )
    | st.builds(lambda lead, p: lead + p, st.sampled_from(["", "/", "./", "//"]), odd_text)
    | odd_text
)
sub_path_lists = st.lists(
    st.builds(
        lambda slug, rest: f"/data/{slug}{rest}",
        st.sampled_from(["v", "w", "x", ""]),
        st.sampled_from(["", "/", "/a", "/a/b/", "/./a", "//a", "/.."]) | odd_text,
    )
    | odd_text,
    max_size=limits.MAX_SUB_PATHS + 1,
)
env_names = st.from_regex(limits.ENV_KEY_PATTERN, fullmatch=True) | st.sampled_from(
    ["PATH", "LD_PRELOAD", "BAPONI_X", "lower"]
)
execute_fields: dict[str, st.SearchStrategy[Any]] = {
    "language": st.sampled_from(limits.LANGUAGES) | any_json,
    "timeout": st.integers(min_value=-1, max_value=limits.MAX_TIMEOUT + 1) | any_json,
    "thread_id": names | any_json,
    "metadata": st.dictionaries(names, st.text(max_size=20) | any_json, max_size=11) | any_json,
    "env_vars": st.dictionaries(env_names, st.text(max_size=20) | any_json, max_size=4) | any_json,
    "sub_paths": sub_path_lists | any_json,
    "webhook_url": st.sampled_from(["https://hooks.example/x", "http://x", ""]) | any_json,
}
execute_bodies = st.fixed_dictionaries(
    {"code": st.text(min_size=1, max_size=40) | any_json}, optional=execute_fields
)
file_bodies = st.fixed_dictionaries(
    {"id": names},
    optional={
        "source": st.sampled_from(["thread", "volume"]) | any_json,
        "path": request_paths | any_json,
        "content_length": st.integers(min_value=-1, max_value=limits.MAX_FILE_BYTES + 1) | any_json,
        "content_type": st.sampled_from(["text/plain", "a\x00b"]) | odd_text | any_json,
    },
)
