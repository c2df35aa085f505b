"""The data room: data sets on the host, from files to mini-batches.

- :mod:`anycnn.data.idx`: IDX files (the MNIST format), read safely from untrusted input;
- :mod:`anycnn.data.datasets`: data sets by name or directory (:func:`load`, :class:`Dataset`,
  the search path, the embedded MNIST copy in ``data/``);
- :mod:`anycnn.data.preprocessing`: statistics, normalisation, padding, one-of-c targets and
  mini-batch indices;
- :mod:`anycnn.data.download`: ``anycnn download`` (official files, published checksums).

Everything here is NumPy on the host; the training loop moves each mini-batch to the device as
it is used. ``anycnn.datasets`` (the module of 0.1) is this package.
"""

from anycnn.data.datasets import (
    IDX_FILES,
    KNOWN_DATASETS,
    Dataset,
    load,
    search_path,
    user_data_dir,
)
from anycnn.data.idx import DatasetError, read_idx
from anycnn.data.preprocessing import batches, mean_std, normalize, one_hot, pad, scale01

__all__ = [
    "DatasetError",
    "Dataset",
    "KNOWN_DATASETS",
    "IDX_FILES",
    "read_idx",
    "load",
    "search_path",
    "mean_std",
    "normalize",
    "scale01",
    "one_hot",
    "pad",
    "batches",
]
