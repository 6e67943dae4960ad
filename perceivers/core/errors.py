"""Errors that mean "what you passed in is wrong", as opposed to "the code is wrong".

The validation toolkit (:mod:`perceivers.core.validation`) raises :class:`ConfigError` for an invalid value and
:class:`ConfigTypeError` for a value of the wrong type. They are ``ValueError`` / ``TypeError`` subclasses, so a
caller that catches the built-in types keeps working, and both derive from :class:`UserError`: a user-facing
front end (``perceivers`` on the command line) prints a :class:`UserError` as one line and exits with status 2, while
any other exception, a plain ``ValueError`` or ``TypeError`` from inside a computation included, keeps its
traceback. Raise these for checks on what a caller supplied (config fields, settings, flags, file contents); keep
the built-in types for checks on the library's own state, which only a bug can fail.

This module imports nothing from ``perceivers``, so every layer can use it.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors a caller's input causes; the message names the input, its value and what was expected."""


class ConfigError(UserError, ValueError):
    """An invalid value: a config field, a setting, a command-line flag, a file's content."""


class ConfigTypeError(UserError, TypeError):
    """A value of the wrong type."""
