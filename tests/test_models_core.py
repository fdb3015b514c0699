"""The shared torch core: NB/ZINB likelihoods, the training loop, devices, Adam."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats
from scipy.special import gammaln

from napari_spatialdl.models import _train
from napari_spatialdl.models._likelihoods import (
    log_nb,
    log_nb_sum,
    log_nb_zero,
    log_zinb,
    zinb_mean,
)
from napari_spatialdl.models._train import (
    Adam,
    TensorStore,
    TrainingConfig,
    available_devices,
    resolve_device,
    run_to_end,
    split_indices,
    train,
)

# ----------------------------------------------------------------------------- likelihoods

X_GRID = np.array([0, 1, 2, 3, 7, 20, 150, 1000], dtype=float)
THETA_GRID = np.array([1e-3, 0.05, 0.5, 1.0, 4.0, 9.99, 10.0, 10.01, 50.0, 300.0, 5e3])
MU_GRID = np.array([1e-3, 0.05, 0.7, 3.0, 25.0, 400.0, 1e4])


def _grid():
    return np.meshgrid(X_GRID, THETA_GRID, MU_GRID, indexing="ij")


def _ref_nb(x, mu, theta):
    """log NB in float64 with log1p (exact enough even at huge theta)."""
    return (gammaln(x + theta) - gammaln(theta) - gammaln(x + 1)
            - theta * np.log1p(mu / theta) - x * np.log1p(theta / mu))


def _t(a, dtype=torch.float64, grad=False):
    return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=grad)


# float32: lgamma(x + theta) - lgamma(x + 1) loses ~1e-4 relative at counts ~1000
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_log_nb_matches_scipy(dtype, rtol):
    x, theta, mu = _grid()
    expected = stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    got = log_nb(_t(x, dtype), _t(mu, dtype), _t(theta, dtype)).numpy()
    err = np.abs(got - expected) / np.maximum(1.0, np.abs(expected))
    assert err.max() < rtol, (err.max(), np.unravel_index(err.argmax(), err.shape))


def test_log_nb_is_a_distribution():
    # probabilities over x sum to one, for small and huge dispersions alike
    x = torch.arange(0, 4000, dtype=torch.float64)
    for theta in (0.3, 2.0, 50.0, 1e6):
        for mu in (0.5, 20.0):
            p = log_nb(x, torch.tensor(mu, dtype=torch.float64), torch.tensor(theta, dtype=torch.float64)).exp()
            assert p.sum().item() == pytest.approx(1.0, abs=1e-8)
            assert (p * x).sum().item() == pytest.approx(mu, rel=1e-6)


def test_log_nb_float32_accurate_at_huge_dispersion():
    # the textbook lgamma form is off by ~1 nat at theta=1e6 in float32; ours stays exact
    x = np.array([0, 1, 3, 10, 40, 200], dtype=float)
    for theta in (1e4, 1e5, 1e6):
        for mu in (0.01, 2.0, 50.0):
            got = log_nb(_t(x, torch.float32), _t(np.full_like(x, mu), torch.float32),
                         torch.tensor(theta, dtype=torch.float32)).numpy()
            expected = _ref_nb(x, mu, theta)
            # (the textbook form is off by 0.02 at theta=1e5 and 0.8 at 1e6)
            assert np.abs(got - expected).max() < 1e-3
    # at theta = 1e6 the NB is all but Poisson
    x = np.array([0, 1, 3, 10], dtype=float)
    got = log_nb(_t(x, torch.float32), torch.full((4,), 2.0), torch.tensor(1e6)).numpy()
    np.testing.assert_allclose(got, stats.poisson.logpmf(x, 2.0), atol=1e-4)


def test_log_nb_zero_and_zinb_mixture():
    x, theta, mu = _grid()
    pi = 0.27
    logits = np.full(x.shape, np.log(pi / (1 - pi)))
    nb = stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    expected = np.where(x == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log(1 - pi) + nb)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        got = log_zinb(_t(x, dtype), _t(mu, dtype), _t(theta, dtype), _t(logits, dtype)).numpy()
        err = np.abs(got - expected) / np.maximum(1.0, np.abs(expected))
        assert err.max() < rtol
    nb0 = log_nb_zero(_t(mu), _t(theta)).numpy()
    np.testing.assert_allclose(nb0, stats.nbinom.logpmf(0, n=theta, p=theta / (theta + mu)), rtol=1e-9)


def test_zinb_reduces_to_nb_without_dropout():
    x, theta, mu = _grid()
    nb = log_nb(_t(x), _t(mu), _t(theta))
    zinb = log_zinb(_t(x), _t(mu), _t(theta), torch.full(x.shape, -1000.0, dtype=torch.float64))
    where = nb > -500  # (below that, pi = exp(-1000) is still the likelier source of a zero)
    assert where.float().mean() > 0.8
    assert torch.allclose(nb[where], zinb[where], atol=1e-12, rtol=1e-12)
    assert torch.allclose(zinb_mean(_t(mu), torch.zeros(mu.shape, dtype=torch.float64)), _t(mu) / 2)


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    x = torch.poisson(torch.rand(5, 6, dtype=torch.float64) * 6)
    x[0] = 0
    mu = (torch.rand(5, 6, dtype=torch.float64) * 8 + 0.05).requires_grad_()
    # one dispersion per gene, on both sides of the Stirling switch at 10
    theta = torch.tensor([0.2, 1.5, 9.5, 10.5, 80.0, 3e3], dtype=torch.float64, requires_grad=True)
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, t: log_nb(x, m, t), (mu, theta))
    assert torch.autograd.gradcheck(lambda m, t, p: log_zinb(x, m, t, p), (mu, theta, logits))
    # full-shape theta (no broadcasting) too
    theta_full = theta.detach().expand(5, 6).clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda m, t: log_nb(x, m, t), (mu, theta_full))


def test_gradients_match_textbook_autograd():
    torch.manual_seed(1)
    x = torch.poisson(torch.rand(40, 8, dtype=torch.float64) * 5)
    mu = (torch.rand(40, 8, dtype=torch.float64) * 5 + 0.01).requires_grad_()
    theta = (torch.rand(8, dtype=torch.float64) * 30 + 0.1).requires_grad_()
    textbook = (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
                + theta * (torch.log(theta) - torch.log(theta + mu)) + x * (torch.log(mu) - torch.log(theta + mu)))
    g_ref = torch.autograd.grad(textbook.sum(), (mu, theta))
    g = torch.autograd.grad(log_nb(x, mu, theta).sum(), (mu, theta))
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_sparse_aware_sum_equals_the_sum_of_log_nb_and_its_gradients(monkeypatch):
    # what the deconvolution's loss uses: the lgamma terms only at positive counts
    from napari_spatialdl.models import _likelihoods

    def no_dense_route(*args):
        raise AssertionError("sparse counts took the dense route")

    monkeypatch.setattr(_likelihoods, "log_nb", no_dense_route)
    torch.manual_seed(2)
    x = torch.poisson(torch.rand(40, 6, dtype=torch.float64) * 0.5)
    x[0] = 0  # an empty row, and mostly zeros elsewhere
    mu = (torch.rand(40, 6, dtype=torch.float64) * 4 + 1e-3).requires_grad_()
    theta = torch.tensor([0.2, 1.5, 9.5, 10.5, 80.0, 3e3], dtype=torch.float64, requires_grad=True)
    assert 0.05 < (x > 0).double().mean() < 0.3  # the sparse route, not the dense fallback
    want = log_nb(x, mu, theta).sum()
    got = log_nb_sum(x, mu, theta)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-9)
    g_want = torch.autograd.grad(want, (mu, theta))
    g_got = torch.autograd.grad(log_nb_sum(x, mu, theta), (mu, theta))
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda m, t: log_nb_sum(x, m, t), (mu, theta))
    # all zeros: only the zero-count term
    monkeypatch.undo()
    zeros = torch.zeros_like(x)
    assert torch.allclose(log_nb_sum(zeros, mu, theta), log_nb(zeros, mu, theta).sum(), rtol=1e-12)
    # float32, as trained
    x32, mu32, th32 = x.float(), mu.detach().float(), theta.detach().float()
    assert torch.allclose(log_nb_sum(x32, mu32, th32), log_nb(x32, mu32, th32).sum(), rtol=1e-5)


def test_sparse_aware_sum_at_zero_and_tiny_means():
    # a mean of exactly 0 (a gene absent from every signature) with a zero count is allowed,
    # and, like log_nb, a clamped mean gets no gradient
    x = torch.tensor([[0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mu = torch.tensor([[0.0, 1.5, 1e-14, 0.2], [0.7, 0.0, 3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.5, 12.0, 4.0, 30.0], dtype=torch.float64, requires_grad=True)
    want = log_nb(x, mu, theta).sum()
    got = log_nb_sum(x, mu, theta)
    assert torch.isfinite(got) and torch.allclose(got, want, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (mu, theta)), torch.autograd.grad(want, (mu, theta))):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_sparse_aware_sum_on_dense_counts_takes_the_plain_sum(monkeypatch):
    from napari_spatialdl.models import _likelihoods

    def no_sparse_route(*args):
        raise AssertionError("dense counts took the sparse route")

    monkeypatch.setattr(_likelihoods._LogNBSum, "apply", no_sparse_route)
    torch.manual_seed(3)
    x = torch.poisson(torch.rand(20, 5, dtype=torch.float64) * 20)  # nearly all positive
    mu = (torch.rand(20, 5, dtype=torch.float64) * 20 + 0.1).requires_grad_()
    theta = (torch.rand(5, dtype=torch.float64) * 5 + 0.5).requires_grad_()
    got, want = log_nb_sum(x, mu, theta), log_nb(x, mu, theta).sum()
    assert torch.allclose(got, want, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (mu, theta)), torch.autograd.grad(want, (mu, theta))):
        assert torch.allclose(a, b, rtol=1e-10)


@pytest.mark.parametrize("fn", ["nb", "zinb"])
def test_finite_values_and_gradients_at_extremes(fn):
    xs = [0.0, 1.0, 5.0, 100.0, 5000.0]
    thetas = [1e-4, 1e-2, 1.0, 10.0, 1e3, 1e6]
    mus = [0.0, 1e-8, 1e-3, 1.0, 1e3, 1e5]
    x, theta, mu = (np.asarray(a) for a in np.meshgrid(xs, thetas, mus, indexing="ij"))
    for dtype in (torch.float32, torch.float64):
        m = _t(mu, dtype, grad=True)
        t = _t(theta, dtype, grad=True)
        p = torch.zeros(x.shape, dtype=dtype, requires_grad=True)
        ll = log_nb(_t(x, dtype), m, t) if fn == "nb" else log_zinb(_t(x, dtype), m, t, p)
        assert torch.isfinite(ll).all()
        assert (ll <= 1e-6).all()  # log-probabilities
        ll.sum().backward()
        assert torch.isfinite(m.grad).all() and torch.isfinite(t.grad).all()
        if fn == "zinb":
            assert torch.isfinite(p.grad).all()


# ----------------------------------------------------------------------------- training loop

class _Tiny(torch.nn.Module):
    def __init__(self, n_in: int = 6):
        super().__init__()
        self.lin = torch.nn.Linear(n_in, 1)


def _mse(module, batch):
    return ((module.lin(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()


def _regression(n=200, n_in=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in)).astype(np.float32)
    y = (X @ rng.normal(size=n_in) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return X, y


def _fit(seed=0, data=None, **cfg):
    X, y = _regression() if data is None else data
    torch.manual_seed(seed)
    module = _Tiny(X.shape[1])
    config = TrainingConfig(seed=seed, **{"max_epochs": 15, "batch_size": 32, "lr": 1e-2, "device": "cpu", **cfg})
    history = run_to_end(train(module, {"x": X, "y": y}, _mse, config))
    return module, history


def test_training_reduces_the_loss_and_reports_epochs():
    events = []
    X, y = _regression()
    torch.manual_seed(0)
    module = _Tiny()
    history = run_to_end(train(module, {"x": X, "y": y}, _mse,
                               TrainingConfig(max_epochs=30, batch_size=32, lr=2e-2, device="cpu")), events.append)
    assert [e.epoch for e in events] == list(range(1, 31))
    assert history.train_loss[-1] < 0.2 * history.train_loss[0]
    assert len(history.val_loss) == 30 and history.val_loss[-1] < history.val_loss[0]
    assert events[-1].fraction == 1.0 and history.device == "cpu"


def test_same_seed_same_weights_other_seed_other_weights():
    a, ha = _fit(seed=3)
    b, hb = _fit(seed=3)
    c, _ = _fit(seed=4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert ha.train_loss == hb.train_loss
    assert not torch.equal(a.lin.weight, c.lin.weight)


class _Scalar(torch.nn.Module):
    """Training pulls w towards 10; the held-out loss is best at w = 1."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


def _train_vs_val(module, batch):
    target = 10.0 if module.training else 1.0
    return (module.w - target) ** 2 + 0 * batch["x"].sum()


def test_early_stopping_stops_and_restores_the_best_weights():
    module = _Scalar()
    seen = []
    gen = train(module, {"x": np.zeros((20, 1), np.float32)}, _train_vs_val,
                TrainingConfig(max_epochs=500, batch_size=None, lr=0.05, patience=5, device="cpu"))
    history = run_to_end(gen, lambda e: seen.append(module.w.item()))
    assert history.stopped_early
    assert history.n_epochs == history.best_epoch + 5 < 500
    best = int(np.argmin(history.val_loss))
    assert history.best_epoch == best + 1
    # the module holds the weights of the best epoch, not the last one
    assert module.w.item() == seen[best]
    assert abs(module.w.item() - 1.0) < abs(seen[-1] - 1.0)
    assert abs(module.w.item() - 1.0) < 0.06


@pytest.mark.parametrize("restore", [True, False])
def test_min_epochs_is_a_warm_up_and_keeping_the_last_weights(restore):
    module = _Scalar()
    seen = []
    history = run_to_end(train(module, {"x": np.zeros((20, 1), np.float32)}, _train_vs_val,
                               TrainingConfig(max_epochs=500, batch_size=None, lr=0.05, patience=5,
                                              min_epochs=80, restore_best=restore, device="cpu")),
                         lambda e: seen.append(module.w.item()))
    # the held-out loss got worse from epoch ~20, but the warm-up epochs do not count:
    # epoch 80 is the first candidate (so the best), then 5 epochs without improvement
    assert history.best_epoch == 80 and history.n_epochs == 85 and history.stopped_early
    assert module.w.item() == (seen[79] if restore else seen[-1])


def test_closing_the_generator_stops_training():
    calls = []

    def loss(module, batch):
        calls.append(1)
        return _mse(module, batch)

    X, y = _regression()
    threads = torch.get_num_threads()
    gen = train(_Tiny(), {"x": X, "y": y}, loss,
                TrainingConfig(max_epochs=100, batch_size=32, device="cpu", num_threads=1))
    for _ in range(3):
        next(gen)
    n = len(calls)
    gen.close()
    assert len(calls) == n  # no further step after close
    with pytest.raises(StopIteration):
        next(gen)
    assert torch.get_num_threads() == threads  # the thread setting is restored on close


def test_thread_setting_restored_after_training():
    threads = torch.get_num_threads()
    _fit(num_threads=1)
    assert torch.get_num_threads() == threads


def test_sparse_input_trains_batch_by_batch(monkeypatch):
    X, y = _regression()
    X[np.abs(X) < 0.8] = 0  # mostly zeros
    csr = sp.csr_matrix(X)
    monkeypatch.setattr(_train, "DEVICE_RESIDENT_BYTES", 0)
    shapes = []
    densified = []
    original = sp.csr_matrix.toarray

    def spy(self, *args, **kwargs):
        densified.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)

    def loss(module, batch):
        shapes.append(tuple(batch["x"].shape))
        assert isinstance(batch["x"], torch.Tensor) and batch["x"].layout == torch.strided
        return _mse(module, batch)

    store = TensorStore({"x": csr, "y": y}, torch.device("cpu"))
    assert not store.resident and sp.issparse(store._data["x"])
    torch.manual_seed(0)
    run_to_end(train(_Tiny(), {"x": csr, "y": y}, loss,
                     TrainingConfig(max_epochs=2, batch_size=32, device="cpu")))
    assert max(s[0] for s in shapes) <= 32 + 1  # a last single row is folded into its batch
    assert densified and max(densified) <= 32 + 1  # the full matrix was never densified
    assert max(densified) < csr.shape[0]


def test_minibatches_from_host_equal_resident_training(monkeypatch):
    X, y = _regression()
    X[np.abs(X) < 0.5] = 0
    a, _ = _fit(data=(X, y))
    monkeypatch.setattr(_train, "DEVICE_RESIDENT_BYTES", 0)
    b, _ = _fit(data=(sp.csr_matrix(X), y))
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6)


def test_tensor_store_checks_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        TensorStore({"x": np.zeros((5, 2)), "y": np.zeros(4)}, torch.device("cpu"))
    with pytest.raises(ValueError, match="No data"):
        TensorStore({}, torch.device("cpu"))
    store = TensorStore({"x": np.arange(10.0).reshape(5, 2), "batch_index": np.arange(5)}, torch.device("cpu"))
    batch = store.batch(torch.tensor([4, 1]))
    assert batch["batch_index"].dtype == torch.long and batch["x"].dtype == torch.float32
    assert batch["x"][0, 0].item() == 8.0 and batch["index"].tolist() == [4, 1]


def test_split_indices():
    tr, va = split_indices(100, 0.1, seed=0)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    tr2, va2 = split_indices(100, 0.1, seed=0)
    assert np.array_equal(va, va2)
    tr, va = split_indices(5, 0.1, seed=0)  # too small to hold out
    assert len(va) == 0 and len(tr) == 5


def test_devices():
    assert available_devices()[-1] == "cpu"
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(torch.device("cpu")).type == "cpu"
    if not torch.cuda.is_available() and "mps" not in available_devices():
        assert resolve_device("auto").type == "cpu"
    else:
        assert resolve_device("auto").type == available_devices()[0]
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available.*Use device='auto' or 'cpu'"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="not available"):
            _fit(device="cuda")


def test_non_finite_loss_is_reported():
    def bad(module, batch):
        return _mse(module, batch) * float("nan")

    X, y = _regression()
    with pytest.raises(FloatingPointError, match="epoch 1"):
        run_to_end(train(_Tiny(), {"x": X, "y": y}, bad, TrainingConfig(device="cpu")))


def test_only_the_given_parameters_change():
    X, y = _regression()
    module = _Tiny()
    bias = module.lin.bias.detach().clone()
    run_to_end(train(module, {"x": X, "y": y}, _mse, TrainingConfig(max_epochs=3, device="cpu"),
                     parameters=[module.lin.weight]))
    assert torch.equal(module.lin.bias, bias)


def test_adam_matches_torch_optim():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    opt_a = Adam(list(a.parameters()), lr=1e-2, weight_decay=1e-3)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(30):
        x = torch.randn(8, 5)
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-7)

