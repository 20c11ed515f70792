"""The one exception type users see for bad input: a single sentence naming the file and field."""


class CLIPMoEError(ValueError):
    """Bad input (file, config field, checkpoint): the message says what was expected."""
