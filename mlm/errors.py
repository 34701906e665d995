class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""
