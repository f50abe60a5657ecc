"""Errors that end a command with a clear message and a non-zero exit code."""

from __future__ import annotations


class StartupError(Exception):
    """A problem found while starting (bad token, missing intent, unusable store): exit 2.

    The message is one or two human-readable lines and never contains a secret.
    """

    exit_code = 2
