"""Errors that kilotok raises on bad input. Each message says what was wrong and what to do."""


class KilotokError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug in kilotok."""


class ModelNotFoundError(KilotokError):
    """An unknown model name or a path that does not exist."""


class ModelFormatError(KilotokError):
    """A model file or folder that is missing parts, truncated, corrupt or of an unsupported kind."""


class InvalidRequestError(KilotokError, ValueError):
    """Invalid sampling parameters, prompts or other request fields. `param` names the field at fault
    where the raiser knows it, and `code` is a machine-readable kind (OpenAI's `context_length_exceeded`)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ParallelError(KilotokError):
    """A rank of a tensor- or expert-parallel run failed, stopped or cannot be reached."""
