"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input or environment the user can fix: reported as one line, never a traceback."""
