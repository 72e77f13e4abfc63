"""Keeping secrets out of the state DB, logs and files: credentials in URIs, parameters, text.

Everything the state DB stores outlives the run that wrote it and is read by anyone who can
query lineage, so the store passes every URI, parameter set and error message through here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

MASK = "***"

# Words that make a parameter name or query key secret (compared per word of the name).
_SECRET_WORDS = {
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "token",
    "key",
    "apikey",
    "credential",
    "credentials",
    "auth",
    "authorization",
    "signature",
    "sig",
    "cookie",
    "passphrase",
    "jwt",
    "bearer",
}
# Whole query keys used by presigned/SAS URLs that the word rule alone would miss.
_SECRET_QUERY_KEYS = {
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "awsaccesskeyid",
    "x-goog-signature",
    "x-goog-credential",
}
# userinfo runs to the last @ before the host's end: a password may itself hold an @
_URL_WITH_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s]+@")
# name=value and name: value, quoted or not: "password=abc" in a DSN, "--hf-token=abc" in a
# command, {'password': 'abc'} or {"secret_key": "abc"} in a printed dict or a pydantic error;
# masked when the name is secret by ``_secret_in_text`` (so "tokenizer=bert" stays readable)
_NAME_AND_SEPARATOR = re.compile(r"([\w.-]+)['\"]?(?:[ \t]*=(?!=)[ \t]*|[ \t]*:[ \t]*)(['\"]?)")
_VALUE = re.compile(r"[^\s'\"&,;]+")
# an Authorization or Cookie header's value, and a bearer token anywhere
_SECRET_HEADER = re.compile(r"(?i)\b(authorization|cookie)(['\"]?\s*[:=]\s*['\"]?)([^\n'\"]+)")
_BEARER = re.compile(r"(?i)\b(bearer)([ \t]+)([A-Za-z0-9._~+/=-]{8,})")
# presigned/SAS query keys: X-Amz-Signature=..., X-Amz-Credential=..., Signature=..., sig=...
_SECRET_QUERY_ASSIGNMENT = re.compile(
    r"(?i)(?<![\w-])(x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
    r"|x-goog-credential|awsaccesskeyid|signature|credential|sig)(=)([^\s'\"&,;]+)"
)
# --name value
_FLAG = re.compile(r"(--[\w-]+)([ \t]+)([^\s-]\S*)")


# In free text a name is secret when its last word is one of these (api_key, hf_token,
# db-password, X-Amz-Signature), not when any word is: "KeyError: 'x'" is no key.
# "key" alone names too much (sort_key, key=2024-01 in a path): only these kinds of key.
_TEXT_SECRET_LAST_WORDS = _SECRET_WORDS - {"pass", "auth", "authorization", "bearer", "sig", "key"}
_SECRET_KEY_KINDS = {"api", "secret", "access", "private", "account", "master", "encryption"}
_SECRET_KEY_KINDS |= {"signing", "ssh", "client", "session", "license", "subscription", "hf"}


def _secret_in_text(name: str) -> bool:
    if name.lower() in _SECRET_QUERY_KEYS:
        return True
    words = _words(name)
    if not words:
        return False
    if words[-1] == "key":
        return len(words) > 1 and words[-2] in _SECRET_KEY_KINDS
    return words[-1] in _TEXT_SECRET_LAST_WORDS


def _mask_assignments(text: str) -> str:
    out, pos = [], 0
    for m in _NAME_AND_SEPARATOR.finditer(text):  # names only: a value may hold the next one
        if m.start() < pos or not _secret_in_text(m.group(1).lstrip("-")):
            continue
        quote = m.group(2)
        if quote:  # a quoted value runs to its closing quote, spaces and all
            end = text.find(quote, m.end())
            value_end = len(text) if end < 0 else end
        else:
            value = _VALUE.match(text, m.end())
            value_end = value.end() if value is not None else m.end()
        if value_end > m.end():
            out += [text[pos : m.end()], MASK]
            pos = value_end
    return "".join(out) + text[pos:]


def _masked_if_secret(m: re.Match[str]) -> str:
    if not _secret_in_text(m.group(1).lstrip("-")):
        return m.group(0)
    return "".join(m.groups()[:-1]) + MASK


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^a-zA-Z0-9]+", spaced.lower()) if w]


# A recorded stand-in for a secret a model loads at run time: ``secret:<Prefect block name>``
# (block names are lowercase letters, digits and dashes). It names where the value is, never
# the value, so it is kept as is where a secret is masked.
SECRET_REF_PREFIX = "secret:"
_SECRET_REF = re.compile(r"secret:([a-z0-9][a-z0-9-]*)")


def secret_ref(block: str) -> str:
    """What the state DB records for a parameter loaded from the Secret block ``block``."""
    return SECRET_REF_PREFIX + block


def secret_block(value: Any) -> str | None:
    """The block name a ``secret:<block>`` reference names; None for any other value."""
    m = _SECRET_REF.fullmatch(value) if isinstance(value, str) else None
    return m.group(1) if m else None


def is_secret_name(name: str) -> bool:
    """True when a parameter or query key name looks like it holds a secret."""
    lowered = name.lower()
    if lowered in _SECRET_QUERY_KEYS:
        return True
    words = _words(name)
    return any(w in _SECRET_WORDS for w in words) or "".join(words) in _SECRET_WORDS


def scrub_uri(uri: str) -> str:
    """``uri`` without user:password@ and without secret query parameters.

    The result still names the same data (scheme, host, path and harmless query keys stay),
    so lineage stays readable; credentials come from blocks or the environment at run time.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return scrub_text(uri)
    if not parts.scheme or not parts.netloc and not parts.query:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = _without_secret_pairs(parts.query) if parts.query else ""
    fragment = _without_secret_pairs(parts.fragment) if "=" in parts.fragment else parts.fragment
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def is_secret_pair(pair: str) -> bool:
    """Whether ``name=value`` (a query or ``;`` parameter, still URL-encoded) is a secret."""
    return is_secret_name(unquote_plus(pair.split("=", 1)[0]))


def _without_secret_pairs(query: str) -> str:
    """``a=1&X-Amz-Signature=s;b=2`` without its secret pairs (``&`` or ``;`` separated)."""
    if ";" not in query:  # the usual form: re-encoded as it always was
        pairs = parse_qsl(query, keep_blank_values=True)
        return urlencode([(k, v) for k, v in pairs if not is_secret_name(k)])
    return "&".join(p for p in re.split(r"[&;]", query) if not is_secret_pair(p))


def scrub_text(text: str) -> str:
    """Free text (an error message, a command line) without credentials.

    Removes user:password@ from URLs and masks values given to secret-looking names
    (``password=...``, ``--api-key ...``).
    """
    text = _URL_WITH_USERINFO.sub(r"\1", text)
    text = _SECRET_HEADER.sub(rf"\1\2{MASK}", text)
    text = _BEARER.sub(rf"\1\2{MASK}", text)
    text = _mask_assignments(text)
    text = _SECRET_QUERY_ASSIGNMENT.sub(rf"\1\2{MASK}", text)
    return _FLAG.sub(_masked_if_secret, text)


def scrub_params(value: Any) -> Any:
    """A JSON-able copy of ``value`` with secret-looking keys masked and URLs scrubbed.

    Walks dicts and lists; a key such as ``password``, ``api_key`` or ``hf_token`` gets its
    value replaced by ``***``; pydantic ``SecretStr``/``SecretBytes`` values are masked too.
    A ``secret:<block>`` reference (see ``secret_ref``) is kept: it names a block, not a value.
    """
    if isinstance(value, Mapping):
        return {
            str(k): MASK if is_secret_name(str(k)) and secret_block(v) is None else scrub_params(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub_params(v) for v in value]
    if type(value).__name__ in {"SecretStr", "SecretBytes"}:
        return MASK
    if secret_block(value) is not None:
        return value
    if isinstance(value, str):  # a URL, or free text such as a command line
        is_url = "://" in value and not any(c.isspace() for c in value)
        return scrub_uri(value) if is_url else scrub_text(value)
    return value


def scrub_params_json(params_json: str) -> str:
    """A recipe's ``params_json`` with secret-looking parameters masked (see ``scrub_params``)."""
    try:
        value = json.loads(params_json)
    except ValueError:
        return scrub_text(params_json)
    return json.dumps(scrub_params(value), sort_keys=True, default=str)
