"""Exceptions shared across the package."""


class UsageError(Exception):
    """Bad input from the user (arguments, files): reported on stderr with exit code 2.

    The message says what was expected, what was found and what to do.
    """


class RuntimeFailure(Exception):
    """Something on the host failed (a program did not load, a daemon died): exit code 1."""


class TargetUnavailable(RuntimeError):
    """A target cannot run on this host (missing tools, no privileges); says what to install."""
