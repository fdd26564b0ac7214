"""The one base class of errors meant for the person who caused them.

    try:
        ...
    except SegdemoError as err:  # bad input or environment: show the message, no traceback
        print(f"error: {err}", file=sys.stderr)

Every error segdemo raises for something its caller can fix (a bad image, a model that is
not offered or cannot load, a task the model cannot do, an out-of-range option) derives
from :class:`SegdemoError`, so the CLI, the evaluation command and the app catch this one
class instead of keeping lists. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SegdemoError(ValueError):
    """Bad input or environment. ``str(err)`` is one line saying what is wrong and what to do.

    A ``ValueError``, so callers that catch ``ValueError`` keep working.
    """
