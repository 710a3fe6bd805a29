"""The one error of a broken checkpoint."""


class CheckpointError(ValueError):
    """A weight file is missing, unreadable, corrupt, or disagrees with config.json."""
