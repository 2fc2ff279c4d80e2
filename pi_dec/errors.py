"""The project's input errors, at the bottom of the house: every module may raise them, none of them imports
anything. Scripts turn them into one line on stderr (pi_dec.run.user_errors)."""


class UsageError(ValueError):
    """Flags or inputs that do not fit together (the message says how to fix them)."""


class UnknownEnvError(ValueError):
    """An env id that no suite knows."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, incomplete, or of the wrong kind."""


class DemoFileError(ValueError):
    """A demonstration file is missing or malformed."""


class MissingAssetError(FileNotFoundError):
    """A PartNet-Mobility model the env needs is not on disk, or its model json is missing or unreadable."""


INPUT_ERRORS = (UsageError, UnknownEnvError, CheckpointError, DemoFileError, MissingAssetError)
