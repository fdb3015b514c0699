"""Per-observation parameters under minibatches: only the batch's rows move (lazy Adam), and with
every row in the batch the update is exactly Adam's."""

from __future__ import annotations

import numpy as np
import torch

from napari_spatialdl.models._train import Adam, per_observation


def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.nn.Parameter(torch.randn(6, 3, generator=g))
    shared = torch.nn.Parameter(torch.randn(4, generator=g))
    return rows, shared, g


def test_full_batch_update_equals_torch_adam():
    rows, shared, g = _params()
    ref_rows, ref_shared = (torch.nn.Parameter(rows.detach().clone()), torch.nn.Parameter(shared.detach().clone()))
    ours = Adam([per_observation(rows), shared], lr=0.05)
    theirs = torch.optim.Adam([ref_rows, ref_shared], lr=0.05)
    for _ in range(5):
        target = torch.randn(6, 3, generator=g)
        for a, b, opt in ((rows, shared, ours), (ref_rows, ref_shared, theirs)):
            opt.zero_grad()
            ((a - target) ** 2).sum().add((b**2).sum()).backward()
        ours.step(None)
        theirs.step()
    np.testing.assert_allclose(rows.detach().numpy(), ref_rows.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shared.detach().numpy(), ref_shared.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_rows_outside_the_batch_do_not_move_on_momentum():
    rows, shared, _ = _params()
    opt = Adam([per_observation(rows)], lr=0.1)
    first, second = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    opt.zero_grad()
    rows[first].sum().backward()  # a gradient for the first batch's rows only
    opt.step(first)
    after_first = rows.detach().clone()
    opt.zero_grad()
    rows[second].sum().backward()
    opt.step(second)
    # the first batch's rows kept their place while the second batch was trained
    np.testing.assert_array_equal(rows.detach()[first].numpy(), after_first[first].numpy())
    assert (rows.detach()[second] != after_first[second]).all()
    # each row counted its own step: both batches moved by the same first-step amount (lr)
    np.testing.assert_allclose((after_first[second] - rows.detach()[second]).numpy(), 0.1, rtol=1e-4)


def test_a_rows_update_does_not_depend_on_how_many_rows_share_the_mean():
    # the loss is a mean over rows, so one row's gradient shrinks as 1/n; Adam's eps must not then
    # swamp it (at 100k deconvolution spots it did, and the abundances stopped short)
    g = torch.Generator().manual_seed(1)
    n = 20_000
    target = torch.randn(n, 2, generator=g)
    weight = 10 ** (-4 * torch.rand(n, 1, generator=g))  # rows with small gradients of their own

    def fit(rows_target, rows_weight, steps=30):
        p = per_observation(torch.nn.Parameter(torch.zeros_like(rows_target)))
        opt = Adam([p], lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            (rows_weight * (p - rows_target) ** 2).sum(dim=1).mean().backward()
            opt.step(None)
        return p.detach()

    together = fit(target, weight)
    for i in (0, 1, 2, 3, 4, n - 1):
        alone = fit(target[i:i + 1], weight[i:i + 1])
        np.testing.assert_allclose(together[i].numpy(), alone[0].numpy(), rtol=1e-4, atol=1e-6)
