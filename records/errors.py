"""The errors of the ground floor. Each is bad input (a config, a path, a spec, a store)
that a command reports as one line, without a traceback, and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config, a path, an argument. Printed as one line, exit 2."""


class SpecError(UserError, ValueError):
    """A job spec that cannot run; the message names the field."""


class OptionError(UserError, ValueError):
    """An export or infer option the job refuses; the message names the option."""


class OutboxError(UserError, ValueError):
    """An outbox that cannot be read; the message names the file and the line."""


class StoreError(UserError):
    """A results store that cannot be opened, read or written; the message names it."""


class StoreMissing(StoreError):
    """A read found no store where it looked: nothing was created there."""
