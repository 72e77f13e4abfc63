"""State DB URLs: read strictly, shown only masked.

``mask_url`` is the one way a state DB URL reaches a message or a log: the password becomes
``***``, and so does every query value whose key names a secret (``password``,
``sslpassword``, ``api_key``...). Query keys that name a file (``passfile``, ``sslkey``,
``sslcert``, ``sslrootcert``) stay readable: the path holds no secret and says where to look.

A user name or password with an unescaped ``@`` (or a user name with a ``/``) cannot be told
apart from the host: SQLAlchemy ends the password at the first ``@`` and reads the rest of it
as the host or the database. Such a URL is masked from ``://`` to its last ``@``, and
``parse_state_url`` refuses it, with a hint, rather than connect to a host made of pieces of
the password and print them in the driver's error.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from pydantic import SecretStr
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from mlstage.errors import StateError
from mlstage.redact import MASK, is_secret_name, scrub_text

URL_HINT = "e.g. sqlite:////path/state.db or postgresql+psycopg://user@host:5432/db"
_ESCAPE_HINT = (
    "percent-encode special characters in the user name and password: @ as %40, / as %2F, "
    ": as %3A, ? as %3F, # as %23"
)
# libpq's secret parameters; is_secret_name covers the generic ones (password, api_key, ...)
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passwd", "pwd"})
_SECRET_SUFFIXES = ("password", "passwd", "passphrase", "secret", "token")


def _secret_key(key: str) -> bool:
    name = unquote_plus(key).strip().lower()
    return name in _SECRET_QUERY_KEYS or name.endswith(_SECRET_SUFFIXES) or is_secret_name(name)


def _mask_query(text: str) -> str:
    """``text`` with the secret values of its query (after the first ``?``) masked."""
    base, sep, query = text.partition("?")
    if not sep:
        return text
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        # a harmless key whose value still carries an assignment (options=-c password=x)
        hidden = _secret_key(key) or scrub_text(unquote_plus(value)) != unquote_plus(value)
        pairs.append(f"{key}{eq}{MASK}" if eq and hidden else pair)
    return f"{base}?{'&'.join(pairs)}"


def _split_userinfo(rest: str) -> tuple[str | None, str, bool]:
    """(userinfo, the rest, doubtful) of what follows ``scheme://``.

    The userinfo runs to the first ``@``, as SQLAlchemy reads it. Doubtful: a second ``@``
    anywhere, or a ``/`` in the user name; then the real password may run past that ``@``
    into what SQLAlchemy would take for the host, the database or the query.
    """
    first = rest.find("@")
    if first < 0:
        return None, rest, False
    if "/" in rest[:first].partition(":")[0]:
        return None, rest, True
    return rest[:first], rest[first + 1 :], "@" in rest[first + 1 :]


def _mask_text(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep:  # not a URL: whatever precedes an @ may be credentials
        _, at, tail = text.rpartition("@")
        return f"{MASK}@{_mask_query(tail)}" if at else _mask_query(text)
    if rest.startswith("/"):  # no host part (sqlite:////path): no credentials before the path
        return f"{scheme}://{_mask_query(rest)}"
    userinfo, remainder, doubtful = _split_userinfo(rest)
    if doubtful:
        return f"{scheme}://{MASK}@{_mask_query(rest.rpartition('@')[2])}"
    if userinfo is None:
        return f"{scheme}://{_mask_query(rest)}"
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{MASK}" if colon else user
    return f"{scheme}://{shown}@{_mask_query(remainder)}"


def mask_url(url: str | URL | SecretStr) -> str:
    """``url`` for messages and logs: no part of its password or of secret query values."""
    try:
        if isinstance(url, SecretStr):
            url = url.get_secret_value()
        if isinstance(url, URL):
            url = url.render_as_string(hide_password=True)
        return _mask_text(str(url))
    except Exception:  # noqa: BLE001 - a message helper must never fail
        return "<unparseable URL>"


def is_doubtful(url: str) -> bool:
    """Whether ``url``'s credentials cannot be told from its host (an unescaped ``@``)."""
    scheme, sep, rest = url.partition("://")
    return bool(sep) and not rest.startswith("/") and _split_userinfo(rest)[2]


def parse_state_url(url: str) -> URL:
    """``url`` parsed; a StateError (one line, URL masked, with a hint) when it is malformed.

    Malformed: not ``kind://...``; a user name or password with an unescaped ``@``; a port
    that is not a number from 1 to 65535. The driver's own parse error is never shown: when
    a password is misread as a host or a port, that text is a piece of the password.
    """
    masked = mask_url(url)
    if is_doubtful(url):
        raise StateError(
            f"cannot tell the password from the host in the state DB URL {masked}",
            hint=_ESCAPE_HINT,
        )
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StateError(f"not a database URL: {masked}", hint=URL_HINT) from exc
    except (ValueError, TypeError) as exc:  # int(port) failed: "host:notaport", "[::1"
        raise StateError(
            f"malformed host or port in the state DB URL {masked}",
            hint="the port must be a number from 1 to 65535; an IPv6 host is written in "
            "brackets: [::1]:5432",
        ) from exc
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise StateError(
            f"port {parsed.port} out of range in the state DB URL {masked}",
            hint="the port must be a number from 1 to 65535",
        )
    return parsed


def secrets_of(url: URL) -> list[str]:
    """The password and secret query values of ``url``: what must never appear in a message."""
    values = [url.password] if url.password else []
    for key, value in url.query.items():
        if _secret_key(key):
            values += [value] if isinstance(value, str) else list(value)
    return [str(v) for v in values if v]


def without_secrets(text: str, url: URL) -> str:
    """``text`` (a driver's message) with any of ``url``'s secrets in it masked."""
    for secret in sorted(secrets_of(url), key=len, reverse=True):
        if len(secret) >= 3:  # a one- or two-character password would mask half the message
            text = text.replace(secret, MASK)
    return text
