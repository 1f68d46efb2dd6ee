"""What every als.web middleware shares: the id's safety floor, the defaults, and the choice of an id.

Private: the public names are re-exported by ``als.web``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from als import AsyncLocalStorage

_App = TypeVar("_App", bound=Callable[..., Any])

# The default validator: uuids (with or without dashes), nginx's $request_id, ULIDs, X-Ray-ish ids.
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}").fullmatch
# The floor under every validator and generator: printable ASCII, no space at either end, 1024 at most.
_SAFE_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,1022}[\x21-\x7e])?").fullmatch
# Names whose values HTTP or the gateway interfaces give a meaning of their own (WSGI keeps two of them
# out of the HTTP_ keys): an id under one would be lost on the way in and break the response.
_HTTP_OWN = frozenset({"connection", "content-length", "content-type", "host", "transfer-encoding"})
# RFC 9110 token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch


def is_valid_request_id(value: str) -> bool:
    """The default validator: 1 to 128 characters, each a letter, digit, ``.``, ``_``, ``:`` or ``-``.

    Accepts uuids (with or without dashes) and nginx's 32-hex ``$request_id``.
    """
    return _VALID_ID(value) is not None


def is_safe_header_value(value: str) -> bool:
    """The floor every id must pass, whatever the validator or generator.

    1 to 1024 characters of printable ASCII (``\\x20``-``\\x7e``), not starting or
    ending with a space. So no id can break a response header (CR, LF), a log
    line (any control character, C1's NEL included), a terminal (escape
    sequences), or a strict HTTP server's header check (space at either end).
    """
    return _SAFE_VALUE(value) is not None


def new_request_id() -> str:
    """The default generator: 32 random hex digits (128 bits from ``os.urandom``).

    The same shape as nginx's ``$request_id`` and ``uuid.uuid4().hex``,
    without building a ``UUID``.
    """
    return os.urandom(16).hex()


def check_header(label: str, header: object) -> None:
    """Raise unless ``header`` (named ``label`` in the error) can name an id's header."""
    if not isinstance(header, str):
        raise TypeError(f"{label} must be str, not {type(header).__name__}")
    if _HEADER_NAME(header) is None:
        raise ValueError(
            f"{label} must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~), got {header!r}"
        )
    if header.lower() in _HTTP_OWN:
        raise ValueError(
            f"{label} must not be a header HTTP itself uses ({', '.join(sorted(_HTTP_OWN))}), got {header!r}"
        )


def argument(function: str) -> Callable[[str], str]:
    """How errors name ``function``'s arguments: ``"WSGIRequestId() argument 'header'"``."""
    return lambda name: f"{function}() argument {name!r}"


class Policy:
    """How a middleware picks a request's id: its options, checked once, and the choice itself.

    ``label(name)`` is how an error names an option (an argument, or a key of a
    settings dict); a bad option is a ``TypeError`` or ``ValueError`` saying so.
    """

    __slots__ = ("_generate", "_header", "_key", "_lower", "_name", "_reject", "_storage", "_trust", "_valid")

    def __init__(
        self,
        storage: AsyncLocalStorage[Any],
        *,
        header: str = "X-Request-ID",
        trust_incoming: bool = True,
        generator: Callable[[], str] | None = None,
        validator: Callable[[str], bool] | None = None,
        on_invalid: Literal["replace", "reject"] = "replace",
        label: Callable[[str], str],
    ) -> None:
        if not isinstance(storage, AsyncLocalStorage):
            raise TypeError(f"{label('storage')} must be an AsyncLocalStorage, not {type(storage).__name__}")
        check_header(label("header"), header)
        if not isinstance(trust_incoming, bool):
            raise TypeError(f"{label('trust_incoming')} must be bool, not {type(trust_incoming).__name__}")
        for name, value in (("generator", generator), ("validator", validator)):
            if value is not None and not callable(value):
                raise TypeError(f"{label(name)} must be callable or None, not {type(value).__name__}")
        if on_invalid not in ("replace", "reject"):
            raise ValueError(f"{label('on_invalid')} must be 'replace' or 'reject', got {on_invalid!r}")
        self._storage = storage
        self._header = header
        self._lower = header.lower()
        self._key = "HTTP_" + header.upper().replace("-", "_")  # WSGI's environ key
        self._name = self._lower.encode("ascii")  # ASGI's header name
        self._trust = trust_incoming
        self._reject = on_invalid == "reject"
        self._generate = new_request_id if generator is None else _checked(label("generator"), generator)
        self._valid = _VALID_ID if validator is None else _floored(validator)

    @property
    def storage(self) -> AsyncLocalStorage[Any]:
        """The storage whose store is the request's id."""
        return self._storage

    @property
    def header(self) -> str:
        """The header name, as configured."""
        return self._header

    def _request_id(self, value: str | None, repeated: bool) -> str | None:
        """The id for a request whose header came as ``value``; None if it must be rejected."""
        if value is None or not self._trust:
            return self._generate()
        if not repeated and "," not in value and self._valid(value):
            return value
        return None if self._reject else self._generate()

    def _bad_request_body(self) -> bytes:
        """The body of the reject-400: names the header, never its value."""
        return f"Bad Request: invalid {self._header} header\n".encode("ascii")


class Wrapper(Policy, Generic[_App]):
    """A ``Policy`` around an application: the base of the WSGI and ASGI middlewares."""

    __slots__ = ("__weakref__", "_app")

    def __init__(
        self,
        app: _App,
        storage: AsyncLocalStorage[Any],
        *,
        header: str = "X-Request-ID",
        trust_incoming: bool = True,
        generator: Callable[[], str] | None = None,
        validator: Callable[[str], bool] | None = None,
        on_invalid: Literal["replace", "reject"] = "replace",
    ) -> None:
        label = argument(type(self).__name__)
        if not callable(app):
            raise TypeError(f"{label('app')} must be callable, not {type(app).__name__}")
        super().__init__(
            storage,
            header=header,
            trust_incoming=trust_incoming,
            generator=generator,
            validator=validator,
            on_invalid=on_invalid,
            label=label,
        )
        self._app = app

    @property
    def app(self) -> _App:
        """The wrapped application."""
        return self._app


def _checked(label: str, generator: Callable[[], str]) -> Callable[[], str]:
    """``generator``, with each id it makes checked against the floor; its value is never shown."""

    def generate() -> str:
        request_id = generator()
        if not isinstance(request_id, str):
            raise TypeError(f"{label} must return str, not {type(request_id).__name__}")
        if _SAFE_VALUE(request_id) is None:
            raise ValueError(
                f"{label} returned a str that is not a safe header value"
                " (1 to 1024 printable ASCII characters, no space at either end)"
            )
        return request_id

    return generate


def _floored(validator: Callable[[str], bool]) -> Callable[[str], bool]:
    """``validator``, called only on values that pass the floor; one that raises rejects the value."""

    def valid(value: str) -> bool:
        if _SAFE_VALUE(value) is None:
            return False
        try:
            return bool(validator(value))
        except Exception:
            # Dropped, not raised: its message may quote the untrusted value
            # (int()'s does), and a raised error would take it into the logs.
            return False

    return valid
