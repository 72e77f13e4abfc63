"""State DB URLs: no piece of a password or of a secret query value is ever shown, and a
malformed URL is one StateError line with a hint, whatever characters the password holds."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from mlstage.errors import StateError
from mlstage.state.url import mask_url, parse_state_url, without_secrets

PW = "Xy7pw"  # a piece of a password no message may show


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://bob:hunter2@db:5432/state",
            "postgresql+psycopg://bob:***@db:5432/state",
        ),
        ("postgresql+psycopg://bob@db/state", "postgresql+psycopg://bob@db/state"),
        ("sqlite:////tmp/a@b/state.db", "sqlite:////tmp/a@b/state.db"),  # a path, no password
        # a password with an unescaped @ or /: masked from :// to the last @
        (f"postgresql+psycopg://bob:sec@ret/{PW}@host/db", "postgresql+psycopg://***@host/db"),
        (f"postgresql+psycopg://bob:{PW}@x@host:5432/db", "postgresql+psycopg://***@host:5432/db"),
        (f"postgresql+psycopg://bob:a@b?{PW}@host/db", "postgresql+psycopg://***@host/db"),
        (f"postgresql+psycopg://bo/b:{PW}@host/db", "postgresql+psycopg://***@host/db"),
        # one @: SQLAlchemy reads it right, / ? # in the password included
        (f"postgresql+psycopg://bob:{PW}/x?y#z@host/db", "postgresql+psycopg://bob:***@host/db"),
        # secret query values, whatever the key's case or encoding; file paths stay
        (
            f"postgresql://u@h/db?sslpassword={PW}&sslkey=/k/client.key&sslmode=require",
            "postgresql://u@h/db?sslpassword=***&sslkey=/k/client.key&sslmode=require",
        ),
        (
            f"postgresql://u@h/db?PASSWORD={PW}&passfile=/p",
            "postgresql://u@h/db?PASSWORD=***&passfile=/p",
        ),
        (f"postgresql://u@h/db?pass%77ord={PW}", "postgresql://u@h/db?pass%77ord=***"),
        (f"postgresql://u@h/db?options=-c%20password%3D{PW}", "postgresql://u@h/db?options=***"),
        (f"not a url bob:{PW}@host", "***@host"),
    ],
)
def test_mask_url_shows_no_piece_of_a_secret(url: str, expected: str) -> None:
    assert mask_url(url) == expected
    assert mask_url(SecretStr(url)) == expected


def test_mask_url_of_a_parsed_url_masks_its_query_too() -> None:
    shown = mask_url(make_url(f"postgresql+psycopg://bob:{PW}@h/db?sslpassword={PW}"))
    assert PW not in shown and "bob:***@h/db" in shown and "sslpassword=***" in shown


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        (f"postgresql+psycopg://bob:sec@ret/{PW}@host/db", "cannot tell the password from"),
        (f"postgresql+psycopg://bob:{PW}@host:notaport/db", "malformed host or port"),
        (f"postgresql+psycopg://bob:{PW}@[::1/db", "malformed host or port"),
        (f"postgresql+psycopg://bob:{PW}@host:99999/db", "port 99999 out of range"),
        (f"not a url at all bob:{PW}@", "not a database URL"),
        (f"postgresql+psycopg://bob:{PW}@word@host:5432/db", "cannot tell the password from"),
    ],
)
def test_a_malformed_url_is_one_line_without_the_password(url: str, expect: str) -> None:
    with pytest.raises(StateError) as info:
        parse_state_url(url)
    msg = str(info.value)
    assert expect in msg and "hint:" in msg and "\n" not in msg and PW not in msg


def test_well_formed_urls_parse() -> None:
    url = parse_state_url("postgresql+psycopg://bob:p%40ss%2Fw@[::1]:5432/db?sslmode=require")
    assert (url.password, url.host, url.port, url.database) == ("p@ss/w", "::1", 5432, "db")
    assert parse_state_url("sqlite:////tmp/a@b/state.db").database == "/tmp/a@b/state.db"


def test_driver_messages_lose_the_secrets_of_their_url() -> None:
    url = make_url(f"postgresql+psycopg://bob:{PW}@h/db?sslpassword=ssl{PW}")
    msg = f'could not read key with passphrase "ssl{PW}" for user bob ({PW})'
    assert PW not in without_secrets(msg, url)
