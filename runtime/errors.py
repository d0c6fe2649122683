"""The one error type users see.

Every stage raises `UserError` (or a subclass) for bad input: one sentence that names the
input and the fix. The CLI turns it into a clean message and a non-zero exit; anything else
that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user, with the fix in the message."""


class PlanFormatError(UserError):
    """A plan file that cannot be read or validated."""


class CheckpointError(UserError):
    """A checkpoint file whose header is missing, malformed or inconsistent."""


class PlanMismatchError(UserError):
    """A plan that does not fit the model it is applied to."""
