"""OIM loss (paper Eq. 1-4) and the Softmax baseline, checked against values computed by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from training.datasets.records import UNLABELED
from training.losses import OIMLoss, SoftmaxIDLoss, build_id_loss, tables_equal_across_ranks

# A small world: D = 3, L = 3 labeled identities, Q = 2 queue slots, all unit vectors.
V = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
U = [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8]]
X1 = [0.8, 0.6, 0.0]  # target 0: v.x = 0.8, 0.6, 0.0; u.x = 0.96, 0.36
X2 = [0.0, 0.6, 0.8]  # target 2: v.x = 0.0, 0.6, 0.8; u.x = 0.48, 1.00
TAU = 0.5


def _small_oim(**kwargs: Any) -> OIMLoss:
    oim = OIMLoss(num_features=3, num_labeled=3, queue_size=2, temperature=TAU, **kwargs)
    oim.lut.copy_(torch.tensor(V))
    oim.queue.copy_(torch.tensor(U))
    oim.queue_len.fill_(2)
    return oim


def _dot(a: list[float], b: list[float]) -> float:
    return sum(ai * bi for ai, bi in zip(a, b, strict=True))


def _probabilities(x: list[float]) -> tuple[list[float], list[float]]:
    """p over the LUT (Eq. 1) and q over the queue (Eq. 2), written out with explicit exp sums."""
    lut_terms = [math.exp(_dot(v, x) / TAU) for v in V]
    queue_terms = [math.exp(_dot(u, x) / TAU) for u in U]
    partition = sum(lut_terms) + sum(queue_terms)
    return [e / partition for e in lut_terms], [e / partition for e in queue_terms]


def test_loss_is_minus_log_p_target_of_eq1_averaged_over_labeled_samples() -> None:
    oim = _small_oim()
    features = torch.tensor([X1, X2, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2, UNLABELED, -2])

    loss = oim(features, labels)

    partition_1 = math.exp(0.8 / TAU) + math.exp(0.6 / TAU) + math.exp(0.0) + math.exp(0.96 / TAU)
    partition_1 += math.exp(0.36 / TAU)
    partition_2 = math.exp(0.0) + math.exp(0.6 / TAU) + math.exp(0.8 / TAU) + math.exp(0.48 / TAU)
    partition_2 += math.exp(1.0 / TAU)
    expected = -0.5 * (math.log(math.exp(0.8 / TAU) / partition_1) + math.log(math.exp(0.8 / TAU) / partition_2))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_equals_eq4_with_the_pre_update_tables() -> None:
    oim = _small_oim()  # training mode: the tables are updated in place inside forward
    features = torch.tensor([X1, X2, [0.0, 0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 2, UNLABELED])

    oim(features, labels).backward()

    # Eq. 4 is the gradient of log p_t; the loss is -mean(log p_t) over the 2 labeled samples.
    expected = []
    for x, t in ((X1, 0), (X2, 2)):
        p, q = _probabilities(x)
        ascent = [0.0, 0.0, 0.0]
        for j, v in enumerate(V):
            weight = (1.0 - p[j]) if j == t else -p[j]
            ascent = [a + weight * vi for a, vi in zip(ascent, v, strict=True)]
        for k, u in enumerate(U):
            ascent = [a - q[k] * ui for a, ui in zip(ascent, u, strict=True)]
        expected.append([-a / TAU / 2 for a in ascent])
    expected.append([0.0, 0.0, 0.0])  # the unlabeled sample is not in the loss
    assert features.grad is not None
    torch.testing.assert_close(features.grad, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_lut_momentum_update_renormalises_and_applies_repeated_ids_in_order() -> None:
    oim = _small_oim(momentum=0.5)
    features = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    oim(features, torch.tensor([0, 0]))

    # v0 = [1, 0, 0] -> 0.5 v0 + 0.5 [0, 1, 0] = [.5, .5, 0] -> [1/sqrt2, 1/sqrt2, 0]
    # -> 0.5 v0 + 0.5 [0, 0, 1] = [.3536, .3536, .5], norm sqrt(0.5) -> [.5, .5, 1/sqrt2]
    torch.testing.assert_close(oim.lut[0], torch.tensor([0.5, 0.5, 1.0 / math.sqrt(2.0)]))
    torch.testing.assert_close(oim.lut[1:], torch.tensor(V[1:]))  # other identities untouched
    torch.testing.assert_close(oim.queue, torch.tensor(U))  # nothing unlabeled was pushed


def test_lut_momentum_weights_the_old_entry_by_gamma() -> None:
    oim = _small_oim(momentum=0.75)

    oim(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([1]))

    # v1 = [0, 1, 0] -> 0.75 v1 + 0.25 [1, 0, 0] = [.25, .75, 0], norm sqrt(0.625)
    torch.testing.assert_close(oim.lut[1], torch.tensor([0.25, 0.75, 0.0]) / math.sqrt(0.625))


def test_queue_wraps_around_and_overwrites_the_oldest() -> None:
    oim = OIMLoss(num_features=3, num_labeled=3, queue_size=2)
    a, b, c = torch.eye(3)

    oim(a[None], torch.tensor([UNLABELED]))
    assert int(oim.queue_ptr) == 1 and int(oim.queue_len) == 1
    oim(torch.stack([b, c]), torch.tensor([UNLABELED, UNLABELED]))

    torch.testing.assert_close(oim.queue, torch.stack([c, b]))
    assert int(oim.queue_ptr) == 1
    assert int(oim.queue_len) == 2


def test_fill_tables_writes_each_identitys_normalised_mean_and_queues_the_last_unlabeled() -> None:
    oim = OIMLoss(num_features=3, num_labeled=3, queue_size=2)
    oim.lut[2] = torch.tensor([0.0, 0.0, 1.0])  # an identity absent from the fill keeps its row
    oim(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([UNLABELED]))  # an old queue entry, to be replaced
    a, b, c = torch.eye(3)
    feats = torch.stack([a, 2 * b, a, a + c, c, b])  # features need not be unit length: they are normalised
    labels = torch.tensor([0, 0, UNLABELED, UNLABELED, -2, UNLABELED])

    rows, queued = oim.fill_tables(feats, labels)

    assert (rows, queued) == (1, 2)
    torch.testing.assert_close(oim.lut[0], F.normalize(a + b, dim=0))
    assert torch.equal(oim.lut[1], torch.zeros(3))
    torch.testing.assert_close(oim.lut[2], c)
    # Unlabeled in order, the last Q kept (a, then a + c, then b: the queue holds b and a + c).
    torch.testing.assert_close(oim.queue, torch.stack([b, F.normalize(a + c, dim=0)]))
    assert int(oim.queue_len) == 2 and int(oim.queue_ptr) == 1
    # A filled row gives its identity a positive logit from the first step: the loss is below the zero table's.
    x = F.normalize(a + b, dim=0)[None]
    assert float(oim(x, torch.tensor([0]))) < float(
        OIMLoss(num_features=3, num_labeled=3, queue_size=2)(x, torch.tensor([0]))
    )
    with pytest.raises(ValueError, match="out of range"):
        oim.fill_tables(feats[:1], torch.tensor([3]))
    with pytest.raises(ValueError, match="features must be"):
        oim.fill_tables(torch.zeros(2, 4), torch.tensor([0, 1]))


def test_pushing_more_than_the_queue_in_one_batch_matches_pushing_one_by_one() -> None:
    features = F.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    unlabeled = torch.full((5,), UNLABELED)
    at_once = OIMLoss(num_features=3, num_labeled=3, queue_size=2)
    one_by_one = OIMLoss(num_features=3, num_labeled=3, queue_size=2)

    at_once(features, unlabeled)
    for i in range(5):
        one_by_one(features[i : i + 1], unlabeled[i : i + 1])

    torch.testing.assert_close(at_once.queue, one_by_one.queue)
    assert int(at_once.queue_ptr) == int(one_by_one.queue_ptr) == 1


def test_tables_are_buffers_that_receive_no_gradient() -> None:
    oim = _small_oim()
    features = torch.tensor([X1, X2], requires_grad=True)

    oim(features, torch.tensor([0, 2])).backward()

    assert list(oim.parameters()) == []
    assert {"lut", "queue", "queue_ptr", "queue_len"} <= set(dict(oim.named_buffers()))
    assert not oim.lut.requires_grad and oim.lut.grad is None
    assert not oim.queue.requires_grad and oim.queue.grad is None


def test_eval_mode_does_not_update_the_tables() -> None:
    oim = _small_oim().eval()
    before = {name: buffer.clone() for name, buffer in oim.named_buffers()}

    oim(torch.tensor([X1, X2, [0.0, 0.0, 1.0]]), torch.tensor([0, 2, UNLABELED]))

    for name, buffer in oim.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_labels_below_unlabeled_are_ignored() -> None:
    oim = _small_oim()
    reference = _small_oim()
    features = torch.tensor([X1, X2])

    with_background = oim(torch.cat([features, torch.tensor([[0.0, 0.0, 1.0]])]), torch.tensor([0, 2, -2]))
    without = reference(features, torch.tensor([0, 2]))

    assert with_background.item() == pytest.approx(without.item())
    for name, buffer in oim.named_buffers():
        assert torch.equal(buffer, dict(reference.named_buffers())[name]), name


def test_batch_without_labeled_samples_gives_a_connected_zero() -> None:
    oim = _small_oim()
    features = torch.tensor([X1, X2], requires_grad=True)

    loss = oim(features, torch.tensor([UNLABELED, UNLABELED]))
    loss.backward()

    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    assert features.grad is not None and torch.equal(features.grad, torch.zeros(2, 3))
    torch.testing.assert_close(oim.queue, torch.tensor([X1, X2]))  # still pushed into the queue


def test_empty_batch_is_a_zero_and_changes_nothing() -> None:
    oim = _small_oim()
    loss = oim(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    torch.testing.assert_close(oim.lut, torch.tensor(V))


def test_never_written_queue_slots_count_as_exp0_unless_ignored() -> None:
    x = torch.tensor([X1])
    kept = _small_oim().eval()
    ignored = _small_oim(ignore_empty_queue_slots=True).eval()
    for oim in (kept, ignored):
        oim.queue.zero_()
        oim.queue_len.zero_()  # nothing written yet

    lut_sum = math.exp(0.8 / TAU) + math.exp(0.6 / TAU) + math.exp(0.0)
    assert kept(x, torch.tensor([0])).item() == pytest.approx(
        -math.log(math.exp(0.8 / TAU) / (lut_sum + 2 * math.exp(0.0))), rel=1e-6
    )
    assert ignored(x, torch.tensor([0])).item() == pytest.approx(-math.log(math.exp(0.8 / TAU) / lut_sum), rel=1e-6)


def test_sub_sampling_with_zero_extra_rows_keeps_only_the_batch_targets() -> None:
    oim = _small_oim(sub_sample=0)

    loss = oim(torch.tensor([X1, X2]), torch.tensor([0, 2]))

    # Denominators: v0 and v2 only (the batch's targets), no queue rows.
    log_p1 = math.log(math.exp(0.8 / TAU) / (math.exp(0.8 / TAU) + math.exp(0.0 / TAU)))
    log_p2 = math.log(math.exp(0.8 / TAU) / (math.exp(0.0 / TAU) + math.exp(0.8 / TAU)))
    assert loss.item() == pytest.approx(-(log_p1 + log_p2) / 2, rel=1e-6)


def _random_tables(oim: OIMLoss, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    oim.lut.copy_(F.normalize(torch.randn(oim.lut.shape, generator=generator), dim=1))
    oim.queue.copy_(F.normalize(torch.randn(oim.queue.shape, generator=generator), dim=1))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sub_sampled_loss_is_a_lower_bound_of_the_full_loss(seed: int) -> None:
    full = OIMLoss(num_features=4, num_labeled=20, queue_size=10).eval()
    sub = OIMLoss(num_features=4, num_labeled=20, queue_size=10, sub_sample=3, seed=seed).eval()
    _random_tables(full, seed)
    sub.load_state_dict({**sub.state_dict(), "lut": full.lut, "queue": full.queue})
    features = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(100 + seed)), dim=1)
    labels = torch.tensor([0, 5, 5, 19, UNLABELED, 7])

    full_loss = full(features, labels).item()
    for _ in range(5):
        sub_loss = sub(features, labels).item()
        assert math.isfinite(sub_loss)
        assert sub_loss <= full_loss + 1e-6


def test_sub_sampling_is_reproducible_from_the_seed() -> None:
    first = OIMLoss(num_features=4, num_labeled=20, queue_size=10, sub_sample=3, seed=7).eval()
    second = OIMLoss(num_features=4, num_labeled=20, queue_size=10, sub_sample=3, seed=7).eval()
    _random_tables(first, 0)
    _random_tables(second, 0)
    features = F.normalize(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = torch.tensor([1, 2, 3, 4])

    first_losses = [first(features, labels).item() for _ in range(3)]
    second_losses = [second(features, labels).item() for _ in range(3)]
    assert first_losses == second_losses
    assert len(set(first_losses)) > 1  # each forward draws new rows


def test_state_dict_round_trip_keeps_tables_pointer_and_sampling() -> None:
    trained = OIMLoss(num_features=4, num_labeled=5, queue_size=3, sub_sample=2, seed=3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        features = F.normalize(torch.randn(4, 4, generator=generator), dim=1)
        trained(features, torch.tensor([0, 3, UNLABELED, UNLABELED]))

    resumed = OIMLoss(num_features=4, num_labeled=5, queue_size=3, sub_sample=2, seed=99)
    resumed.load_state_dict(trained.state_dict())

    for name, buffer in trained.named_buffers():
        assert torch.equal(buffer, dict(resumed.named_buffers())[name]), name
    assert int(resumed.queue_ptr) == 8 % 3
    features = F.normalize(torch.randn(3, 4, generator=generator), dim=1)
    labels = torch.tensor([1, 2, UNLABELED])
    assert trained(features, labels).item() == resumed(features, labels).item()


def test_tables_equal_across_ranks_is_true_without_distributed() -> None:
    assert tables_equal_across_ranks(_small_oim())


def test_out_of_range_label_is_rejected() -> None:
    with pytest.raises(ValueError, match="out of range"):
        _small_oim()(torch.tensor([X1]), torch.tensor([3]))


def _toy_problem() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 8, generator=generator), dim=1)
    labels = torch.arange(4).repeat(8)
    features = F.normalize(centres[labels] + 0.05 * torch.randn(32, 8, generator=generator), dim=1)
    return features, labels


def test_softmax_baseline_learns_a_separable_toy_problem() -> None:
    torch.manual_seed(0)
    features, labels = _toy_problem()
    loss_fn = SoftmaxIDLoss(num_features=8, num_labeled=4)
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=1.0)

    first = loss_fn(features, labels).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = loss_fn(features, labels)
        loss.backward()
        optimizer.step()

    assert loss.item() < 0.1 * first
    assert (loss_fn.classifier(features).argmax(1) == labels).all()


def test_softmax_baseline_ignores_unlabeled_and_gives_connected_zero_without_labels() -> None:
    loss_fn = SoftmaxIDLoss(num_features=3, num_labeled=3)
    features = torch.tensor([X1, X2, [0.0, 0.0, 1.0]], requires_grad=True)

    with_unlabeled = loss_fn(features, torch.tensor([0, 2, UNLABELED]))
    labeled_only = loss_fn(features[:2], torch.tensor([0, 2]))
    assert with_unlabeled.item() == pytest.approx(labeled_only.item())

    zero = loss_fn(features, torch.tensor([UNLABELED, UNLABELED, -2]))
    zero.backward()
    assert zero.item() == 0.0
    assert loss_fn.classifier.weight.grad is not None
    assert torch.equal(loss_fn.classifier.weight.grad, torch.zeros(3, 3))


def test_build_id_loss_builds_either_kind_from_one_config() -> None:
    config = {"num_features": 8, "num_labeled": 4, "queue_size": 6, "temperature": 0.1}

    oim = build_id_loss("oim", **config)
    softmax = build_id_loss("softmax", **config)

    assert isinstance(oim, OIMLoss) and oim.queue.shape == (6, 8)
    assert isinstance(softmax, SoftmaxIDLoss) and softmax.classifier.weight.shape == (4, 8)
    with pytest.raises(ValueError, match="unknown ID loss"):
        build_id_loss("triplet")
    with pytest.raises(TypeError):
        build_id_loss("softmax", num_feature=8)
