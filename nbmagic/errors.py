"""Errors that name what is at fault; the magics turn them into one-line UsageErrors."""


class NbMagicError(Exception):
    """A user-facing error: its message is one line that names the step, variable or option."""


class PipelineError(NbMagicError):
    """The recorded pipeline is not valid (names, cycles, unknown steps, undefined variables)."""


class SerializationError(NbMagicError):
    """A value could not be stored or loaded."""
