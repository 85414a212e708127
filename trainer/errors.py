"""One error hierarchy for the trainer.

Every error that can be detected before training starts is raised before the first optimizer step, and its
message names the file, column, flag or option at fault and says how to fix it. The CLI prints these
messages without a traceback and exits with status 2.
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base class of every error raised by the trainer."""


class TrainConfigError(TrainerError, ValueError):
    """The training configuration is invalid (bad value, unknown key, unreadable config file)."""


class DataError(TrainerError, ValueError):
    """A data file is unreadable or its rows do not fit the task."""


class MissingColumnError(DataError):
    """A column the task needs is not in the data file."""


class EmptyDataError(DataError):
    """A data file has no rows (or no row left that carries a training target)."""


class UnseenLabelError(DataError):
    """The eval file holds a label (or tag) that the training file never shows."""


class IncompatibleMethodError(TrainerError, ValueError):
    """The adapter method does not fit the task or the base model (e.g. LLaMA-Adapter on BERT)."""


class OutputDirExistsError(TrainerError, FileExistsError):
    """The output directory holds files and neither `--overwrite` nor `--resume-from-checkpoint` was given."""


class CheckpointError(TrainerError):
    """A checkpoint to resume from is missing, incomplete, or was written for another model or config."""
