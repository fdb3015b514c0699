"""The one training loop shared by every model.

The loop is a generator: it yields a :class:`ProgressEvent` after every epoch
(and every ``log_every`` steps inside long epochs) and returns a
:class:`TrainingHistory`. The caller stops it between steps by closing the
generator (``gen.close()``), which is what napari's thread workers do on quit.

Pure torch + numpy: no Qt, no napari, no AnnData.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

ArrayLike = np.ndarray | sp.spmatrix | sp.sparray | torch.Tensor

#: data kept resident on the device when all tensors together stay below this
DEVICE_RESIDENT_BYTES = 2 * 1024**3
#: on the CPU, batches with fewer values than this train on one thread (``num_threads=None``)
SINGLE_THREAD_BATCH_VALUES = 2**18


@dataclass
class ProgressEvent:
    """One progress report from a training run."""

    epoch: int
    n_epochs: int
    step: int
    train_loss: float | None = None
    val_loss: float | None = None
    elapsed: float = 0.0
    message: str = ""
    stage: str = "train"

    @property
    def fraction(self) -> float:
        """Fraction of the epoch budget done, in [0, 1]."""
        return min(1.0, self.epoch / max(1, self.n_epochs))


@dataclass
class TrainingHistory:
    """What a finished run returns: the loss curves and how it ended."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    n_epochs: int = 0
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return {
            "train_loss": np.asarray(self.train_loss, dtype=float),
            "val_loss": np.asarray(self.val_loss, dtype=float),
            "n_epochs": int(self.n_epochs),
            "best_epoch": int(self.best_epoch),
            "stopped_early": bool(self.stopped_early),
            "seconds": float(self.seconds),
            "device": str(self.device),
        }


@dataclass
class TrainingConfig:
    """Settings of :func:`train`.

    ``batch_size=None`` trains full-batch. ``validation_fraction=0`` disables
    early stopping on held-out rows (then ``patience`` watches the train loss).
    ``patience=0`` disables early stopping. The first ``min_epochs`` epochs are a
    warm-up: always trained, and neither early stopping nor the choice of the best
    epoch looks at them (for losses that change while a term is warmed up).
    """

    max_epochs: int = 200
    batch_size: int | None = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    validation_fraction: float = 0.1
    patience: int = 20
    min_delta: float = 1e-4
    min_epochs: int = 0
    #: end with the weights of the epoch with the best watched loss (else: the last epoch's)
    restore_best: bool = True
    seed: int = 0
    device: str | torch.device = "auto"
    log_every: int = 0  # also report inside an epoch every N steps (0: per epoch only)
    grad_clip: float | None = 10.0
    #: CPU threads while training; None: one thread for small batches (below
    #: SINGLE_THREAD_BATCH_VALUES values), where thread synchronisation costs more than it
    #: saves (and stalls badly when the cores are shared), else torch's setting
    num_threads: int | None = None


#: attribute of a parameter whose rows belong to the observations (one row per training row)
PER_OBSERVATION = "spatialdl_per_observation"


def per_observation(param: torch.nn.Parameter) -> torch.nn.Parameter:
    """Mark ``param`` as one row per observation: with minibatches, :class:`Adam` updates only the
    rows of the batch (and counts each row's own steps), as lazy Adam does for embeddings."""
    setattr(param, PER_OBSERVATION, True)
    return param


class Adam:
    """Adam (Kingma & Ba, 2015), the same update as ``torch.optim.Adam`` (no amsgrad).

    Written out because the first ``torch.optim`` optimiser of a process imports
    ``torch._dynamo``, which takes 1-3 s: longer than training a small model.
    Multi-tensor (``torch._foreach_*``) updates keep the per-step overhead low.

    Parameters marked :func:`per_observation` (e.g. each spot's abundances) are updated lazily
    when :meth:`step` is given the batch's ``rows``: only those rows move, each with its own step
    count. Dense Adam would keep moving the rows a batch does not hold on their momentum alone
    (several steps per epoch on stale gradients), which biases such parameters as soon as the
    data no longer fits one batch. With every row in the batch the update is the dense one,
    except that ``eps`` is compared with each row's gradient as if the loss were that row's alone
    (the loss is a mean over rows, so a row's gradient is 1/n of it): a row then moves the same
    however many rows share the batch.
    """

    def __init__(self, params: list[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("No parameters to optimise.")
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), betas, float(eps), float(weight_decay)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = 0
        self.row_steps = {i: torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                          for i, p in enumerate(self.params) if getattr(p, PER_OBSERVATION, False)}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, rows: torch.Tensor | None = None) -> None:
        """One update; ``rows``: the observations of the batch (for :func:`per_observation` parameters)."""
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        self.steps += 1
        beta1, beta2 = self.betas
        for i in [i for i in idx if i in self.row_steps]:
            self._row_step(i, rows)
        idx = [i for i in idx if i not in self.row_steps]
        if not idx:
            return
        params = [self.params[i] for i in idx]
        grads = [self.params[i].grad for i in idx]
        m = [self.exp_avg[i] for i in idx]
        v = [self.exp_avg_sq[i] for i in idx]
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        bias1 = 1 - beta1**self.steps
        bias2_sqrt = math.sqrt(1 - beta2**self.steps)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, value=-self.lr / bias1)

    def _row_step(self, i: int, rows: torch.Tensor | None) -> None:
        """The Adam update of the rows ``rows`` of parameter ``i`` (all rows when None)."""
        p, m, v, t = self.params[i], self.exp_avg[i], self.exp_avg_sq[i], self.row_steps[i]
        beta1, beta2 = self.betas
        r = slice(None) if rows is None else torch.as_tensor(rows, device=p.device, dtype=torch.long)
        g = p.grad[r]
        if self.weight_decay:
            g = g + self.weight_decay * p[r]
        m_r = m[r].lerp_(g, 1 - beta1)
        v_r = v[r].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        t_r = t[r] + 1
        m[r], v[r], t[r] = m_r, v_r, t_r
        shape = (-1,) + (1,) * (p.dim() - 1)
        bias1 = (1 - beta1**t_r).reshape(shape)
        bias2_sqrt = torch.sqrt(1 - beta2**t_r).reshape(shape)
        # each row's gradient is 1/n of a mean over the batch's n rows: compare it with eps as the
        # gradient of that row's own loss, else eps swamps it at scale (100k spots: ~3e-8 vs 1e-8)
        # and the rows stop moving long before they converge
        n_rows = p.shape[0] if rows is None else len(rows)
        p[r] = p[r] - self.lr * (m_r / bias1) / (v_r.sqrt() / bias2_sqrt + self.eps / max(n_rows, 1))


def available_devices() -> list[str]:
    """Devices this machine can run on, best first, always ending with ``'cpu'``."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``'auto'`` picks cuda, then mps, then cpu; anything else is checked."""
    if isinstance(device, torch.device):
        return device
    device = str(device).lower()
    if device == "auto":
        return torch.device(available_devices()[0])
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'.")
    if kind != "cpu" and kind not in available_devices():
        raise ValueError(
            f"Device {device!r} is not available on this machine "
            f"(available: {', '.join(available_devices())}). Use device='auto' or 'cpu'."
        )
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (and return a dedicated generator for shuffling)."""
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _nbytes(x: ArrayLike) -> int:
    if isinstance(x, torch.Tensor):
        return x.element_size() * x.nelement()
    if sp.issparse(x):  # kept sparse: float32 values, int32 columns, int64 row pointers
        return int(x.nnz) * 8 + (int(x.shape[0]) + 1) * 8
    return np.asarray(x).nbytes


class DeviceCSR:
    """A CSR matrix as three tensors on a device; :meth:`rows` densifies only the rows asked for.

    The memory is the sparse matrix's (values, column indices, row pointers), never
    ``n_rows x n_cols``. The row gather is vectorised (no Python loop over rows), so it runs
    on the GPU as well as on the CPU.
    """

    def __init__(self, matrix: sp.spmatrix | sp.sparray, device: torch.device):
        matrix = sp.csr_matrix(matrix)
        if not matrix.has_sorted_indices:
            matrix = matrix.sorted_indices()
        self.shape = matrix.shape
        self.device = device
        self.indptr = torch.as_tensor(matrix.indptr.astype(np.int64), device=device)
        self.indices = torch.as_tensor(matrix.indices.astype(np.int32), device=device)
        self.data = torch.as_tensor(matrix.data.astype(np.float32), device=device)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Dense float32 ``(len(index), n_cols)`` block of the rows ``index``."""
        index = index.to(self.device)
        starts = self.indptr[index]
        lengths = self.indptr[index + 1] - starts
        out = torch.zeros((len(index), self.shape[1]), dtype=torch.float32, device=self.device)
        total = int(lengths.sum())
        if total == 0:
            return out
        row = torch.repeat_interleave(torch.arange(len(index), device=self.device), lengths)
        first = torch.cumsum(lengths, 0) - lengths  # where each row's values start in the gather
        pos = starts[row] + torch.arange(total, device=self.device) - first[row]
        out[row, self.indices[pos].long()] = self.data[pos]
        return out


class TensorStore:
    """Row-indexable data for training.

    Dense arrays become tensors; sparse matrices stay sparse and only the rows of a
    minibatch are densified. When everything fits (``DEVICE_RESIDENT_BYTES``, counting a
    sparse matrix at its CSR size), all data is moved to the device once (sparse matrices as
    a :class:`DeviceCSR` on a GPU) so a step costs no host-to-device copy; otherwise (and on
    the CPU) sparse matrices stay scipy CSR in host memory and each batch's rows are densified
    (and sent).
    Peak memory: the inputs' own (CSR) size + one dense batch + the model.
    """

    def __init__(self, data: Mapping[str, ArrayLike], device: torch.device):
        if not data:
            raise ValueError("No data to train on.")
        sizes = {k: v.shape[0] for k, v in data.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"All training arrays need the same number of rows, got {sizes}.")
        self.n = next(iter(sizes.values()))
        #: values per row over all arrays (what one row of a batch costs)
        self.row_values = sum(int(np.prod(v.shape[1:])) for v in data.values())
        self.device = device
        total = sum(_nbytes(v) for v in data.values())
        self.resident = total <= DEVICE_RESIDENT_BYTES
        self._data: dict[str, object] = {}
        for key, value in data.items():
            if sp.issparse(value):
                # on a GPU the CSR lives there (vectorised row gather); on the CPU scipy's row
                # slicing is the faster gather, with the same memory
                on_device = self.resident and device.type != "cpu"
                value = DeviceCSR(value, device) if on_device else sp.csr_matrix(value)
            elif not isinstance(value, torch.Tensor):
                value = np.asarray(value)
                dtype = torch.long if np.issubdtype(value.dtype, np.integer) and key.endswith("_index") else torch.float32
                value = torch.as_tensor(value, dtype=dtype)
            if isinstance(value, torch.Tensor) and self.resident:
                value = value.to(device)
            self._data[key] = value

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in self._data.items():
            if isinstance(value, torch.Tensor):
                idx = index.to(value.device)
                out[key] = value.index_select(0, idx).to(self.device, non_blocking=True)
            elif isinstance(value, DeviceCSR):  # sparse on the device: densify only these rows
                out[key] = value.rows(index)
            else:  # scipy CSR on the host: densify only these rows
                rows = value[index.cpu().numpy()].toarray()
                out[key] = torch.as_tensor(rows, dtype=torch.float32).to(self.device)
        out["index"] = index.to(self.device)
        return out


def split_indices(n: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of ``n`` rows (validation empty when too small)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(n * validation_fraction))
    if validation_fraction <= 0 or n_val < 2 or n - n_val < 2:
        return np.sort(perm), np.array([], dtype=int)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def train(
    module: torch.nn.Module,
    data: Mapping[str, ArrayLike],
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    config: TrainingConfig | None = None,
    *,
    parameters: list[torch.nn.Parameter] | None = None,
    train_index: np.ndarray | None = None,
    val_index: np.ndarray | None = None,
) -> Generator[ProgressEvent, None, TrainingHistory]:
    """Train ``module`` by minimising ``loss_fn(module, batch)``; a generator.

    Parameters
    ----------
    module
        The network; moved to the resolved device.
    data
        Arrays with one row per observation (dense, scipy sparse or tensors).
        Each batch is a dict of the same keys plus ``"index"`` (row numbers).
    loss_fn
        Mean loss per observation of a batch (a scalar tensor).
    config
        :class:`TrainingConfig`.
    parameters
        What to optimise (default: all of ``module``'s parameters).
    train_index, val_index
        Fixed split (default: a seeded random split by ``validation_fraction``).

    Yields
    ------
    ProgressEvent
        After every epoch (and every ``log_every`` steps).

    Returns
    -------
    TrainingHistory
        The module is left holding the weights of the best epoch.
    """
    config = config or TrainingConfig()
    device = resolve_device(config.device)
    shuffle_gen = seed_everything(config.seed)
    module.to(device)
    store = TensorStore(data, device)
    if train_index is None:
        train_index, val_index = split_indices(store.n, config.validation_fraction, config.seed)
    train_idx = torch.as_tensor(np.asarray(train_index), dtype=torch.long)
    if len(train_idx) == 0:
        raise ValueError("No training rows: the training split is empty.")
    val_idx = torch.as_tensor(np.asarray(val_index if val_index is not None else []), dtype=torch.long)
    params = list(parameters) if parameters is not None else [p for p in module.parameters() if p.requires_grad]
    optimizer = Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    batch_size = config.batch_size or len(train_idx)
    batch_size = max(1, min(batch_size, len(train_idx)))
    n_batches = int(np.ceil(len(train_idx) / batch_size))
    # a last batch of one row breaks batch statistics: fold it into the previous one
    if n_batches > 1 and len(train_idx) % batch_size == 1:
        n_batches -= 1

    threads = config.num_threads
    if threads is None:
        small = device.type == "cpu" and batch_size * store.row_values < SINGLE_THREAD_BATCH_VALUES
        threads = 1 if small else torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    if threads != previous_threads:
        torch.set_num_threads(threads)
    try:
        history = yield from _epochs(module, store, loss_fn, config, optimizer, params, train_idx,
                                     val_idx, batch_size, n_batches, shuffle_gen, device)
    finally:  # also when the consumer closes the generator
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)
    return history


def _epochs(module, store, loss_fn, config, optimizer, params, train_idx, val_idx, batch_size,
            n_batches, shuffle_gen, device) -> Generator[ProgressEvent, None, TrainingHistory]:
    history = TrainingHistory(device=str(device))
    best_loss, best_state, bad_epochs = np.inf, None, 0
    start = time.perf_counter()
    step = 0
    for epoch in range(1, config.max_epochs + 1):
        module.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=shuffle_gen)]
        chunks = torch.tensor_split(perm, n_batches)
        total, count = 0.0, 0
        for chunk in chunks:
            batch = store.batch(chunk)
            loss = loss_fn(module, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"The training loss became {loss.item()} at epoch {epoch}: "
                    "check the input for extreme values, or lower the learning rate."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step(chunk if n_batches > 1 else None)
            step += 1
            total += loss.item() * len(chunk)
            count += len(chunk)
            if config.log_every and step % config.log_every == 0 and len(chunks) > 1:
                yield ProgressEvent(epoch - 1, config.max_epochs, step, total / count, None,
                                    time.perf_counter() - start)
        train_loss = total / max(count, 1)
        history.train_loss.append(train_loss)
        val_loss = None
        if len(val_idx):
            module.eval()
            with torch.no_grad():
                vtotal = 0.0
                for chunk in torch.split(val_idx, max(batch_size, 1024)):
                    vtotal += loss_fn(module, store.batch(chunk)).item() * len(chunk)
                val_loss = vtotal / len(val_idx)
            history.val_loss.append(val_loss)
        watched = val_loss if val_loss is not None else train_loss
        if epoch < config.min_epochs:
            pass  # warm-up: not a candidate for the best epoch
        elif watched < best_loss - config.min_delta * max(1.0, abs(best_loss) if np.isfinite(best_loss) else 1.0):
            best_loss, bad_epochs = watched, 0
            history.best_epoch = epoch
            if config.restore_best:
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            bad_epochs += 1
        history.n_epochs = epoch
        yield ProgressEvent(epoch, config.max_epochs, step, train_loss, val_loss,
                            time.perf_counter() - start)
        if config.patience and bad_epochs >= config.patience:
            history.stopped_early = True
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    history.seconds = time.perf_counter() - start
    return history


def relabel_stage(gen: Generator[ProgressEvent, None, TrainingHistory], stage: str,
                  message: str) -> Generator[ProgressEvent, None, TrainingHistory]:
    """The training loop's events with this stage's name and message."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        event.stage, event.message = stage, event.message or message
        try:
            yield event
        except GeneratorExit:
            gen.close()
            raise


def merge_histories(parts: Sequence[TrainingHistory]) -> TrainingHistory:
    """One history of consecutive stages (the losses of each stage one after the other)."""
    out = TrainingHistory(device=parts[-1].device)
    for h in parts:
        out.train_loss += list(h.train_loss)
        out.val_loss += list(h.val_loss)
        out.n_epochs += h.n_epochs
        out.seconds += h.seconds
        out.stopped_early = h.stopped_early
    out.best_epoch = parts[-1].best_epoch
    return out


def run_to_end(gen: Generator, callback: Callable[[ProgressEvent], None] | None = None):
    """Consume a training/task generator, passing events to ``callback``; return its value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
