r"""
Explain a prompt set on one or many processes (`accelerate launch`, `torchrun`), resumable, each record written
exactly once to Parquet shards: `explain_dataset`, and the `diffusers-interpret batch` command. Needs the `batch`
extra: `pip install "diffusers-interpret[batch]"`.
"""

from .maps import read_maps
from .records import Record, read_records
from .runner import BatchOutput, explain_dataset
from .toy_truth import ToyTruth, toy_truth

__all__ = ["BatchOutput", "Record", "ToyTruth", "explain_dataset", "read_maps", "read_records", "toy_truth"]
