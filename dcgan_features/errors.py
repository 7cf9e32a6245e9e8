"""The one exception type that the CLI turns into a single-line message and a non-zero exit."""


class UserError(Exception):
    """A mistake in the user's input (paths, names, configs, checkpoints) with a message that says what to do."""
