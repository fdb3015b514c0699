"""The task contract: each task's inputs, parameters and outputs declared once.

A :class:`TaskSpec` says what a task takes (inputs by *role*: the data, a reference, an obs
column of kind batch or labels, a counts layer) and what it writes (the documented keys).
A method registered for the task only computes: it receives the task's *prepared* inputs
(validated once, genes picked, counts extracted, device and seed resolved) and returns an
output object. :func:`run_task_iter` drives every run the same way::

    bind the call -> coerce parameters -> spec.prepare -> method (yields progress)
        -> spec.write (only at the end) -> run metadata bound from the signature

The public API functions, ``sdl.run``, the CLI's ``run`` subcommand and the GUI panels read the
spec and :func:`method_params`, so a method, input or parameter declared once appears in all.
"""

from __future__ import annotations

import inspect
import re
import time
import typing
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from anndata import AnnData

from .._constants import UNS_KEY
from ..models import ProgressEvent, TrainingHistory, resolve_device
from ._validate import InputError

# ----------------------------------------------------------------------------- roles

DATA = "data"  # the AnnData the results are written to
REFERENCE = "reference"  # an annotated reference AnnData
BATCH = "batch"  # an obs column whose values are batches / samples / sections
LABELS = "labels"  # an obs column whose values are cell types / annotations
LAYER = "layer"  # a layer name (None: X) of one of the data inputs


@dataclass(frozen=True)
class Role:
    """What an argument is: its kind and, for keys and layers, the data input it belongs to."""

    kind: str
    of: str | None = None  # argument name of the AnnData (None: the task's main data)
    min_values: int = 2  # distinct values the column needs (1: e.g. a query that is one batch)


#: Annotations for method parameters that name obs columns: the GUI gives them drop-downs of
#: the columns that fit the role, and the run checks the column before the method starts.
BatchKey = Annotated[str, Role(BATCH)]
LabelsKey = Annotated[str, Role(LABELS)]
ReferenceBatchKey = Annotated[str, Role(BATCH, of="reference")]


@dataclass(frozen=True)
class Input:
    """One input of a task (a positional or keyword argument of its API function)."""

    name: str
    role: str
    of: str | None = None
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Output:
    """One result a task writes: ``adata.<slot>[key]``; ``key_added`` + ``suffix`` when given."""

    field: str  # attribute of the method's output object
    slot: str  # "obs", "obsm", "layers", "uns"
    key: str  # the default key (docs/anndata-keys.md)
    suffix: str = ""  # appended to key_added for secondary outputs
    doc: str = ""
    #: a run whose main output is this one, under its default key, is recorded under the task's
    #: name (as for the first output): another form of the same result, e.g. a compact imputation
    task_record: bool = False

    def key_for(self, key_added: str | None, method_suffix: str | None = None) -> str:
        if key_added:
            return key_added + self.suffix
        return self.key + (f"_{method_suffix}" if method_suffix else "")


@dataclass(frozen=True)
class Param:
    """A method's or task's parameter, read from a signature."""

    name: str
    annotation: Any
    default: Any
    doc: str = ""
    role: Role | None = None

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


@dataclass
class MethodOutput:
    """What every method returns: its results (per-task subclasses add the arrays), plus these."""

    model: Any = None
    history: TrainingHistory | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """Inputs after the task's ``prepare``: validated, genes picked, counts extracted.

    Per-task subclasses add the arrays. ``data`` (and ``reference``) are the caller's objects:
    methods read them, never write them.
    """

    data: AnnData
    device: Any  # torch.device
    seed: int
    info: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # role-annotated method params


@dataclass(frozen=True)
class TaskSpec:
    """One task: its inputs, its task-level options, its outputs, and how to prepare and write."""

    name: str
    title: str
    doc: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    prepare: Callable[..., Prepared]
    write: Callable[[AnnData, Prepared, MethodOutput, dict[str, str]], None]
    options: tuple[Param, ...] = ()  # task-level options (e.g. annotate's threshold)

    @property
    def data_input(self) -> Input:
        return next(i for i in self.inputs if i.role == DATA)

    def input(self, name: str) -> Input:
        return next(i for i in self.inputs if i.name == name)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)


#: arguments every task takes, besides its inputs, options and the method's parameters
COMMON = ("method", "key_added", "copy", "device", "seed")

SPECS: dict[str, TaskSpec] = {}


def register_spec(spec: TaskSpec) -> TaskSpec:
    """Make ``spec`` the contract of its task (each task module calls this once)."""
    SPECS[spec.name] = spec
    return spec


def get_spec(task: str) -> TaskSpec:
    """The contract of ``task`` (``"impute"``, ``"integrate"``, ``"deconvolve"``, ``"annotate"``).

    Parameters
    ----------
    task
        The task's name.
    """
    from ._registry import _load_builtin_methods

    _load_builtin_methods()
    if task not in SPECS:
        raise ValueError(f"Unknown task {task!r}; tasks are {', '.join(SPECS)}.")
    return SPECS[task]


# ----------------------------------------------------------------------------- parameters

_SECTION = re.compile(r"^\s*(Parameters|Returns|Yields|Raises|Notes|Examples|See Also)\s*\n\s*-{3,}\s*$",
                      re.MULTILINE)


def param_docs(func: Callable) -> dict[str, str]:
    """The one-paragraph description of each parameter in a numpy-style docstring."""
    doc = inspect.getdoc(func) or ""
    parts = _SECTION.split(doc)
    docs: dict[str, str] = {}
    for head, body in zip(parts[1::2], parts[2::2]):
        if head != "Parameters":
            continue
        name, lines = None, []
        for line in body.splitlines():
            if line and not line.startswith(" "):
                if name:
                    docs[name] = " ".join(lines).strip()
                name = line.split(":")[0].strip()
                lines = []
            elif name:
                lines.append(line.strip())
        if name:
            docs[name] = " ".join(lines).strip()
    expanded: dict[str, str] = {}
    for names, text in docs.items():  # "layer, reference_layer" documents both
        for n in names.split(","):
            expanded[n.strip()] = text
    return expanded


def _hints(func: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:  # unresolvable forward refs: fall back to the raw annotations
        return {k: v.annotation for k, v in inspect.signature(func).parameters.items()}


def role_of(annotation: Any) -> Role | None:
    """The :class:`Role` in an ``Annotated[...]`` annotation (also inside ``X | None``)."""
    if typing.get_origin(annotation) is Annotated:
        return next((m for m in annotation.__metadata__ if isinstance(m, Role)), None)
    for arg in typing.get_args(annotation):
        role = role_of(arg)
        if role is not None:
            return role
    return None


def strip_annotated(annotation: Any) -> Any:
    """``Annotated[str, Role]`` -> ``str`` (also inside unions), for type coercion and widgets."""
    if typing.get_origin(annotation) is Annotated:
        return typing.get_args(annotation)[0]
    args = typing.get_args(annotation)
    if args and any(typing.get_origin(a) is Annotated for a in args):
        stripped = tuple(strip_annotated(a) for a in args)
        return typing.Union[stripped]  # noqa: UP007 (built from a tuple)
    return annotation


def method_params(method_or_func: Any) -> list[Param]:
    """The parameters a method adds to its task: its signature after the prepared input."""
    func = getattr(method_or_func, "func", method_or_func)
    sig = inspect.signature(func)
    hints, docs = _hints(func), param_docs(func)
    out = []
    for i, (name, p) in enumerate(sig.parameters.items()):
        if i == 0 or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue  # the first argument is the prepared input
        ann = hints.get(name, p.annotation)
        out.append(Param(name, ann, p.default, docs.get(name, ""), role_of(ann)))
    return out


def coerce(name: str, value: Any, annotation: Any, default: Any = inspect.Parameter.empty) -> Any:
    """``value`` as ``annotation`` asks (``"10"`` -> 10 for int), or an InputError that says why."""
    from ._validate import coerce_param

    if default is inspect.Parameter.empty:
        return coerce_param(name, value, strip_annotated(annotation))
    return coerce_param(name, value, strip_annotated(annotation), default)


# ----------------------------------------------------------------------------- running

TaskGenerator = Generator[ProgressEvent, None, "Any"]


def split_arguments(spec: TaskSpec, method: Any, args: tuple, kwargs: dict[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(task inputs, task options, method parameters) of a call; unknown names are refused."""
    names = spec.input_names
    if len(args) > len(names):
        raise TypeError(f"{spec.name}() takes {len(names)} positional inputs ({', '.join(names)}); "
                        f"got {len(args)}.")
    inputs = dict(zip(names, args))
    options: dict[str, Any] = {}
    params: dict[str, Any] = {}
    option_names = {o.name for o in spec.options}
    method_names = {p.name for p in method_params(method)}
    for key, value in kwargs.items():
        if key in names:
            if key in inputs:
                raise TypeError(f"{spec.name}() got two values for {key!r}.")
            inputs[key] = value
        elif key in option_names:
            options[key] = value
        elif key in method_names:
            params[key] = value
        else:
            valid = sorted(set(names) | option_names | method_names | set(COMMON))
            raise InputError(
                f"The {spec.name} method {method.name!r} has no parameter {key!r}. "
                f"Valid: {', '.join(valid)}."
            )
    for inp in spec.inputs:
        inputs.setdefault(inp.name, None)
        if inp.required and inputs[inp.name] is None:
            raise InputError(f"{spec.name} needs {inp.name!r} ({inp.doc or inp.role}).")
    for opt in spec.options:
        options[opt.name] = coerce(opt.name, options.get(opt.name, opt.default), opt.annotation,
                                   opt.default)
    declared = {p.name: p for p in method_params(method)}
    params = {k: coerce(k, v, declared[k].annotation, declared[k].default) for k, v in params.items()}
    return inputs, options, params


def resolve_device_arg(device: Any) -> Any:
    """The torch device for ``device`` ('auto', 'cpu', 'cuda', 'cuda:1', 'mps'), or an InputError."""
    if not isinstance(device, str) and device is not None and not hasattr(device, "type"):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {device!r}.")
    try:
        return resolve_device("auto" if device is None else device)
    except ValueError as err:
        raise InputError(str(err)) from None


def resolve_seed(seed: Any) -> int:
    if isinstance(seed, bool) or seed is None:
        raise InputError(f"seed must be an integer (e.g. 0), got {seed!r}.")
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise InputError(f"seed must be an integer (e.g. 0), got {seed!r}.") from None
    if value != seed and not (isinstance(seed, str) and seed.strip().lstrip("-").isdigit()):
        raise InputError(f"seed must be an integer (e.g. 0), got {seed!r}.")
    return value


def seed_everything(seed: int) -> None:
    """The one place a run seeds the global generators (torch, numpy's legacy global state)."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def check_key_added(key_added: Any) -> None:
    if key_added is not None and (not isinstance(key_added, str) or not key_added.strip()):
        raise InputError(f"key_added must be a non-empty string (or None for the default keys), "
                         f"got {key_added!r}.")


def result_keys(spec: TaskSpec, adata: AnnData, method_name: str, key_added: str | None,
                fields: list[str] | None = None) -> dict[str, str]:
    """Where each output goes: ``key_added`` when given; else the default keys, unless they hold
    another method's result, in which case ``<default>_<method>`` keeps both side by side.

    ``fields``: the outputs this run produced (default: all of the spec's); the first is the
    main one, which names the run record.
    """
    check_key_added(key_added)
    outputs = [o for o in spec.outputs if fields is None or o.field in fields]
    main = outputs[0]
    suffix = None
    if not key_added:
        previous = run_record(adata, spec.name, main.key_for(None))
        store = adata.uns if main.slot == "uns" else getattr(adata, main.slot)
        present = main.key in store.keys() if main.slot != "obs" else main.key in adata.obs.columns
        if present and previous is not None and previous.get("method") not in (None, method_name):
            suffix = method_name
    return {o.field: o.key_for(key_added, suffix) for o in outputs}


def _record_name(spec_name: str, main_key: str, default_key: str | None) -> str:
    """The task's name for its first output under its default key; else the result's key."""
    return spec_name if main_key == default_key else main_key


def run_record(adata: AnnData, task: str, main_key: str | None = None) -> dict | None:
    """The run metadata of the result of ``task`` stored under ``main_key`` (default: the default key)."""
    uns = adata.uns.get(UNS_KEY)
    if not isinstance(uns, dict):
        return None
    spec = SPECS.get(task)
    defaults = {o.key for i, o in enumerate(spec.outputs) if i == 0 or o.task_record} if spec else set()
    name = task if main_key is None or main_key in defaults else main_key
    entry = uns.get(name)
    return entry if isinstance(entry, dict) else None


def run_records(adata: AnnData, task: str | None = None) -> dict[str, dict]:
    """Every result napari-spatialdl wrote into ``adata`` (by record name), e.g. for a reopened file."""
    uns = adata.uns.get(UNS_KEY)
    if not isinstance(uns, dict):
        return {}
    out = {}
    for name, entry in uns.items():
        if not isinstance(entry, dict):
            continue
        entry_task = entry.get("task", name if name in SPECS else None)
        if task is None or entry_task == task:
            out[name] = entry
    return out


def bound_parameters(method: Any, prepared: Prepared, params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of the method as the call bound it (defaults included), for the record."""
    sig = inspect.signature(method.func)
    bound = sig.bind_partial(prepared, **params)
    bound.apply_defaults()
    first = next(iter(sig.parameters))
    return {k: v for k, v in bound.arguments.items() if k != first}


def run_task_iter(task: str, *args: Any, method: str = "spatialdl", key_added: str | None = None,
                  copy: bool = False, device: Any = "auto", seed: Any = 0, **kwargs: Any):
    """Run ``method`` of ``task`` as a generator: yields progress, returns a TaskResult.

    Nothing is written to the data until the method has finished; a failed, cancelled or closed
    run leaves every input as it was.
    """
    from ._registry import get_method

    spec = get_spec(task)
    m = get_method(task, method)
    inputs, options, params = split_arguments(spec, m, args, kwargs)
    for inp in spec.inputs:
        value = inputs[inp.name]
        if inp.role in (DATA, REFERENCE) and value is not None and not isinstance(value, AnnData):
            raise InputError(f"{inp.name} must be an AnnData, got {type(value).__name__}. "
                             "Read files with napari_spatialdl.read_h5ad / read_visium / read_spatialdata.")
    for name in m.needs:
        if inputs.get(name) is None:
            raise InputError(f"The {task} method {m.name!r} needs {name}=: {spec.input(name).doc}")
    for name in m.refuses:
        if inputs.get(name) is not None:
            raise InputError(f"The {task} method {m.name!r} does not use {name}=; "
                             f"leave it out or choose a method that does.")
    if not isinstance(copy, bool | np.bool_):
        raise InputError(f"copy must be True or False, got {copy!r}.")
    dev = resolve_device_arg(device)
    seed_int = resolve_seed(seed)
    data = inputs[spec.data_input.name]
    check_key_added(key_added)  # before the (long) run
    seed_everything(seed_int)
    prepared = spec.prepare(inputs, method=m, device=dev, seed=seed_int, **options)
    for p in method_params(m):
        if p.role is not None and params.get(p.name, p.default) not in (None, inspect.Parameter.empty):
            prepared.columns[p.name] = _check_role_column(inputs, spec, p, params.get(p.name, p.default))
    start = time.perf_counter()
    output = yield from m.func(prepared, **params)
    seconds = time.perf_counter() - start
    recorded = {k: v for k, v in inputs.items() if not isinstance(v, AnnData)}
    recorded.update(options)
    recorded.update(bound_parameters(m, prepared, params))
    recorded.update(device=str(device), seed=seed_int)
    return finish_run(spec, m.name, data, prepared, output, recorded, key_added=key_added,
                      copy=bool(copy), seconds=seconds, device=dev)


def finish_run(spec: TaskSpec, method_name: str, data: AnnData, prepared: Prepared,
               output: MethodOutput, recorded: dict[str, Any], *, key_added: str | None,
               copy: bool, seconds: float, device: Any) -> Any:
    """The end of every run: choose the keys, ``spec.write``, record the run, the TaskResult.

    Called only once the method has finished, so a failed or cancelled run writes nothing.
    """
    from ._base import TaskResult, target, write_run_metadata

    if not isinstance(output, MethodOutput):
        raise TypeError(f"The {spec.name} method {method_name!r} returned {type(output).__name__}, "
                        "not a MethodOutput.")
    produced = [o.field for o in spec.outputs if getattr(output, o.field, None) is not None]
    if not produced:
        raise TypeError(f"The {spec.name} method {method_name!r} returned no result.")
    keys = result_keys(spec, data, method_name, key_added, produced)
    out = target(data, copy)
    spec.write(out, prepared, output, keys)
    recorded = dict(recorded)
    if key_added:
        recorded["key_added"] = key_added
    info = dict(prepared.info)
    info.update(output.info)
    if output.history is None:
        info.setdefault("device", str(device))
    outputs = [o for o in spec.outputs if o.field in keys]
    main = outputs[0]
    record_name = _record_name(spec.name, keys[main.field],
                               main.key if (main is spec.outputs[0] or main.task_record) else None)
    write_run_metadata(out, record_name, method_name, recorded, output.history, seconds=seconds,
                       of_task=spec.name, keys={o.field: f"{o.slot}/{keys[o.field]}" for o in outputs},
                       **info)
    result_key_map = {o.slot if i == 0 else f"{o.slot}_{o.field}": keys[o.field]
                      for i, o in enumerate(outputs)}
    return TaskResult(spec.name, method_name, out, keys=result_key_map, model=output.model,
                      history=output.history, info=info)


def _check_role_column(inputs: dict[str, Any], spec: TaskSpec, p: Param, key: Any) -> np.ndarray:
    """Validate an obs-column parameter of a method against the object its role names."""
    from ._validate import check_obs_column

    owner_name = p.role.of or spec.data_input.name
    owner = inputs.get(owner_name)
    if owner is None:
        raise InputError(f"{p.name}={key!r} names a column of {owner_name}, but no {owner_name} was given.")
    values = check_obs_column(owner, key, argument=p.name, kind=p.role.kind, obj=owner_name,
                              allow_missing_values=p.role.kind == LABELS, min_values=p.role.min_values)
    return np.asarray(values, dtype=object)


def gui_inputs(spec: TaskSpec) -> list[Input]:
    """The task inputs a panel shows, in order (data first)."""
    return list(spec.inputs)
