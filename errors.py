"""UserError: what every module raises for bad input, and what the scripts print as one line."""


class UserError(Exception):
    """Bad input from the user: a script prints it as `error: <message>` and exits with status 1."""
