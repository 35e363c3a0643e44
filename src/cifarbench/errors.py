"""The one exception type the CLI turns into a one-line message and exit status 2."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, bad file): no traceback is shown."""
