"""Input validation from the hardening issue, without network: brace lists counted before they
are expanded, URIs that carry secrets (userinfo, fragments, queries) refused in one place
without repeating them, malformed URLs as one line, and path limits checked at resolve."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from mlstage.errors import ConfigError, UnsafePathError
from mlstage.manifest import Entry, Manifest
from mlstage.paths import safe_relpath
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


# -- minor: path rules for Linux, and limits checked before anything is fetched --------------
def test_a_colon_is_an_ordinary_character_in_a_key() -> None:
    assert safe_relpath("C:x") == "C:x"  # a valid S3 key and POSIX file name
    assert safe_relpath("d/C:/x") == "d/C:/x"
    assert Entry(path="C:x", size=1, locator="C:x").path == "C:x"
    for bad in ("/abs", "../up", "a/../../up", "", "a\x00b", "a\\b"):
        with pytest.raises(UnsafePathError):
            safe_relpath(bad)


def test_a_long_path_is_shown_short_in_its_error() -> None:
    long_key = "/".join(["d" * 200] * 21)
    with pytest.raises(UnsafePathError) as info:
        safe_relpath(long_key, origin="https://h/" + "x" * 5000)
    message = str(info.value)
    assert len(message) < 400 and f"({len(long_key)} bytes)" in message


def test_a_path_too_long_under_its_destination_is_refused(tmp_path: Path) -> None:
    key = "/".join(["k" * 250] * 16)  # 4,015 bytes: a valid path on its own
    manifest = Manifest(source="s3://b/p", entries=[Entry(path=key, size=1, locator=key)])
    with pytest.raises(UnsafePathError, match="longer than a file system allows") as info:
        manifest.check_fits(tmp_path / "cache", what="cache folder (MLSTAGE_CACHE_DIR)")
    assert "MLSTAGE_CACHE_DIR" in info.value.hint and len(str(info.value)) < 400
    short = Manifest(source="s3://b/p", entries=[Entry(path="a/b.bin", size=1, locator="a")])
    short.check_fits(tmp_path / ("x" * 200) / ("y" * 200))  # fits


def test_pipeline_resolve_refuses_what_cannot_fit_in_the_cache(home: Path, tmp_path: Path) -> None:
    from mlstage import pipeline
    from mlstage.settings import get_settings
    from mlstage.specs import DatasetSpec

    data = tmp_path / "data"
    deep = data.joinpath(*["d" * 250] * 15)  # 3,765 bytes under the dataset folder
    deep.mkdir(parents=True)
    (deep / ("n" * 200)).write_bytes(b"x")
    ws = pipeline.Workspace.from_settings(get_settings())
    assert len(str(ws.cache.root)) + 128 + 3966 >= 4096  # too long once in the cache
    with pytest.raises(UnsafePathError, match="longer than a file system allows") as info:
        pipeline.resolve(ws, DatasetSpec(name="d", uri=str(data)))
    assert "MLSTAGE_CACHE_DIR" in (info.value.hint or "")
    assert ws.state.history("d") == []  # refused before its version was recorded


def test_folder_files_named_like_mlstages_own_are_staged_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".mlstage-notes").write_text("kept")
    (tmp_path / "d" / "a.bin").write_bytes(b"a")
    assert [e.path for e in open_source(str(tmp_path / "d")).resolve().entries] == [
        ".mlstage-notes",
        "a.bin",
    ]
