"""DDP on CPU (gloo): two ranks agree, and equal single-process training with the same global batch.

BatchNorm: torch's SyncBatchNorm does not run on CPU, so each gloo rank normalises with its own
batch's statistics (on CUDA fiacli converts to SyncBatchNorm). The single-process run that computes
the same thing is therefore batch b with ``grad_accum = world_size``, not batch ``world_size·b``:
with b = 1 the micro-batches are exactly the ranks' batches (DistributedSampler deals the same
permutation out with stride world_size), so BatchNorm statistics and the class-weighted CE
normaliser (Σw over each micro-batch) match, and only the order of the gradient sum differs.

Unused parameters: ``go_embedding`` is switched on here; it is never used in forward and is frozen
before DDP wraps the model, so DDP needs no ``find_unused_parameters`` (it would otherwise fail on
the second step). The run takes two optimiser steps to prove it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from train_helpers import make_synth, tiny_config, tiny_overrides

pytestmark = pytest.mark.slow

STEPS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(data: Path, out: Path, **extra):
    model = {**tiny_overrides(data, out)["model"], "go_embedding": True}
    return tiny_config(
        data, out, image_size=64, batch_size=1, epochs=1, max_steps=STEPS, model=model,
        drop_path=0.0, **extra,
    )  # fmt: skip


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from fiacli.training import distributed
    from fiacli.training.loop import Trainer

    trainer = Trainer(_config(Path(data), Path(out)))
    assert trainer.dist.world_size == world and type(trainer.ddp_model).__name__ == (
        "DistributedDataParallel"
    )
    trainer.fit()
    # parameters only: BatchNorm running statistics are per rank (DDP broadcasts rank 0's at each
    # forward, and checkpoints are written by rank 0)
    params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    torch.save(params, Path(out) / f"rank{rank}.pt")
    distributed.teardown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("ddp") / "data", size=64)


def test_two_gloo_ranks_agree_and_match_single_process(data, tmp_path):
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(out)), nprocs=2, join=True)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"ranks disagree after {STEPS} DDP steps: {differ[:3]}"

    from fiacli.training.loop import Trainer

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(_config(data, tmp_path / "single", grad_accum=2))
        init = {k: v.clone() for k, v in single.model.state_dict().items()}
        single.fit()
    finally:
        torch.set_num_threads(n)
    ref = dict(single.model.named_parameters())
    moved = [k for k in ref if not torch.equal(ref[k], init[k])]
    assert len(moved) > 50  # the comparison is about trained weights, not untouched ones
    for key in moved:
        torch.testing.assert_close(r0[key], ref[key].detach(), rtol=1e-4, atol=1e-6, msg=key)
    # go_embedding exists, was never updated, and did not break DDP
    go = [k for k in ref if "go_embedding" in k]
    assert go and all(torch.equal(ref[k], init[k]) and torch.equal(r0[k], init[k]) for k in go)


def test_torchrun_runs_fiacli_train_with_rank0_logging(data, tmp_path):
    cfg = _config(data, tmp_path / "run").to_dict()
    cfg.update(max_steps=None, epochs=2, batch_size=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "fiacli", "train", "--config", str(tmp_path / "c.yaml"), "-o",
         str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    epochs = [line for line in lines if '"kind": "epoch"' in line]
    assert len(epochs) == 2  # written by rank 0 only
    # 16 samples, 2 ranks x batch 2 -> 4 steps per epoch
    assert torch.load(run / "last.state.pt", weights_only=True)["step"] == 8
    assert (run / "best.safetensors").is_file()
