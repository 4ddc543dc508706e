"""The processes of a run (plain, `accelerate launch` or `torchrun`) and each one's share of the records."""

from dataclasses import dataclass
from typing import Any, List, Sequence

from .dependencies import require


@dataclass
class ProcessGroup:
    r"""
    This process's place among the run's processes.

    Args:
        index (`int`): This process's rank, 0 to `count - 1`.
        count (`int`): How many processes explain records.
        device (`str`): The device accelerate gives this process (its own GPU under a launcher).
    """

    index: int
    count: int
    device: str
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        r"""Wait until every process gets here (nothing to wait for in a plain run)."""
        if self.count > 1:
            self.state.wait_for_everyone()


def process_group(cpu: bool = False) -> ProcessGroup:
    r"""
    The run's processes as accelerate sees them: one in a plain run, `N` under `accelerate launch --num_processes N`
    or `torchrun --nproc-per-node N` (each with its own GPU when there are GPUs).

    Args:
        cpu (`bool`, *optional*, defaults to `False`): Keep every process on the CPU.
    """
    accelerate = require("accelerate")
    state = accelerate.PartialState(cpu=cpu)
    return ProcessGroup(index=state.process_index, count=state.num_processes, device=str(state.device), state=state)


def share(items: Sequence, index: int, count: int) -> List:
    r"""Process `index`'s share of `items` out of `count`: every `count`-th item from position `index` (balanced, and
    fixed by the order alone)."""
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is outside 0..{count - 1}")
    return list(items[index::count])
