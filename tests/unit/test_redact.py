"""Secrets never reach the state DB: URIs, parameters and messages are scrubbed first."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from mlstage.redact import is_secret_name, scrub_text
from mlstage.state import mask_url, scrub_params, scrub_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://AKIA123:topsecret@bucket/prefix/", "s3://bucket/prefix/"),
        ("https://user:pw@host:8443/data.tar?x=1", "https://host:8443/data.tar?x=1"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F2026"
            "&X-Amz-Signature=abcdef&X-Amz-Security-Token=tok&versionId=3",
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&versionId=3",
        ),
        ("https://h/f?AWSAccessKeyId=AKIA&Signature=s&Expires=1", "https://h/f?Expires=1"),
        (
            "https://acct.blob.core.windows.net/c/x?sv=2024&sig=abc",
            "https://acct.blob.core.windows.net/c/x?sv=2024",
        ),
        ("https://h/api?token=t&access_token=a&page=2", "https://h/api?page=2"),
        ("https://h/x?a=1;X-Amz-Signature=SIG;b=2", "https://h/x?a=1&b=2"),
        ("https://h/x#access_token=TOK&state=s", "https://h/x#state=s"),
        ("https://h/x#section-2", "https://h/x#section-2"),
        ("/data/local/folder", "/data/local/folder"),
        ("clearml://project/dataset", "clearml://project/dataset"),
        ("file:///srv/nfs/ds", "file:///srv/nfs/ds"),
    ],
)
def test_scrub_uri(uri: str, expected: str) -> None:
    assert scrub_uri(uri) == expected


def test_scrub_params_masks_secret_keys_at_any_depth() -> None:
    params = {
        "lr": 0.1,
        "key_column": "id",  # masked too: names with "key" are treated as secret
        "hfToken": "hf_x",
        "nested": {"db_password": "pw", "layers": [1, 2], "opts": [{"api_key": "k"}]},
        "remote": "s3://AK:SK@b/p",
        "secret_str": SecretStr("x"),
        "epochs": 3,
    }
    out = scrub_params(params)
    assert out == {
        "lr": 0.1,
        "key_column": "***",
        "hfToken": "***",
        "nested": {"db_password": "***", "layers": [1, 2], "opts": [{"api_key": "***"}]},
        "remote": "s3://b/p",
        "secret_str": "***",
        "epochs": 3,
    }
    assert params["nested"]["db_password"] == "pw"  # the caller's dict is untouched


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "PASSWORD",
        "aws_secret_access_key",
        "AccessKeyId",
        "x-amz-signature",
        "Authorization",
        "clientSecret",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["lr", "batch_size", "dataset", "monkey", "passes", "tokenizer_name_len"]
)
def test_harmless_names(name: str) -> None:
    assert not is_secret_name(name)


def test_scrub_text_removes_userinfo_from_urls_in_messages() -> None:
    msg = "GET https://bob:hunter2@host/x failed; retry postgresql://u:p@db/x"
    assert scrub_text(msg) == "GET https://host/x failed; retry postgresql://db/x"


def test_scrub_params_scrubs_free_text_values_too() -> None:
    params = {"cmd": "train --db-password=hunter2 --token abc", "passphrase": "P1", "jwt": "J1"}
    assert scrub_params(params) == {
        "cmd": "train --db-password=*** --token ***",
        "passphrase": "***",
        "jwt": "***",
    }


def test_mask_url_hides_the_password() -> None:
    assert mask_url("postgresql+psycopg://bob:hunter2@db:5432/state") == (
        "postgresql+psycopg://bob:***@db:5432/state"
    )
    assert mask_url("sqlite:////tmp/state.db") == "sqlite:////tmp/state.db"
    assert "hunter2" not in mask_url("not a url://bob:hunter2@host")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "python train.py --hf-token abc123 {data_dir}",
            "python train.py --hf-token *** {data_dir}",
        ),
        ("python train.py --api-key=abc123 --lr 0.1", "python train.py --api-key=*** --lr 0.1"),
        ("host=db password=abc123 dbname=x", "host=db password=*** dbname=x"),
        ("Tokenizer failed on sample 3", "Tokenizer failed on sample 3"),
        ("python train.py --epochs 3 {data_dir}", "python train.py --epochs 3 {data_dir}"),
        ("https://user:p@ss@host/x failed", "https://host/x failed"),
        ("{'password': 'hunter2', 'api_key': 'K123'}", "{'password': '***', 'api_key': '***'}"),
        ('{"secret_key": "S3CR3T", "lr": 0.1}', '{"secret_key": "***", "lr": 0.1}'),
        ("input_value={'password': 'hunter2'}", "input_value={'password': '***'}"),
        ("Authorization: Bearer hf_LIVE_TOKEN", "Authorization: ***"),
        ("sent bearer hf_LIVE_TOKEN_123", "sent bearer ***"),
        (
            "the basic model failed; authorization is fine",
            "the basic model failed; authorization is fine",
        ),
        ("train --tokenizer=bert --tokenizer-dir /m", "train --tokenizer=bert --tokenizer-dir /m"),
        ("hf_token: abc, key_column=id, retries: 3", "hf_token: ***, key_column=id, retries: 3"),
        ("fit failed: KeyError: 'nope'", "fit failed: KeyError: 'nope'"),
        ("s3://b/raw/key=7/p.parquet: not found", "s3://b/raw/key=7/p.parquet: not found"),
        (
            "eval --key-column id --pass-k 10 --sig-level 0.05",
            "eval --key-column id --pass-k 10 --sig-level 0.05",
        ),
        ("HF_TOKEN='abc def' then", "HF_TOKEN='***' then"),
        ("password=ab}cd token == None", "password=*** token == None"),
        (
            "aws_secret_access_key = AbC, X-Amz-Signature=s",
            "aws_secret_access_key = ***, X-Amz-Signature=***",
        ),
    ],
)
def test_scrub_text_masks_secret_assignments_and_flags(text: str, expected: str) -> None:
    assert scrub_text(text) == expected
