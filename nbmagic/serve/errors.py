"""Serving errors: one line naming the model, function, object or option at fault."""

from __future__ import annotations

from nbmagic.errors import NbMagicError


class ServeError(NbMagicError):
    """Serving could not proceed (packaging, starting, requesting or submitting)."""


class ServerFailed(ServeError):
    """The model server process exited or never became ready; the message carries its log tail."""


class PredictError(ServeError):
    """The server answered a prediction request with an error; the message is the server's."""
