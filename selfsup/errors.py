"""The errors a user can cause and fix; the CLI prints their message without a traceback."""
from selfsup.checkpoint import CheckpointError
from selfsup.config import ConfigError
from selfsup.data import DataError
from selfsup.train import TrainingError

# ImportError: an optional extra is missing (tokenizers, pandas, rdata); its message names the pip command.
USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingError, FileNotFoundError, ImportError)
