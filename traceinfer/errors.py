"""Errors that name the problem and the limit."""


class TraceinferError(Exception):
    """Base of every error traceinfer raises on purpose."""


class InvalidRequestError(TraceinferError, ValueError):
    """A request or its sampling parameters cannot be served as given."""


class ModelLoadError(TraceinferError):
    """A model directory or name cannot be loaded."""


class ConfigError(TraceinferError, ValueError):
    """A configuration key has a bad value."""


class BackendUnavailableError(TraceinferError, RuntimeError):
    """An attention backend or device was asked for that this machine cannot provide."""


class RunDirError(TraceinferError):
    """A path is not a readable run directory, or a stream or column asked of it does not exist."""


class IngestError(TraceinferError):
    """A foreign capture (py-spy, torch.profiler, nsys, a memory snapshot) cannot be read as one."""
