"""Errors that the CLI turns into one clear line and an exit code.

``UsageError`` (exit 2) is for bad input the user can fix by changing the command: an unknown backbone, a
missing path, a tap the model cannot give. ``ProbeError`` (exit 1) is for a failure while doing the work: an
unreadable image, non-finite features, a diverging fine-tune. Every message names the thing and the fix.
"""

from __future__ import annotations


class ProbeError(RuntimeError):
    """A failure while doing the work; the CLI prints the message and exits 1."""

    exit_code = 1


class UsageError(ProbeError, ValueError):
    """Bad input that the user can fix; the CLI prints the message and exits 2."""

    exit_code = 2
