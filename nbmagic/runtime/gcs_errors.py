"""One short line for a Cloud Storage failure, for the kernel's store and a compiled step's alike.

Standard library only: google-cloud-storage's exceptions are read by their attributes. No request URL or query
string ever reaches the line (google-cloud-storage writes ``"{method} {url}: {body}"`` into its errors, and a
resumable upload's URL carries its session, a bearer capability): the cause is the server's own error message.
"""

from __future__ import annotations

import http
import json
import re

CREDENTIALS_HINT = (
    "GOOGLE_APPLICATION_CREDENTIALS / gcloud auth application-default login / the pod's workload identity"
)
# anything that looks like a URL, a request path with a query string, or what follows "url:"
_URLISH = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*|(?<=url: )\S+|/\S*\?\S*|\S*upload_id=\S*")


def scrub(text: str, limit: int = 200) -> str:
    """``text`` on one line, without URLs or query strings, at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return _URLISH.sub("<request>", line)[:limit].strip()


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, what it wraps (api_core's RetryError ``cause``, ``__cause__``, ``__context__``), outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8 and all(current is not s for s in seen):
        seen.append(current)
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else (current.__cause__ or current.__context__)
    return seen


def _from_google_auth(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[:2] == ["google", "auth"]


def server_message(exc: BaseException) -> str:
    """The server's own words for an HTTP failure: its JSON ``error.errors[].message``/``error.message``, else
    the status's name. Never the exception's text (it holds the request's URL)."""
    for error in getattr(exc, "errors", None) or ():
        if isinstance(error, dict) and (error.get("message") or error.get("reason")):
            return scrub(error.get("message") or error.get("reason"))
    response = getattr(exc, "response", None)
    text = getattr(response, "text", None)
    if isinstance(text, str) and text.strip():
        try:
            error = json.loads(text).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict) and error.get("message"):
            return scrub(error["message"])
        if isinstance(error, str):
            return scrub(error)
    code = getattr(exc, "code", None)
    try:
        return http.HTTPStatus(int(code)).phrase
    except (TypeError, ValueError):
        return type(exc).__name__


def status(exc: BaseException) -> int | None:
    """The HTTP status of a google-api-core error (through a RetryError), else None."""
    for item in _chain(exc):
        code = getattr(item, "code", None)
        if isinstance(code, int) and hasattr(item, "errors"):
            return code
    return None


def http_error(exc: BaseException) -> BaseException | None:
    for item in _chain(exc):
        if isinstance(getattr(item, "code", None), int) and hasattr(item, "errors"):
            return item
    return None


def reason(exc: BaseException, hint: str = CREDENTIALS_HINT) -> str:
    """A short cause for a google-cloud-storage failure: no URL, no credential value, one line."""
    chain = _chain(exc)
    for item in chain:
        name = type(item).__name__
        if name == "DefaultCredentialsError":
            return f"no credentials: set up Application Default Credentials ({hint})"
        if _from_google_auth(item):  # RefreshError, TransportError, InvalidOperation (a 401 on anonymous use)...
            said = scrub(item.args[0] if item.args else "", 160)
            return f"the credentials could not be used ({name}{': ' + said if said else ''}): check {hint}"
    error = http_error(exc)
    if error is not None:
        code, message = error.code, server_message(error)
        if code in (401, 403):
            return f"access denied ({code}: {message}): check the credentials ({hint}, or the store secret)"
        return f"{code} {message}"
    root = chain[-1]
    for item in chain:  # requests' ConnectionError wraps urllib3's: name the innermost that says something
        inner = getattr(item, "reason", None)
        if isinstance(inner, BaseException):
            root = inner
    text = scrub(root.args[0] if root.args and isinstance(root.args[0], str) else root, 160)
    name = next((type(item).__name__ for item in chain if type(item).__name__ != "RetryError"), "RetryError")
    return f"network error ({name}: {text})" if text else f"network error ({name})"
