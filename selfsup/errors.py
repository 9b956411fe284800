"""The errors a user can cause and fix; the CLI prints their message without a traceback.

They live here, in a module that imports nothing of selfsup, so that any module can raise them
without importing the code that defines the rest of its neighbours."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and says what is valid."""


class DataError(ValueError):
    """A data set that cannot be used; the message says what was wrong and what to do."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


class TrainingError(RuntimeError):
    """Training stopped; the message says at which step, why, and what was kept."""


# ImportError: an optional extra is missing (tokenizers, pandas, rdata); its message names the pip command.
USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingError, FileNotFoundError, ImportError)
