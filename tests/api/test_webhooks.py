"""Webhook delivery mode: 202 at once, a signed POST of the record on completion, retries,
secret rotation, refusals of private targets and cancellation.

Real servers on loopback deliver to a real HTTPS receiver (tests/receiver.py) whose throwaway
CA they trust through --webhook-ca-file. The servers here are this module's own: short retry
delays keep the retry tests quick, and one of them refuses private targets at delivery time.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.harness import (
    Server,
    cli,
    free_port,
    start_server,
    stop_server,
    unique,
    wait_until,
)
from tests.receiver import Delivery, Receiver, make_ca

EXECUTE = "/v1/sandbox/execute"
ASYNC = {"Prefer": "respond-async"}
TRACE_ID = re.compile(r"^trc_[a-zA-Z0-9_-]{1,20}$")
RECORD_KEYS = {
    "trace_id",
    "status",
    "exit_code",
    "stdout",
    "stderr",
    "error",
    "duration_ms",
    "delivery_mode",
    "created_at",
    "completed_at",
    "webhook_url",
    "webhook_delivery_status",
    "connectors",  # an extra of ours: the names of the connectors injected
}
PRIVATE_REFUSAL = {
    "error": "validation_error",
    "message": "webhook_url must not point to a private, loopback or link-local address",
}
SLEEPY = "import time; time.sleep(2); print('slept')"

MakeReceiver = Callable[..., Receiver]


# fixtures


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    return make_ca(tmp_path_factory.mktemp("webhook-ca"))


def own_server(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp(name), *args)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def hooks(
    tmp_path_factory: pytest.TempPathFactory, ca_pem: tuple[trustme.CA, Path]
) -> Iterator[Server]:
    """Delivers to loopback; 4 tries 0.3 s apart, so retries end within a second."""
    yield from own_server(
        tmp_path_factory,
        "hooks",
        "--allow-private-webhooks",
        "--webhook-ca-file",
        str(ca_pem[1]),
        "--webhook-retry-delays",
        "0.3,0.3,0.3",
    )


@pytest.fixture(scope="module")
def patient(
    tmp_path_factory: pytest.TempPathFactory, ca_pem: tuple[trustme.CA, Path]
) -> Iterator[Server]:
    """Tries at 0, 1, 2, 4 and 8 s: time enough to bring a receiver up in between."""
    yield from own_server(
        tmp_path_factory,
        "patient",
        "--allow-private-webhooks",
        "--webhook-ca-file",
        str(ca_pem[1]),
        "--webhook-retry-delays",
        "1,1,2,4",
    )


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, ca_pem: tuple[trustme.CA, Path]
) -> Iterator[Server]:
    """Trusts the receiver's CA but refuses private targets. The first retry would come after
    30 s, so a delivery that ends "failed" well before that was refused for good."""
    yield from own_server(
        tmp_path_factory,
        "guarded",
        "--webhook-ca-file",
        str(ca_pem[1]),
        "--webhook-retry-delays",
        "30",
    )


@pytest.fixture()
def receivers(ca_pem: tuple[trustme.CA, Path]) -> Iterator[MakeReceiver]:
    """Start receivers on demand; all are stopped after the test."""
    started: list[Receiver] = []

    def make(fail_first: int = 0, port: int = 0) -> Receiver:
        receiver = Receiver(ca_pem[1], fail_first=fail_first).start(ca_pem[0], port=port)
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


@pytest.fixture()
def client(hooks: Server) -> Iterator[httpx.Client]:
    with hooks.client() as http:
        yield http


@pytest.fixture(scope="module")
def sdk(hooks: Server) -> Iterator[Any]:
    baponi = hooks.sdk()
    yield baponi
    baponi.close()


# helpers


def submit(http: httpx.Client, code: str, webhook_url: str | None = None) -> str:
    body: dict[str, Any] = {"code": code}
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    response = http.post(EXECUTE, json=body, headers=ASYNC)
    assert response.status_code == 202, response.text
    return str(response.json()["trace_id"])


def record_of(http: httpx.Client, trace_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/executions/{trace_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_delivery_status(
    http: httpx.Client, trace_id: str, wanted: str, timeout: float = 15
) -> dict[str, Any]:
    """The record once its webhook_delivery_status is ``wanted`` (the store is updated just
    after the receiver answers, so a GET right after the POST may still say "pending")."""

    def reached() -> dict[str, Any] | None:
        record = record_of(http, trace_id)
        return record if record["webhook_delivery_status"] == wanted else None

    return wait_until(
        reached,
        timeout,
        lambda: f"delivery of {trace_id} {wanted}, not {record_of(http, trace_id)}",
    )


def secret_of(server: Server, org: str | None = None) -> str:
    return cli(server.home, "orgs", "webhook-secret", *([org] if org else []))


def tampered(delivery: Delivery) -> Delivery:
    body = delivery.body.replace(b'"success"', b'"failed"')
    assert body != delivery.body
    return dataclasses.replace(delivery, body=body)


# 1. accepted at once, delivered once, signed


@pytest.mark.slow
def test_raw_202_before_the_code_runs_then_one_signed_delivery(
    hooks: Server, client: httpx.Client, receivers: MakeReceiver
) -> None:
    receiver = receivers()
    started = time.monotonic()
    response = client.post(
        EXECUTE, json={"code": SLEEPY, "webhook_url": receiver.url}, headers=ASYNC
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    body = response.json()
    assert body == {"trace_id": body["trace_id"], "status": "queued"}
    assert TRACE_ID.fullmatch(body["trace_id"])
    assert elapsed < 1.5, f"202 took {elapsed:.2f}s: it waited for the code"
    trace_id = body["trace_id"]

    pending = record_of(client, trace_id)
    assert pending["status"] in {"queued", "running"}
    assert pending["webhook_delivery_status"] == "pending"
    assert receiver.attempts == 0

    [delivery] = receiver.wait_for(1, timeout=30)
    record = delivery.json()
    assert set(record) == RECORD_KEYS
    assert record["trace_id"] == trace_id
    assert record["status"] == "success"
    assert record["exit_code"] == 0
    assert record["stdout"] == "slept\n"
    assert record["error"] is None
    assert record["delivery_mode"] == "webhook"
    assert record["webhook_url"] == receiver.url
    assert record["completed_at"] is not None
    assert record["duration_ms"] >= 2000
    assert delivery.path == "/hook"
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["baponi-delivery-attempt"] == "1"

    secret = secret_of(hooks)
    assert secret
    assert delivery.signed_by(secret)
    assert not delivery.signed_by(secret + "x")
    assert not delivery.signed_by("whsec_" + uuid.uuid4().hex)
    assert not tampered(delivery).signed_by(secret)

    final = wait_delivery_status(client, trace_id, "delivered")
    # The delivered body is the record itself, as it stood when it was sent.
    assert final == {**record, "webhook_delivery_status": "delivered"}
    time.sleep(1)  # several retry delays: a second POST would have come by now
    assert receiver.attempts == 1
    assert len(receiver.deliveries) == 1


@pytest.mark.slow
def test_sdk_handle_returns_at_once_and_delivery_arrives(
    hooks: Server, sdk: Any, client: httpx.Client, receivers: MakeReceiver
) -> None:
    receiver = receivers()
    started = time.monotonic()
    handle = sdk.execute_webhook(SLEEPY, webhook_url=receiver.url)
    elapsed = time.monotonic() - started
    assert TRACE_ID.fullmatch(handle.trace_id)
    assert elapsed < 1.5, f"execute_webhook took {elapsed:.2f}s: it waited for the code"

    [delivery] = receiver.wait_for(1, timeout=30)
    assert delivery.json()["trace_id"] == handle.trace_id
    assert delivery.json()["stdout"] == "slept\n"
    assert delivery.signed_by(secret_of(hooks))
    wait_delivery_status(client, handle.trace_id, "delivered")
    status = handle.poll()
    assert status.status == "success"
    assert status.webhook_url == receiver.url
    assert status.webhook_delivery_status == "delivered"


# 2. webhook mode without a webhook_url: poll and wait


@pytest.mark.slow
def test_handle_poll_and_wait_without_webhook_url(sdk: Any) -> None:
    handle = sdk.execute_webhook("import time; time.sleep(1.5); print('polled')")
    running = handle.poll()
    assert running.trace_id == handle.trace_id
    assert running.status in {"queued", "running"}
    assert running.exit_code is None
    assert running.stdout is None
    assert running.stderr is None
    assert running.completed_at is None
    assert running.delivery_mode == "webhook"
    assert running.created_at
    assert running.webhook_url is None
    assert running.webhook_delivery_status is None

    final = handle.wait(poll_interval=0.2, timeout=30)
    assert final.status == "success"
    assert final.exit_code == 0
    assert final.stdout == "polled\n"
    assert final.completed_at is not None
    assert final.duration_ms >= 1500
    assert final.webhook_url is None
    assert final.webhook_delivery_status is None
    assert sdk.get_execution(handle.trace_id) == final


# 3. retries


@pytest.mark.slow
def test_failing_receiver_gets_retries_until_it_answers(
    hooks: Server, client: httpx.Client, receivers: MakeReceiver
) -> None:
    receiver = receivers(fail_first=2)
    trace_id = submit(client, "print('retried')", receiver.url)
    [delivery] = receiver.wait_for(1, timeout=30)
    assert receiver.attempts == 3
    assert delivery.headers["baponi-delivery-attempt"] == "3"
    assert delivery.json()["trace_id"] == trace_id
    assert delivery.json()["stdout"] == "retried\n"
    assert delivery.signed_by(secret_of(hooks))
    wait_delivery_status(client, trace_id, "delivered")
    time.sleep(1)
    assert receiver.attempts == 3


@pytest.mark.slow
def test_receiver_that_always_fails_ends_failed_after_all_tries(
    client: httpx.Client, receivers: MakeReceiver
) -> None:
    receiver = receivers(fail_first=100)
    trace_id = submit(client, "print('never taken')", receiver.url)
    record = wait_delivery_status(client, trace_id, "failed", timeout=30)
    assert record["status"] == "success"  # the execution succeeded; only delivery failed
    time.sleep(1.5)  # well past another 0.3 s delay: no 5th try
    assert receiver.attempts == 4
    assert receiver.deliveries == []
    assert record_of(client, trace_id)["webhook_delivery_status"] == "failed"


# 4. a receiver that comes up late


@pytest.mark.slow
def test_receiver_started_late_on_the_same_port_gets_the_delivery(
    patient: Server, receivers: MakeReceiver
) -> None:
    port = free_port()  # nothing listens there yet: the first tries are refused
    url = f"https://127.0.0.1:{port}/hook"
    with patient.client() as http:
        trace_id = submit(http, "print('late')", url)
        time.sleep(1.3)  # the execution ends and its first try (at least) fails
        early = record_of(http, trace_id)
        assert early["status"] == "success"
        assert early["webhook_delivery_status"] == "pending"

        receiver = receivers(port=port)
        assert receiver.url == url
        [delivery] = receiver.wait_for(1, timeout=20)
        assert int(delivery.headers["baponi-delivery-attempt"]) >= 2
        assert delivery.json()["trace_id"] == trace_id
        assert delivery.json()["stdout"] == "late\n"
        assert delivery.signed_by(secret_of(patient))
        wait_delivery_status(http, trace_id, "delivered")
    assert receiver.attempts == 1


# 5. secrets: rotation and one per organisation


@pytest.mark.slow
def test_rotated_secret_signs_the_next_delivery(
    hooks: Server, client: httpx.Client, receivers: MakeReceiver
) -> None:
    old = secret_of(hooks)
    new = cli(hooks.home, "orgs", "webhook-secret", "--rotate")
    assert new
    assert new != old
    assert secret_of(hooks) == new  # the rotation is stored, not just printed

    receiver = receivers()
    submit(client, "print('rotated')", receiver.url)
    [delivery] = receiver.wait_for(1, timeout=30)
    assert delivery.signed_by(new)
    assert not delivery.signed_by(old)


@pytest.mark.slow
def test_each_organisation_signs_with_its_own_secret(
    hooks: Server, client: httpx.Client, receivers: MakeReceiver
) -> None:
    org = unique("wh")
    cli(hooks.home, "orgs", "create", org)
    theirs = secret_of(hooks, org)
    ours = secret_of(hooks)
    assert theirs != ours

    mine, other = receivers(), receivers()
    submit(client, "print('ours')", mine.url)
    with hooks.client(hooks.new_key("--org", org)) as their_client:
        submit(their_client, "print('theirs')", other.url)
    [our_delivery] = mine.wait_for(1, timeout=30)
    [their_delivery] = other.wait_for(1, timeout=30)
    assert their_delivery.json()["stdout"] == "theirs\n"
    assert their_delivery.signed_by(theirs)
    assert not their_delivery.signed_by(ours)
    assert our_delivery.signed_by(ours)
    assert not our_delivery.signed_by(theirs)


# 6. refusals


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/hook", "webhook_url must use HTTPS"),
        (
            "https://example.com/" + "a" * 2048,
            "webhook_url exceeds maximum length of 2048 characters",
        ),
        *(
            (
                f"https://example.com:{port}/hook",
                "webhook_url port must be a number between 1 and 65535",
            )
            for port in ("65536", "99999", "0", "1x")
        ),
        *(
            (f"https://{host}/hook", "webhook_url must include a valid hostname")
            for host in ("a..b", "-a.example", "xn--zz.example", "1.2.3.4.5", "localhost..")
        ),
    ],
)
def test_bad_webhook_url_is_400(api: httpx.Client, url: str, message: str) -> None:
    response = api.post(EXECUTE, json={"code": "print(1)", "webhook_url": url}, headers=ASYNC)
    assert response.status_code == 400
    assert response.json() == {"error": "validation_error", "message": message}


def test_webhook_url_of_exactly_2048_chars_is_delivered(
    client: httpx.Client, receivers: MakeReceiver
) -> None:
    receiver = receivers()
    url = receiver.url + "?pad="
    url += "p" * (2048 - len(url))
    assert len(url) == 2048
    trace_id = submit(client, "print('long')", url)
    [delivery] = receiver.wait_for(1, timeout=30)
    assert delivery.path == url.removeprefix(f"https://127.0.0.1:{receiver.port}")
    assert delivery.json()["webhook_url"] == url
    wait_delivery_status(client, trace_id, "delivered")


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://[::1]/x",
        "https://10.0.0.1/x",
        "https://169.254.169.254/x",
        "https://localhost/x",
        "https://localhost./x",
        "https://api.localhost./x",
        "https://LocalHost./x",
        "https://127.1/x",
        "https://0x7f.1/x",
    ],
)
def test_private_webhook_url_is_400_by_default(api: httpx.Client, url: str) -> None:
    response = api.post(EXECUTE, json={"code": "print(1)", "webhook_url": url}, headers=ASYNC)
    assert response.status_code == 400
    assert response.json() == PRIVATE_REFUSAL


@pytest.mark.parametrize("accept", [None, "application/x-ndjson"])
def test_webhook_url_needs_async_delivery(api: httpx.Client, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    body = {"code": "print(1)", "webhook_url": "https://example.com/hook"}
    response = api.post(EXECUTE, json=body, headers=headers)
    assert response.status_code == 400
    assert response.json() == {
        "error": "validation_error",
        "message": "webhook_url requires the header Prefer: respond-async",
    }


@pytest.mark.slow
def test_name_resolving_to_loopback_is_refused_at_delivery(
    guarded: Server, receivers: MakeReceiver
) -> None:
    receiver = receivers()
    url = f"https://vm:{receiver.port}/hook"  # "vm" is 127.0.0.1, covered by the cert
    with guarded.client() as http:
        literal = http.post(
            EXECUTE, json={"code": "print(1)", "webhook_url": receiver.url}, headers=ASYNC
        )
        assert literal.json() == PRIVATE_REFUSAL
        trace_id = submit(http, "print('refused')", url)
        record = wait_delivery_status(http, trace_id, "failed", timeout=15)
    assert record["status"] == "success"
    assert record["webhook_url"] == url
    assert receiver.attempts == 0
    assert "resolves only to private" in guarded.log


# 7. cancel


@pytest.mark.slow
def test_cancelled_webhook_execution_delivers_a_cancelled_record(
    hooks: Server, sdk: Any, client: httpx.Client, receivers: MakeReceiver
) -> None:
    receiver = receivers()
    handle = sdk.execute_webhook(
        "import time; print('started', flush=True); time.sleep(30)", webhook_url=receiver.url
    )
    wait_for_output(client, handle.trace_id, "started\n")
    assert handle.cancel().status == "cancelling"

    [delivery] = receiver.wait_for(1, timeout=15)
    record = delivery.json()
    assert record["trace_id"] == handle.trace_id
    assert record["status"] == "cancelled"
    assert record["error"] == "Cancelled by user"
    assert record["exit_code"] == 137
    assert record["stdout"] == "started\n"
    assert delivery.signed_by(secret_of(hooks))
    final = wait_delivery_status(client, handle.trace_id, "delivered")
    assert final["status"] == "cancelled"


def wait_for_output(http: httpx.Client, trace_id: str, text: str) -> None:
    """Follow the execution's stored events until ``text`` was printed: it is running.
    Output is gathered across events: the sandbox's Python is unbuffered, so a print may
    arrive as two writes ("started", then "\\n")."""
    url = f"/v1/executions/{trace_id}/output"
    printed = ""
    with http.stream("GET", url, timeout=15) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            event = json.loads(line)
            if event["type"] == "output" and event["stream"] == "stdout":
                printed += event["data"]
                if text in printed:
                    return
            assert event["type"] != "result", f"ended before printing {text!r}: {event}"
    raise AssertionError(f"{trace_id} never printed {text!r}")
