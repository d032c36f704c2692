"""The base class of every error the user can fix: each entry point (the app, every command) catches this
one type and shows its message; any other exception is a bug."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (an input, a setting, a file, a checkpoint, the network), said in one
    line that names it and, where there is one, the fix."""
