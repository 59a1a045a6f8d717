"""OIM under DDP: two CPU ranks (gloo) with different batches keep identical tables, equal to one process
that sees the ranks' batches concatenated in rank order."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from training.datasets.records import UNLABELED
from training.losses import OIMLoss, tables_equal_across_ranks

WORLD_SIZE = 2
STEPS = 6
D, L, Q = 4, 6, 5


def _make_loss() -> OIMLoss:
    return OIMLoss(num_features=D, num_labeled=L, queue_size=Q, temperature=0.1, momentum=0.5)


def _batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-specific batch: unequal sizes, repeated identities within and across ranks, unlabeled persons."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    if rank == 0:
        labels = torch.tensor([step % L, UNLABELED, (step + 1) % L, step % L, UNLABELED, -2][: 5 + step % 2])
    else:
        labels = torch.tensor([(step + 1) % L, UNLABELED, 3])
    features = F.normalize(torch.randn(labels.numel(), D, generator=generator), dim=1)
    return features, labels


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        loss_fn = _make_loss()
        losses = []
        for step in range(STEPS):
            features, labels = _batch(step, rank)
            features.requires_grad_(True)
            loss = loss_fn(features, labels)
            loss.backward()
            assert features.grad is not None
            losses.append(loss.item())
        in_sync = tables_equal_across_ranks(loss_fn)
        state = {name: buffer.clone() for name, buffer in loss_fn.named_buffers()}
        if rank == 1:
            loss_fn.lut[0, 0] += 1.0
        detects_drift = not tables_equal_across_ranks(loss_fn)
        torch.save(
            {
                "state": state,
                "losses": losses,
                "in_sync": in_sync,
                "detects_drift": detects_drift,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _single_process_reference() -> tuple[dict[str, torch.Tensor], list[list[float]]]:
    """Tables after updating with the concatenated batches; each rank's local loss on the shared tables."""
    reference = _make_loss()
    losses: list[list[float]] = [[] for _ in range(WORLD_SIZE)]
    for step in range(STEPS):
        batches = [_batch(step, rank) for rank in range(WORLD_SIZE)]
        reference.eval()
        for rank, (features, labels) in enumerate(batches):
            losses[rank].append(reference(features, labels).item())
        reference.train()
        reference(torch.cat([f for f, _ in batches]), torch.cat([lab for _, lab in batches]))
    return reference.state_dict(), losses


def test_ddp_ranks_keep_identical_tables_equal_to_the_concatenated_batch_run(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]
    expected_state, expected_losses = _single_process_reference()

    for rank, result in enumerate(results):
        assert result["in_sync"], rank
        assert result["detects_drift"], rank
        for name in ("lut", "queue", "queue_ptr", "queue_len"):
            assert torch.equal(result["state"][name], results[0]["state"][name]), (rank, name)
            torch.testing.assert_close(result["state"][name], expected_state[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(result["losses"], expected_losses[rank], rtol=1e-5, atol=1e-6)
    assert expected_state["queue_len"].item() == Q  # the queue wrapped around during the run
    assert (expected_state["lut"].norm(dim=1) > 0).sum() >= 4  # several identities were written
