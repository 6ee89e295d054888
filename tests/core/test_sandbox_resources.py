"""A long-lived sandbox's limits from OpenSandbox's ``resourceLimits``: Kubernetes
quantities read exactly, clamped to the key's profile, anything else a clear 400."""

from __future__ import annotations

import pytest

from baponi_core._errors import ValidationError
from baponi_core._records import Profile
from baponi_core._sandboxes.resources import Resources, resources_for

PROFILE = Profile(id="prf_1", org_id="org_1", name="default", cpus=2.0, memory_mb=1024, pids=99)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        (None, Resources(2.0, 1024, 99)),  # nothing asked: all the profile gives
        ({}, Resources(2.0, 1024, 99)),
        ({"cpu": "500m", "memory": "512Mi"}, Resources(0.5, 512, 99)),
        ({"cpu": "1.5", "memory": "256M"}, Resources(1.5, 244, 99)),
        ({"cpu": "1", "memory": "1048576Ki"}, Resources(1.0, 1024, 99)),
        ({"memory": "536870912"}, Resources(2.0, 512, 99)),  # bytes
        # Above the profile: clamped to it, never refused (the SDK's defaults are large).
        ({"cpu": "8", "memory": "16Gi"}, Resources(2.0, 1024, 99)),
        ({"cpu": "4000m", "memory": "3G"}, Resources(2.0, 1024, 99)),
        # Below what runs anything: raised to the floor.
        ({"cpu": "0m", "memory": "1Ki"}, Resources(0.01, 16, 99)),
        ({"gpu": "1", "ephemeral-storage": "x"}, Resources(2.0, 1024, 99)),  # nothing to bound
    ],
)
def test_quantities_within_the_profile(asked: dict[str, str] | None, expected: Resources) -> None:
    assert resources_for(PROFILE, asked) == expected


@pytest.mark.parametrize(
    ("asked", "words"),
    [
        ({"cpu": "-1"}, "resourceLimits.cpu is not a quantity"),
        ({"cpu": "1e3"}, "resourceLimits.cpu is not a quantity"),
        ({"cpu": " 1"}, "resourceLimits.cpu is not a quantity"),
        ({"cpu": "2Gi"}, "resourceLimits.cpu: unknown unit 'Gi'"),
        ({"cpu": 2}, "resourceLimits.cpu is not a quantity"),
        ({"memory": "512MB"}, "resourceLimits.memory: unknown unit 'MB'"),
        ({"memory": "9" * 40}, "resourceLimits.memory is not a quantity"),
        ({"memory": "nan"}, "resourceLimits.memory is not a quantity"),
        ({"memory": ""}, "resourceLimits.memory is not a quantity"),
    ],
)
def test_what_is_not_a_quantity_is_refused(asked: dict[str, str], words: str) -> None:
    with pytest.raises(ValidationError) as refused:
        resources_for(PROFILE, asked)
    assert refused.value.status == 400 and refused.value.message.startswith(words)
