"""One error type for everything a user can get wrong; the CLI prints it as one line."""


class EconError(ValueError):
    """Bad input, bad configuration or a broken file, with a message naming the problem."""
