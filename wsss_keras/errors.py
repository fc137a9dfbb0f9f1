"""Errors a user can act on. Each message names the file or value and the fix."""


class WSSSError(Exception):
    """Base class for errors that the CLI reports as one line, without a traceback."""


class DataError(WSSSError):
    """A dataset file is missing, unreadable or holds a value that does not fit the dataset."""


class BackendError(WSSSError):
    """The requested Keras backend cannot be used in this process."""


class ModelError(WSSSError):
    """A model file is missing, unreadable, or holds a model the pipelines cannot use."""


class RecipeError(WSSSError):
    """A recipe file is missing, malformed, or holds an unknown key or a bad value."""
