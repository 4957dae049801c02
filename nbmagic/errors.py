"""Errors that name what is at fault; the magics turn them into one-line UsageErrors."""


class NbMagicError(Exception):
    """A user-facing error: its message is one line that names the step, variable or option."""


class PipelineError(NbMagicError):
    """The recorded pipeline is not valid (names, cycles, unknown steps, undefined variables)."""


class SerializationError(NbMagicError):
    """A value could not be stored or loaded."""


class RunFailed(Exception):
    """A pipeline run ended with a failed step; fails the cell (Run All and papermill stop) with one line.

    The Run stays reachable as ``.run`` (and as ``%runs last``)."""

    def __init__(self, run: object, message: str) -> None:
        super().__init__(message)
        self.run = run

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a Python traceback
        return [f"RunFailed: {self}"]


class Stopped(KeyboardInterrupt):
    """A stop asked from outside (SIGTERM, an experiment's stop()): ends a run as Ctrl-C does, with its reason."""

    def __init__(self, reason: str = "stopped") -> None:
        super().__init__(reason)
        self.reason = reason


class ExperimentInterrupted(KeyboardInterrupt):
    """Ctrl-C ended ``%katib --wait`` after the experiment's running trials were stopped; fails the cell (Run All
    stops) with one line. The stopped Experiment stays reachable as ``.experiment``
    (``sys.last_value.experiment`` in IPython) and the same ``%katib`` resumes its study."""

    def __init__(self, experiment: object, message: str) -> None:
        super().__init__(message)
        self.experiment = experiment

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a Python traceback
        return [f"KeyboardInterrupt: {self}"]
