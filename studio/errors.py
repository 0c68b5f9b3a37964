"""The app's own user errors (a stale page, a missing upload); engine errors pass through as they are."""
from modalities.checks import UserError


class StudioError(UserError):
    """A request the app cannot serve as sent; the message says what to do."""
