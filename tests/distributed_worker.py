"""Run on every rank by torchrun from tests/test_distributed.py: ``deadrelu.scan`` inside a
process group the script initialised itself (the library path, not the CLI's).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py \
        MODE ARCH.py MODEL.pt DATA.npy OUT.json

MODE ``plain`` scans the model as it is, across the ranks (``group=True``); ``fsdp`` wraps
it with FSDP2 ``fully_shard`` on a CPU device mesh (gloo) first; ``alone`` scans on rank 0
only, without ``group=`` (what a training script's monitor does): no rank waits for another. A DATA path holding ``{rank}`` names each rank's own file,
given to ``deadrelu.scan`` as a path (so its SHA-256 is known). Rank 0 writes OUT.json; an
error prints ``rank R: error: ...`` and exits 2.
"""

from __future__ import annotations

import runpy
import sys

import numpy as np
import torch
import torch.distributed as dist

import deadrelu
from deadrelu.commands.torchrun import exit_now, exit_on_sigterm
from deadrelu.errors import DeadReluError


def main(mode: str, arch: str, model_path: str, data_path: str, out_path: str) -> int:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = runpy.run_path(arch)["Net"]()
    model.load_state_dict(torch.load(model_path, weights_only=True))
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in (model.fc1, model.fc2, model.fc3):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    code = 0
    try:
        data = data_path.format(rank=rank) if "{rank}" in data_path else np.load(data_path)
        if mode == "alone":
            if rank == 0:  # the group is initialised, but this scan was not asked to join it
                deadrelu.scan(model, data, batch_size=5).to_json(out_path)
        else:
            result = deadrelu.scan(model, data, batch_size=5, group=True)
            if rank == 0:
                result.to_json(out_path)
    except DeadReluError as exc:
        # One write per line: print() writes the text and the newline separately, and two ranks
        # sharing torchrun's stderr then interleave ("...61ad7a01f281rank 0: error: ...").
        sys.stderr.write(f"rank {rank}: error: {exc.message}\n")
        sys.stderr.flush()
        code = 2
    exit_on_sigterm(code)  # the ranks agreed: torchrun stopping a slower one must not turn 2 into -15
    dist.barrier()
    dist.destroy_process_group()
    return code


if __name__ == "__main__":
    exit_now(main(*sys.argv[1:6]))
