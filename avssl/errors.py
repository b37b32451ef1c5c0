"""Exceptions that carry a one-line, user-facing message.

Command-line entry points catch :class:`AvsslError` and print ``error: <message>`` instead of a
traceback, so every message here must say what was expected and how to fix it.
"""
from __future__ import annotations


class AvsslError(Exception):
    """Base class for errors caused by user input (bad config, data, names), not by bugs."""


class ConfigError(AvsslError, ValueError):
    """A config key, value or file is wrong."""


class UnknownNameError(AvsslError, KeyError):
    """A name looked up in a registry does not exist. ``str()`` gives the message, not a repr."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(AvsslError):
    """A dataset root, index file or manifest is missing or malformed."""


class DecodeError(AvsslError):
    """A media file could not be opened or decoded. ``path`` names the file."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split()) or "unknown error"  # always one line
        super().__init__(f"cannot decode {self.path}: {self.reason}")


class DecodeTimeout(DecodeError):
    """Decoding one file took longer than the per-file time limit."""


class NoAudioError(DecodeError):
    """The file has no audio stream and the caller did not ask for silence instead."""
