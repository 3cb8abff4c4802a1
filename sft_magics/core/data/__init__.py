"""Data: a source (file, folder, variable, Hub dataset) read a chunk at a time, mapped to your columns,
validated and normalised into one of TRL's formats, and kept as one Arrow dataset (in memory, or on
disk past a size). The face: what other packages and users reach for."""

from .load import detect_format, load_data, sample_data, train_val_split
from .spec import check_dataset_value, load_dataset_spec
from .types import DataError, LoadedData, RowProblem

__all__ = [
    "DataError",
    "LoadedData",
    "RowProblem",
    "check_dataset_value",
    "detect_format",
    "load_data",
    "load_dataset_spec",
    "sample_data",
    "train_val_split",
]
