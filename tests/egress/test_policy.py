"""Network policy rules: parsing, matching, deny over allow, wildcards, the stored form."""

from __future__ import annotations

import pytest

from baponi_core._net.policy import Mode, NetworkPolicy, Rule


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("example.com", "example.com", None),
        ("Example.COM.:443", "example.com", 443),
        ("*.example.com", "*.example.com", None),
        ("*.example.com:8080", "*.example.com", 8080),
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("127.1", "127.0.0.1", None),  # the legacy form a resolver reads as an address
        ("[::1]:443", "::1", 443),
        ("::1", "::1", None),
    ],
)
def test_rules_parse_to_one_form(text: str, host: str, port: int | None) -> None:
    assert Rule.parse(text) == Rule(host, port)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "*",
        "*.",
        "a*.example.com",
        "exa mple.com",
        "example.com:0",
        "example.com:70000",
        "example.com:http",
        "[::1",
        "[::1]x",
        "example..com",
        "*.*.example.com",
        "-bad.com",
    ],
)
def test_bad_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Rule.parse(text)


def test_rules_print_as_they_parse() -> None:
    for text in ("example.com", "*.example.com:443", "[::1]:8080", "10.0.0.1"):
        assert str(Rule.parse(text)) == text


def test_a_wildcard_covers_names_below_only() -> None:
    rule = Rule.parse("*.example.com")
    assert rule.matches("a.example.com", 443)
    assert rule.matches("a.b.example.com", 80)
    assert not rule.matches("example.com", 443)
    assert not rule.matches("badexample.com", 443)
    assert not rule.matches("example.com.evil.net", 443)


def test_a_port_narrows_a_rule() -> None:
    rule = Rule.parse("example.com:443")
    assert rule.matches("example.com", 443)
    assert not rule.matches("example.com", 80)


def test_allowlist_lets_through_only_its_hosts() -> None:
    policy = NetworkPolicy.of("allowlist", ["pypi.org", "*.pythonhosted.org:443"])
    assert policy.refusal("pypi.org", 443) is None
    assert policy.refusal("PyPI.org.", 80) is None  # any spelling of the same name
    assert policy.refusal("files.pythonhosted.org", 443) is None
    assert policy.refusal("files.pythonhosted.org", 80) == "not in the allowlist"
    assert policy.refusal("example.com", 443) == "not in the allowlist"


def test_deny_wins_over_allow() -> None:
    policy = NetworkPolicy.of(
        "allowlist",
        ["*.example.com", "example.com"],
        ["secret.example.com", "*.internal.example.com"],
    )
    assert policy.refusal("www.example.com", 443) is None
    assert policy.refusal("secret.example.com", 443) == "denied by rule secret.example.com"
    assert policy.refusal("a.internal.example.com", 443) == "denied by rule *.internal.example.com"
    opened = NetworkPolicy.of("open", deny=["example.com:443"])
    assert opened.refusal("anything.org", 443) is None
    assert opened.refusal("example.com", 443) == "denied by rule example.com:443"
    assert opened.refusal("example.com", 80) is None


def test_addresses_are_compared_in_one_form() -> None:
    policy = NetworkPolicy.of("allowlist", ["127.0.0.1"], ["[::1]"])
    assert policy.refusal("127.1", 80) is None
    assert policy.refusal("0x7f.0.0.1", 80) is None
    assert policy.refusal("0:0::1", 80) == "denied by rule [::1]"


@pytest.mark.parametrize("host", ["", "exa mple.com", "a\r\nb", "é.com", "1.2.3.4.5"])
def test_hosts_that_are_no_names_are_refused(host: str) -> None:
    assert NetworkPolicy.of("open").refusal(host, 80) == "not a valid host"


def test_none_refuses_everything_and_takes_no_rules() -> None:
    assert NetworkPolicy().mode is Mode.NONE
    assert NetworkPolicy().refusal("example.com", 443) == "networking is off"
    with pytest.raises(ValueError, match="takes no"):
        NetworkPolicy.of("none", ["example.com"])
    with pytest.raises(ValueError, match="not one of"):
        NetworkPolicy.of("everything")


def test_the_stored_form_round_trips_and_is_hashable() -> None:
    policy = NetworkPolicy.of("allowlist", ["b.org", "a.org:443", "a.org:443"], ["*.c.org"])
    assert policy.allow == (Rule("a.org", 443), Rule("b.org"))  # sorted, once each
    again = NetworkPolicy.from_json(policy.to_json())
    assert again == policy and hash(again) == hash(policy)
    assert NetworkPolicy.from_json(None) == NetworkPolicy()
