"""Input validation from the hardening issue, without network: brace lists counted before they
are expanded, URIs that carry secrets (userinfo, fragments, queries) refused in one place
without repeating them, malformed URLs as one line, and path limits checked at resolve."""

from __future__ import annotations

import tracemalloc

import pytest

from mlstage.errors import ConfigError
from mlstage.sources import check_uri, open_source
from mlstage.sources.http import MAX_URLS, expand_braces

SECRET = "s3cr3tV4lue"


# -- D5: a brace list is counted, never expanded, before the URL limit is checked ------------
@pytest.mark.parametrize(
    ("pattern", "count"),
    [
        ("http://h/{0..30000000}.tar", "30,000,001"),
        ("http://h/{0..999}{0..999}{0..9}.tar", "10,000,000"),
        ("http://h/" + "{a,b}" * 4000 + ".tar", "more than"),
    ],
)
def test_too_many_urls_are_refused_before_any_is_built(pattern: str, count: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as info:
            expand_braces(pattern)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"{peak:,} bytes to refuse it"  # not one URL per option
    message = str(info.value)
    assert count in message and f"{MAX_URLS:,}" in message and "hint:" in message
    assert "\n" not in message and len(message) < 400


def test_a_pattern_at_the_limit_still_expands_in_order() -> None:
    urls = expand_braces("s-{0..999}-{a,b}.tar")
    assert len(urls) == 2000 and urls[:3] == ["s-0-a.tar", "s-0-b.tar", "s-1-a.tar"]
    assert expand_braces("x-{1..1}" * 5000) == ["x-1" * 5000]  # no recursion per brace


# -- D7/D9: what a URI must not carry, refused for every scheme without repeating it ---------
@pytest.mark.parametrize(
    ("uri", "shown", "hint"),
    [
        (f"s3://AKIAEXAMPLE:{SECRET}@bucket/data", "s3://bucket/data", "AWS_ACCESS_KEY_ID"),
        (f"clearml+s3://AKIAEXAMPLE:{SECRET}@bucket/p/ds.1", "clearml+s3://bucket/p", "AWS"),
        (f"clearml+file://user:{SECRET}@/data/ds.1", "clearml+file:///data/ds.1", "permissions"),
        (f"clearml://user:{SECRET}@abc123", "clearml://abc123", "mlstage-clearml-credentials"),
        (f"file://user:{SECRET}@/data", "file:///data", "permissions"),
        (f"https://user:{SECRET}@h/s-{{0..1}}.tar", "https://h/s-{0..1}.tar", "netrc"),
        (f"https://{SECRET}@github.com/x.tar", "https://github.com/x.tar", "netrc"),
    ],
)
def test_credentials_in_a_uri_are_refused_and_never_repeated(
    uri: str, shown: str, hint: str
) -> None:
    for check in (check_uri, open_source):
        with pytest.raises(ConfigError, match="credentials do not belong") as info:
            check(uri)
        message = str(info.value)
        assert SECRET not in message and "AKIAEXAMPLE" not in message and "user" not in message
        assert shown in message and hint in info.value.hint


@pytest.mark.parametrize(
    "uri",
    [
        f"https://h/s-{{0..1}}.tar#access_token={SECRET}",
        f"s3://bucket/data#token={SECRET}",
        f"clearml://abc123#{SECRET}",
        f"file:///data#{SECRET}",
        "s3://bucket/data#",
    ],
)
def test_a_fragment_is_refused_for_every_scheme(uri: str) -> None:
    with pytest.raises(ConfigError, match="fragment") as info:
        open_source(uri)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://bucket/ds/?X-Amz-Signature={SECRET}",
        f"clearml+s3://bucket/p/ds.1?sig={SECRET}",
        f"clearml://abc123?token={SECRET}",
        f"file:///data?v={SECRET}",
        "s3://bucket/ds?",
    ],
)
def test_a_query_is_refused_where_the_scheme_takes_none(uri: str) -> None:
    with pytest.raises(ConfigError, match="query") as info:
        open_source(uri)
    assert SECRET not in str(info.value) and "X-Amz" not in str(info.value)


def test_http_queries_keep_their_rule() -> None:
    assert open_source("https://h/s-{0..1}.tar?v=1").uri.endswith("?v=1")
    with pytest.raises(ConfigError, match="carries credentials") as info:
        open_source(f"https://h/s-{{0..1}}.tar?X-Amz-Signature={SECRET}")
    assert SECRET not in str(info.value)


def test_a_folder_path_is_a_path_not_a_uri(tmp_path) -> None:
    odd = tmp_path / "run#3?final"
    odd.mkdir()
    (odd / "a.bin").write_bytes(b"a")
    source = open_source(str(odd))
    assert source.uri == str(odd) and len(source.resolve()) == 1


# -- minor: a malformed URL is one line naming it, never a traceback -------------------------
@pytest.mark.parametrize(
    "uri",
    ["https://[::1/x.tar", "https://h:99999/x.tar", f"https://u:{SECRET}@[::1/x.tar"],
)
def test_a_malformed_url_is_a_config_error_naming_it(uri: str) -> None:
    with pytest.raises(ConfigError, match="not a valid URI") as info:
        open_source(uri)
    assert SECRET not in str(info.value) and "/x.tar" in str(info.value)


def test_a_url_made_malformed_by_a_brace_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid URL"):
        open_source("https://{[::1],[::1}/x.tar")  # the pattern parses, its second URL not
