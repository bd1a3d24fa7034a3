"""The one exception family of elsviz.

Every message says what is wrong and what to do about it; the app shows it as is.
"""


class ElsvizError(ValueError):
    """Bad input or an impossible request. The message is meant for the user."""
