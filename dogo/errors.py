"""Errors the kit raises for user mistakes: the command line prints them as one line, no traceback."""


class DogoError(Exception):
    """Base class for mistakes in user input (config, data, checkpoints, run folders)."""


class ConfigError(DogoError, ValueError):
    """A config key, type or value is wrong; the message names the key."""


class DataError(DogoError, FileNotFoundError):
    """A dataset is missing or malformed; the message says where we looked and how to get it."""


class CheckpointError(DogoError, RuntimeError):
    """A checkpoint or run folder is missing, corrupt or does not match the config."""


class NonFiniteLossError(DogoError, FloatingPointError):
    """A loss became NaN or infinite; the message names the peer and the term."""


def did_you_mean(name: object, choices) -> str:
    """`` (did you mean 'x'?)`` naming the closest of ``choices`` to ``name``, or ``""`` if none is close."""
    import difflib

    near = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""
