"""Errors that end a grpod command with one clear sentence and exit code 2."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is wrong or a service it names cannot be used.

    The message is one sentence that names the setting and says what to do;
    the command line prints it without a traceback and exits with code 2.
    """


class OperatorError(Exception):
    """An operator asked for something that cannot be done (unknown domain, version, ...).

    Printed as one sentence, exit code 2, nothing changed.
    """


class NotFoundError(OperatorError):
    """What was asked for does not exist: a domain, a version (HTTP 404 where the CLI says it)."""


class SettingError(ValueError):
    """A domain's setting is out of range; the message says which and what is allowed."""
