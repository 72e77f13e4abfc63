"""s3_memo without an endpoint: when a remembered endpoint may be used, and what keys it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlstage.sources.s3_get import FastGets, GetTemplate
from mlstage.sources.s3_memo import EndpointMemo, configuration_key, environment_credentials

TEMPLATE = GetTemplate("http", "127.0.0.1:9", "/b/", "us-east-1", "s3", "ua")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for k in list(os.environ):
        if k.startswith("AWS_") or k.lower().endswith("_proxy") or k.startswith("MLSTAGE_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    return monkeypatch


def test_only_static_environment_credentials_qualify(aws_env: pytest.MonkeyPatch) -> None:
    creds = environment_credentials()
    assert creds is not None and creds.get_frozen_credentials().secret_key == "s3cr3t-value"
    assert "s3cr3t" not in repr(creds)
    aws_env.setenv("AWS_SESSION_TOKEN", "tok")
    assert environment_credentials().get_frozen_credentials().token == "tok"  # type: ignore[union-attr]
    for var, value in [
        ("AWS_CREDENTIAL_EXPIRATION", "2030-01-01T00:00:00Z"),  # botocore would refresh them
        ("HTTPS_PROXY", "http://proxy:3128"),
        ("MLSTAGE_S3_BOTO3_READS", "1"),
    ]:
        with pytest.MonkeyPatch.context() as m:
            m.setenv(var, value)
            assert environment_credentials() is None, var
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    assert environment_credentials() is None  # a profile, a role, SSO: botocore's business


def test_the_key_follows_the_configuration_not_the_credentials(
    aws_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = configuration_key("b")
    assert configuration_key("other") != base
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "another")
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDOTHER")
    aws_env.setenv("AWS_SESSION_TOKEN", "tok")
    assert configuration_key("b") == base
    for var, value in [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:10"),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
        ("AWS_PROFILE", "minio"),
    ]:
        with pytest.MonkeyPatch.context() as m:
            m.setenv(var, value)
            assert configuration_key("b") != base, var
    (tmp_path / "aws-config").write_text("[default]\ns3 =\n  addressing_style = virtual\n")
    assert configuration_key("b") != base


def test_remember_recall_forget(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    memo = EndpointMemo(tmp_path / "endpoints")
    assert memo.recall("b") is None
    memo.remember("b", FastGets(TEMPLATE, None, verify=False))
    (path,) = memo.folder.glob("*.json")
    assert "s3cr3t" not in path.read_text() and "AKIDEXAMPLE" not in path.read_text()
    fast = memo.recall("b")
    assert fast is not None and fast.template == TEMPLATE and fast.verify is False
    assert fast.remembered and not fast.proven
    assert memo.recall("b") is fast  # one pool per process
    assert memo.recall("c") is None
    memo.forget("b")
    assert memo.recall("b") is None and not path.exists()


@pytest.mark.parametrize(
    "content",
    ["", "{", '{"format": 99}', json.dumps({"format": 1, "bucket": "b", "template": {}})],
)
def test_an_unreadable_memo_is_ignored(
    aws_env: pytest.MonkeyPatch, tmp_path: Path, content: str
) -> None:
    memo = EndpointMemo(tmp_path / "endpoints")
    memo.remember("b", FastGets(TEMPLATE, None, verify=False))
    (path,) = memo.folder.glob("*.json")
    path.write_text(content)
    import mlstage.sources.s3_memo as m

    m._live.clear()
    assert memo.recall("b") is None


def test_remembering_into_an_unwritable_folder_only_costs_speed(
    aws_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    EndpointMemo(blocker / "endpoints").remember("b", FastGets(TEMPLATE, None, verify=False))
    assert blocker.read_text() == "not a folder"


def test_a_memo_naming_another_host_than_the_environment_is_not_used(
    aws_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dataclasses

    import mlstage.sources.s3_memo as m

    memo = EndpointMemo(tmp_path / "endpoints")
    for template, usable in [
        (TEMPLATE, True),  # AWS_ENDPOINT_URL's host, path style
        (dataclasses.replace(TEMPLATE, netloc="b.127.0.0.1:9", path_prefix="/"), True),
        (dataclasses.replace(TEMPLATE, netloc="attacker.example:9"), False),
        (dataclasses.replace(TEMPLATE, scheme="https"), False),  # not the configured scheme
    ]:
        m._live.clear()
        memo.remember("b", FastGets(template, None, verify=False))
        assert (memo.recall("b") is not None) is usable, template
    aws_env.delenv("AWS_ENDPOINT_URL")  # AWS itself: only its own hosts, over https
    for netloc, scheme, usable in [
        ("b.s3.eu-west-1.amazonaws.com", "https", True),
        ("s3.amazonaws.com", "http", False),
        ("s3.example.com", "https", False),
    ]:
        m._live.clear()
        aws = GetTemplate(scheme, netloc, "/", "eu-west-1", "s3", "ua")
        memo.remember("b", FastGets(aws, None, verify=True))
        assert (memo.recall("b") is not None) is usable, netloc
