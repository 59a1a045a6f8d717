"""Identification losses: Online Instance Matching (OIM, the paper's Eq. 1-4) and the Softmax baseline.

Identity convention (training.datasets.records): labels ``0..L-1`` are labeled identities, ``UNLABELED``
(-1) is an unlabeled person. Background proposals should not reach these losses; labels below -1 are
ignored if they do.

OIM keeps two external buffers, never parameters (paper Fig. 3):

- the lookup table ``lut`` (V, shape (L, D)): one unit feature per labeled identity, updated by momentum;
- the circular queue ``queue`` (U, shape (Q, D)): features of recently seen unlabeled persons.

Ordering within one ``OIMLoss.forward`` in training mode: the logits are computed against a snapshot of
the tables as they were *before* this batch, then the tables are updated with this batch. This is what
Caffe OIM did (loss and gradient from the old tables, update in backward), so the gradient w.r.t. ``x`` is
Eq. 4 with the pre-update ``v`` and ``u``; autograd over the logits against the detached snapshot gives
exactly Eq. 4.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training.datasets.records import UNLABELED

logger = logging.getLogger(__name__)

__all__ = ["OIMLoss", "SoftmaxIDLoss", "build_id_loss", "tables_equal_across_ranks"]


def _distributed_world_size() -> int:
    """World size of the default process group, or 1 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _gather_batches(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every rank's batch in rank order.

    features: (N_r, D) on this rank, labels: (N_r,); N_r may differ between ranks (sizes are gathered
    first and the batches padded to the largest). Returns (sum_r N_r, D) features and (sum_r N_r,) labels,
    identical on every rank.
    """
    world = dist.get_world_size()
    size = torch.tensor([features.shape[0]], dtype=torch.long, device=features.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    largest = max(counts)

    padded_features = features.new_zeros((largest, features.shape[1]))
    padded_features[: features.shape[0]] = features
    padded_labels = labels.new_full((largest,), UNLABELED)
    padded_labels[: labels.shape[0]] = labels
    all_features = [torch.empty_like(padded_features) for _ in range(world)]
    all_labels = [torch.empty_like(padded_labels) for _ in range(world)]
    dist.all_gather(all_features, padded_features)
    dist.all_gather(all_labels, padded_labels)

    gathered_features = torch.cat([f[:n] for f, n in zip(all_features, counts, strict=True)])
    gathered_labels = torch.cat([lab[:n] for lab, n in zip(all_labels, counts, strict=True)])
    return gathered_features, gathered_labels


class OIMLoss(nn.Module):
    """Online Instance Matching loss (paper Eq. 1-3) with its lookup table and circular queue.

    Args:
        num_features: D, the dimension of the L2-normalised identity features.
        num_labeled: L, the number of labeled training identities (5,532 for CUHK-SYSU).
        queue_size: Q, the number of unlabeled features remembered (5,000 in the paper; 0 disables the queue).
        temperature: tau in Eq. 1-2 (0.1 in the paper).
        momentum: gamma of the LUT update ``v_t <- gamma v_t + (1 - gamma) x`` (0.5 as in Caffe OIM).
        sub_sample: None for the exact denominators of Eq. 1-2. With K, each denominator keeps the LUT
            rows of the batch's targets plus K LUT rows and K queue rows drawn uniformly without
            replacement (paper Sec. 3.2 and 5.3). Dropping terms from the partition function can only
            raise p_t, so this optimises a lower bound of Eq. 3 (the sub-sampled loss is <= the exact loss
            for the same tables). The rows are drawn on the CPU from this module's own ``torch.Generator``
            (seeded by ``seed``, its state saved in the state_dict), so a run and its resume draw the same
            rows. One draw per forward, shared by all samples of the batch.
        seed: seed of the sub-sampling generator.
        ignore_empty_queue_slots: False (default, as Caffe OIM) keeps every queue slot in the
            denominator, so a never-written slot (a zero row) adds exp(0) = 1, which is Eq. 1 with
            u_k = 0. True leaves out the slots not yet written since the tables were created; after Q
            unlabeled pushes the two are identical.

    The zero-initialised LUT rows of identities not yet seen also add exp(0), as in Caffe OIM.

    Updates happen only in training mode, under ``torch.no_grad`` with detached features: for each labeled
    sample in batch order, ``v_t <- momentum * v_t + (1 - momentum) * x`` then ``v_t <- v_t / ||v_t||`` (two
    samples of one identity update it one after the other); unlabeled features are written to the queue at
    ``queue_ptr`` with wrap-around, the oldest entries being overwritten. Under torch.distributed with world
    size > 1 the update uses the batches of all ranks, gathered in rank order, so every rank's tables stay
    identical; the loss itself uses only the local batch. Every rank must therefore call ``forward`` in
    training mode the same number of times (also with an empty batch).
    """

    lut: torch.Tensor
    queue: torch.Tensor
    queue_ptr: torch.Tensor
    queue_len: torch.Tensor

    def __init__(
        self,
        num_features: int = 256,
        num_labeled: int = 5532,
        queue_size: int = 5000,
        temperature: float = 0.1,
        momentum: float = 0.5,
        sub_sample: int | None = None,
        seed: int = 0,
        ignore_empty_queue_slots: bool = False,
    ) -> None:
        super().__init__()
        if num_features <= 0 or num_labeled <= 0 or queue_size < 0:
            raise ValueError("num_features and num_labeled must be positive and queue_size non-negative")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if sub_sample is not None and sub_sample < 0:
            raise ValueError(f"sub_sample must be None or >= 0, got {sub_sample}")
        self.num_features = num_features
        self.num_labeled = num_labeled
        self.queue_size = queue_size
        self.temperature = temperature
        self.momentum = momentum
        self.sub_sample = sub_sample
        self.ignore_empty_queue_slots = ignore_empty_queue_slots
        self.register_buffer("lut", torch.zeros(num_labeled, num_features))
        self.register_buffer("queue", torch.zeros(queue_size, num_features))
        # The next slot to write, and how many slots were ever written (capped at Q).
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(seed)

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_labeled={self.num_labeled}, "
            f"queue_size={self.queue_size}, temperature={self.temperature}, momentum={self.momentum}, "
            f"sub_sample={self.sub_sample}"
        )

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """The sub-sampling generator's state, kept in the state_dict so a resume draws the same rows."""
        return {"generator_state": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        # map_location may have moved the state to the GPU; a CPU generator takes a CPU ByteTensor.
        self._generator.set_state(state["generator_state"].cpu())

    def _check_batch(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """(N, D) features and (N,) labels below ``num_labeled``, or a ValueError saying what is wrong."""
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features must be (N, {self.num_features}), got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"labels must be ({features.shape[0]},), got {tuple(labels.shape)}")
        if bool((labels >= self.num_labeled).any()):
            raise ValueError(f"label out of range: labels must be < num_labeled={self.num_labeled}")

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean of -log p_t (Eq. 1) over the labeled samples, then (training mode) update the LUT and queue.

        features: (N, D) L2-normalised identity features; labels: (N,) int, 0..L-1 labeled, -1 unlabeled,
        anything below -1 ignored. Returns a scalar; a batch without labeled samples gives a zero that is
        still connected to ``features`` in the autograd graph.
        """
        self._check_batch(features, labels)
        labels = labels.to(device=features.device, dtype=torch.long)

        loss = self._loss(features, labels)
        if self.training:
            self._update(features, labels)
        return loss

    @torch.no_grad()
    def fill_tables(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
        """Start the tables from known features instead of zeros (before fine-tuning a trained network).

        features: (N, D) identity features, e.g. every annotated person of the training images embedded by the
        network about to be fine-tuned; labels: (N,) as in ``forward``. Each labeled identity's row becomes the
        L2-normalised mean of its features (rows of identities absent from ``labels`` are left as they are);
        the queue is emptied and the unlabeled features are pushed in order (the last Q remain). Returns
        (LUT rows written, queue entries). Call it with the same arguments on every rank under DDP.

        Why: with a zero row, an identity's own logit is 0 and Eq. 4 only pushes its features away from the
        filled rows; with many rarely seen identities (each seen once per epoch) most rows stay empty for much
        of a short fine-tune.
        """
        self._check_batch(features, labels)
        labels = labels.to(device=self.lut.device, dtype=torch.long)
        x = F.normalize(features.to(device=self.lut.device, dtype=self.lut.dtype), dim=1)
        is_labeled = labels >= 0
        sums = torch.zeros_like(self.lut).index_add_(0, labels[is_labeled], x[is_labeled])
        seen = torch.zeros(self.num_labeled, dtype=torch.bool, device=self.lut.device)
        seen[labels[is_labeled]] = True
        self.lut[seen] = F.normalize(sums[seen], dim=1)
        self.queue.zero_()
        self.queue_ptr.zero_()
        self.queue_len.zero_()
        self._push_queue(x[labels == UNLABELED])
        return int(seen.sum().item()), int(self.queue_len.item())

    def _loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean -log p_t over labeled samples against a detached snapshot of the current tables."""
        is_labeled = labels >= 0
        if not bool(is_labeled.any()):
            return features.sum() * 0.0
        x = features[is_labeled]
        targets = labels[is_labeled]
        # The snapshot keeps the pre-update tables alive for backward (Eq. 4 uses them) even though the
        # buffers are updated in place right after; it costs one (L + Q, D) copy per training step.
        lut_rows, target_cols = self._lut_rows(targets)
        queue_rows = self._queue_rows()
        table = torch.cat([self.lut[lut_rows], self.queue[queue_rows]]).detach()
        # Logits in float32 also under autocast: exp(s / tau) over thousands of rows is a partition function.
        with torch.autocast(device_type=features.device.type, enabled=False):
            logits = x.float() @ table.t() / self.temperature
            return F.cross_entropy(logits, target_cols)

    def _lut_rows(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LUT rows in the denominator and each target's column among them.

        targets: (M,) in 0..L-1. Returns rows (R,) sorted and the (M,) positions of the targets in rows.
        """
        device = targets.device
        if self.sub_sample is None or self.sub_sample >= self.num_labeled:
            return torch.arange(self.num_labeled, device=device), targets
        keep = torch.zeros(self.num_labeled, dtype=torch.bool, device=device)
        keep[targets] = True
        drawn = torch.randperm(self.num_labeled, generator=self._generator)[: self.sub_sample]
        keep[drawn.to(device)] = True
        rows = keep.nonzero().squeeze(1)
        return rows, torch.searchsorted(rows, targets)

    def _queue_rows(self) -> torch.Tensor:
        """Queue rows in the denominator: (R,) indices into ``queue``."""
        device = self.queue.device
        available = int(self.queue_len.item()) if self.ignore_empty_queue_slots else self.queue_size
        if self.sub_sample is None or self.sub_sample >= available:
            return torch.arange(available, device=device)
        drawn = torch.randperm(available, generator=self._generator)[: self.sub_sample]
        return drawn.sort().values.to(device)

    @torch.no_grad()
    def _update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Momentum-update the LUT and push unlabeled features to the queue (all ranks' batches under DDP)."""
        x = features.detach().to(self.lut.dtype)
        if _distributed_world_size() > 1:
            x, labels = _gather_batches(x, labels)
        is_labeled = labels >= 0
        self._update_lut(x[is_labeled], labels[is_labeled])
        self._push_queue(x[labels == UNLABELED])

    def _update_lut(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        """Sequential momentum update in batch order. x: (M, D), targets: (M,) in 0..L-1.

        Different identities are independent, so the k-th occurrence of every identity is updated in one
        vectorised round; round k+1 then sees the result of round k: exactly the one-at-a-time order.
        """
        if targets.numel() == 0:
            return
        sorted_targets, order = torch.sort(targets, stable=True)
        _, counts = torch.unique_consecutive(sorted_targets, return_counts=True)
        group_starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        occurrence = torch.empty_like(targets)
        occurrence[order] = torch.arange(targets.numel(), device=targets.device) - group_starts
        for round_index in range(int(counts.max().item())):
            in_round = occurrence == round_index
            rows = targets[in_round]
            blended = self.momentum * self.lut[rows] + (1.0 - self.momentum) * x[in_round]
            self.lut[rows] = F.normalize(blended, dim=1)

    def _push_queue(self, x: torch.Tensor) -> None:
        """Write x (P, D) at the write pointer with wrap-around; if P > Q the last Q survive, as in order."""
        if self.queue_size == 0 or x.shape[0] == 0:
            return
        pushed = x.shape[0]
        slots = (self.queue_ptr + torch.arange(pushed, device=x.device)) % self.queue_size
        if pushed > self.queue_size:
            slots, x = slots[-self.queue_size :], x[-self.queue_size :]
        self.queue[slots] = x
        self.queue_ptr.copy_((self.queue_ptr + pushed) % self.queue_size)
        self.queue_len.copy_(torch.clamp(self.queue_len + pushed, max=self.queue_size))


def tables_equal_across_ranks(module: OIMLoss) -> bool:
    """True when LUT, queue and queue pointer are bitwise identical on all ranks (True when not distributed).

    A collective: every rank must call it. Compares each rank's tables with rank 0's.
    """
    if _distributed_world_size() == 1:
        return True
    state = torch.cat(
        [
            module.lut.flatten(),
            module.queue.flatten(),
            module.queue_ptr.view(1).to(module.lut.dtype),
            module.queue_len.view(1).to(module.lut.dtype),
        ]
    )
    reference = state.clone()
    dist.broadcast(reference, src=0)
    mismatch = torch.tensor([0 if torch.equal(state, reference) else 1], device=state.device)
    dist.all_reduce(mismatch, op=dist.ReduceOp.MAX)
    return int(mismatch.item()) == 0


class SoftmaxIDLoss(nn.Module):
    """The paper's baseline: a learnable linear classifier over the L labeled identities with cross-entropy.

    Unlabeled samples (and anything below 0) are ignored, since they have no class-id (paper Sec. 3.2).

    Args:
        num_features: D.
        num_labeled: L.
        scale: logits = scale * (W x + b); 1.0 is plain cross-entropy.
        bias: whether the classifier has a bias.
    """

    def __init__(self, num_features: int = 256, num_labeled: int = 5532, scale: float = 1.0, bias: bool = True) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.num_labeled = num_labeled
        self.scale = scale
        self.classifier = nn.Linear(num_features, num_labeled, bias=bias)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over labeled samples. features: (N, D), labels: (N,). Returns a scalar.

        A batch without labeled samples gives a zero connected to ``features`` and to the classifier (so
        DDP sees every parameter used).
        """
        labels = labels.to(device=features.device, dtype=torch.long)
        if bool((labels >= self.num_labeled).any()):
            raise ValueError(f"label out of range: labels must be < num_labeled={self.num_labeled}")
        is_labeled = labels >= 0
        if not bool(is_labeled.any()):
            connected = features.sum() + sum(p.sum() for p in self.classifier.parameters())
            return connected * 0.0
        logits = self.scale * self.classifier(features[is_labeled])
        return F.cross_entropy(logits.float(), labels[is_labeled])


_OIM_ONLY_OPTIONS = frozenset(
    {"queue_size", "temperature", "momentum", "sub_sample", "seed", "ignore_empty_queue_slots"}
)


def build_id_loss(kind: str, **kwargs: Any) -> OIMLoss | SoftmaxIDLoss:
    """Build the identification loss named ``kind`` ("oim" or "softmax") from its keyword options.

    So that one config can switch ``kind``, options that only OIM has are dropped for "softmax"; any other
    unknown option is an error.
    """
    if kind == "oim":
        return OIMLoss(**kwargs)
    if kind == "softmax":
        dropped = sorted(_OIM_ONLY_OPTIONS & kwargs.keys())
        if dropped:
            logger.debug("softmax ID loss ignores OIM-only options %s", dropped)
        return SoftmaxIDLoss(**{k: v for k, v in kwargs.items() if k not in _OIM_ONLY_OPTIONS})
    raise ValueError(f"unknown ID loss {kind!r}; expected 'oim' or 'softmax'")
