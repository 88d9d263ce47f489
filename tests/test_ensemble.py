"""Tests for ghostmap.ensemble: the grouped ensemble network, temperature scaling, calibration error."""

import numpy as np
import pytest
import torch

from ghostmap.ensemble import EnsembleNet, fit_temperature
from ghostmap.evaluation import expected_calibration_error
from ghostmap.model import CompactNet


def overconfident(n: int, seed: int, sharpness: float = 4.0):
    """Logits whose softmax is ``sharpness`` times too sure: the true model is softmax(logits / sharpness)."""
    gen = torch.Generator().manual_seed(seed)
    true_logits = 2.0 * torch.randn(n, 3, generator=gen)
    targets = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=gen).squeeze(1)
    return sharpness * true_logits, targets


def test_temperature_scaling_lowers_the_error_on_held_out_data_and_keeps_the_classes():
    fit_logits, fit_targets = overconfident(400, seed=0)
    test_logits, test_targets = overconfident(4000, seed=1)
    temperature = fit_temperature(fit_logits, fit_targets)
    assert 2.5 < temperature < 6.0  # the data were made 4 times too sharp
    before = torch.softmax(test_logits, 1)
    after = torch.softmax(test_logits / temperature, 1)
    assert torch.equal(before.argmax(1), after.argmax(1))  # the predicted classes do not change
    correct = (before.argmax(1) == test_targets).numpy()
    ece_before, _ = expected_calibration_error(before.max(1).values.numpy(), correct)
    ece_after, _ = expected_calibration_error(after.max(1).values.numpy(), correct)
    assert ece_after < 0.5 * ece_before
    assert ece_after < 0.05


def test_temperature_stays_within_its_bounds():
    logits = torch.tensor([[9.0, 0.0], [9.0, 0.0], [9.0, 0.0]])
    assert fit_temperature(logits, torch.tensor([1, 1, 0])) == pytest.approx(8.0, rel=0.05)
    assert fit_temperature(logits, torch.tensor([0, 0, 0])) == pytest.approx(0.25, rel=0.05)
    assert fit_temperature(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == 1.0


def test_ensemble_output_is_the_members_mean_logit_over_the_temperature():
    torch.manual_seed(0)
    net = EnsembleNet(3, (32, 32), members=4).eval()
    net.temperature.fill_(2.0)
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        members = net.member_logits(x)
        out = net(x)
    assert members.shape == (5, 4, 3) and out.shape == (5, 3)
    assert torch.allclose(out, members.mean(1) / 2.0, atol=1e-6)
    net.temperature.fill_(1.0)
    with torch.no_grad():
        assert torch.equal(net(x).argmax(1), out.argmax(1))  # the temperature never changes the class


def test_members_are_independent_networks():
    # a member's output depends only on its own weights: zeroing member 0's head leaves the others unchanged
    torch.manual_seed(1)
    net = EnsembleNet(2, (32, 32), members=3).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = net.member_logits(x)
        last = net.head[-1]
        last.weight[:2] = 0
        last.bias[:2] = 0
        after = net.member_logits(x)
    assert torch.allclose(after[:, 0], torch.zeros(2, 2))
    assert torch.equal(before[:, 1:], after[:, 1:])
    # each member has the compact network's parameter count
    assert sum(p.numel() for p in net.parameters()) == 3 * sum(p.numel() for p in CompactNet(2, (32, 32)).parameters())


def test_neighbour_classes_are_a_majority_filter_that_keeps_a_thin_wall():
    from ghostmap.ensemble import neighbour_classes

    classes = np.zeros((7, 9), np.int64)
    classes[:, 5:] = 2
    classes[3, 2] = 1  # an isolated odd position: its neighbours outvote it
    for radius, own_vote in ((2, False), (1, True)):
        voted = neighbour_classes(classes, 3, radius=radius, own_vote=own_vote)
        assert voted[3, 2] == 0 and voted[0, 0] == 0 and voted[6, 8] == 2
        assert (voted[:, :4] == 0).all() and (voted[:, 6:] == 2).all()
    wall = np.zeros((7, 9), np.int64)
    wall[:, 4:6] = 1  # a wall two positions wide between two domains
    wall[:, 6:] = 2
    assert (neighbour_classes(wall, 3)[1:-1, 4:6] == 1).all()  # the default 3 x 3 window keeps it
    assert not (neighbour_classes(wall, 3, radius=2, own_vote=False)[1:-1, 4:6] == 1).any()  # 5 x 5 outvotes it


def test_scan_temperature_sharpens_timid_maps_and_softens_confidently_wrong_positions():
    from ghostmap.ensemble import scan_temperature

    rng = np.random.default_rng(0)
    classes = np.zeros((20, 30), np.int64)
    classes[:, 15:] = 1
    timid = np.where(np.eye(2, dtype=bool)[classes], 0.8, 0.2)  # all right, at 80 %
    assert scan_temperature(timid) < 0.8
    wrong = classes.copy()
    flip = rng.random(classes.shape) < 0.15  # 15 % isolated errors, each at 99 %
    wrong[flip] = 1 - wrong[flip]
    sure = np.where(np.eye(2, dtype=bool)[wrong], 0.99, 0.01)
    assert scan_temperature(sure) > 1.2
    # the fitted temperature can be shrunk towards 1 by an exponent
    assert scan_temperature(sure, shrink=0.5) == pytest.approx(scan_temperature(sure) ** 0.5, rel=1e-3)
    assert scan_temperature(sure, shrink=0.0) == 1.0


def test_tempered_probabilities_are_the_networks_at_that_temperature():
    from ghostmap.ensemble import tempered

    logits = torch.randn(50, 3) * 4
    p1 = torch.softmax(logits, 1).numpy()
    for t in (0.3, 1.0, 2.5):
        expected = torch.softmax(logits / t, 1).numpy()
        got = tempered(p1.reshape(5, 10, 3), t)
        assert got.dtype == np.float32 and got.shape == (5, 10, 3)
        assert np.allclose(got.reshape(50, 3), expected, atol=1e-5)
        assert np.array_equal(got.argmax(-1).reshape(-1), p1.argmax(-1))
