"""The one exception type users see: every message says what to do next."""

from __future__ import annotations


class OstafError(Exception):
    """A problem the user can fix (bad input, missing weights, wrong option).

    Raised instead of library stack traces; the message names the thing at fault
    and the action that fixes it.
    """
