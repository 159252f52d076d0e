"""Exceptions raised by advguard.

Every error a user can cause derives from :class:`AdvguardError`; the CLI prints such errors as one
line (``advguard: error: ...``) instead of a traceback. Errors that are bugs in advguard (an attack
leaving its ε-ball, say) derive from :class:`AdvguardBug` and are never turned into numbers.
"""

from __future__ import annotations


class AdvguardError(Exception):
    """Base class for errors caused by the user's input, data or environment."""


class UnknownNameError(AdvguardError, KeyError):
    """A registry lookup failed; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class InputValidationError(AdvguardError, ValueError):
    """Inputs to a model, attack or defense are malformed (NaN, out of range, bad shape...)."""


class ConfigError(AdvguardError, ValueError):
    """A configuration value or file is invalid."""


class DatasetNotFoundError(AdvguardError, FileNotFoundError):
    """A dataset's files are not where advguard looked; the message says where and how to get
    them."""


class DatasetFormatError(AdvguardError, ValueError):
    """A dataset file exists but is corrupted or not in the expected official format."""


class CheckpointError(AdvguardError, ValueError):
    """A checkpoint cannot be read, is not an advguard checkpoint, or does not match the model."""


class AdvguardBug(RuntimeError):
    """An internal invariant was violated. This is a bug in advguard, never a result."""


class AttackVerificationError(AdvguardBug):
    """An attack produced an invalid adversarial example (non-finite, out of bounds or out of its
    ε-ball)."""


class AdvguardWarning(UserWarning):
    """Something advguard did differently from what was asked (it says so; the CLI prints it as
    ``advguard: warning: ...``)."""


class OutputError(AdvguardError):
    """advguard cannot write where it was asked to (a report file, a run directory), or that place
    holds files advguard did not write, which it never replaces; the message names the path."""


class StoreError(AdvguardError):
    """A record store path is unusable: a directory, a file that is not an advguard record store,
    or a place that cannot be written; the message names the path."""
