"""Errors the CLI reports as one line, without a traceback."""


class UserError(Exception):
    """Bad input from the user: a config, a path, an argument. Printed as one line, exit 2."""
