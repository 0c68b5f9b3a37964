"""User-facing errors of the engine.

Every error a user can cause (a bad expert folder, an input no variant can use, a bad
coefficient) is one of these: its message names the value, says what was expected and
what to do. The CLI and the app show the message alone, never a traceback.
"""


from modalities.checks import UserError


class CompositionError(UserError):
    """A composition cannot be built or run as asked."""


class ExpertError(CompositionError):
    """An expert folder is missing, corrupt, or does not fit the base model."""
