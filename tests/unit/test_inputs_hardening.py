"""Input validation from the hardening issue, without network: brace lists counted before they
are expanded, URIs that carry secrets (userinfo, fragments, queries) refused in one place
without repeating them, malformed URLs as one line, and path limits checked at resolve."""

from __future__ import annotations

import tracemalloc

import pytest

from mlstage.errors import ConfigError
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
