"""Parameter editors of a panel, from the task spec's options and the method's signature.

Each :class:`~napari_spatialdl.tasks.Param` (name, annotation, default, one-line doc, role) gets
an editor from magicgui's :func:`~magicgui.widgets.create_widget` where its type fits one
(check box, spin box, drop-down of a ``Literal``, text); numbers that may be ``None`` and
floats (whose useful range spans 1e-4 to 1e4) are typed in a text field and read here, so that
a wrong entry disables Run with the parameter's name instead of failing in the run. A
parameter with a role (an obs column) gets a drop-down of the columns the panel offers.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from qtpy.QtWidgets import QWidget

#: labels in plain words for parameter names found in many methods
LABELS = {
    "lr": "learning rate",
    "max_epochs": "max. epochs",
    "n_top_genes": "genes used",
    "n_neighbors": "neighbours",
    "batch_size": "batch size",
    "threshold": "threshold",
    "n_latent": "latent dimensions",
}
NONE_TEXT = "(none)"


def label_for(name: str) -> str:
    """The editor's label: a plain-word name, else the parameter name with spaces."""
    return LABELS.get(name, name.replace("_", " "))


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); other annotations -> (annotation, False)."""
    args = typing.get_args(annotation)
    if args and type(None) in args and typing.get_origin(annotation) is not Literal:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007
    return annotation, False


def _literal_values(annotation: Any) -> list[Any] | None:
    """The values of ``Literal[...]``, ``bool``, or a union of them (``bool | Literal['auto']``)."""
    if annotation is bool:
        return [True, False]
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    args = typing.get_args(annotation)
    if args and all(a is bool or typing.get_origin(a) is Literal for a in args):
        out: list[Any] = []
        for a in args:
            out += _literal_values(a) or []
        return out
    return None


def _none_means(doc: str) -> str:
    """What ``None`` stands for, from the doc's "(None: ...)" when short."""
    found = re.search(r"None[:,]\s*([^;)`]{3,40})[;)]", doc)
    return f"empty: {found.group(1).strip()}" if found else "empty: automatic"


class ParamField:
    """One parameter editor (a magicgui widget) and how its value is read."""

    def __init__(self, name: str, widget: Any, parse: Callable[[Any], Any], default: Any):
        self.name = name
        self.widget = widget
        self._parse = parse
        self.default = default

    def value(self) -> Any:
        """The value to pass; ValueError in plain words when the entry is not valid."""
        return self._parse(self.widget.value)

    def set_value(self, value: Any) -> None:
        if hasattr(self.widget, "choices"):
            self.widget.value = value
        elif isinstance(self.widget.value, str) and not isinstance(value, str):
            self.widget.value = "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
        else:
            self.widget.value = value


def _text_field(name: str, base: Any, optional: bool, default: Any, tooltip: str) -> ParamField:
    from magicgui.widgets import create_widget

    text = "" if default is None else (f"{default:g}" if isinstance(default, float) else str(default))
    edit = create_widget(value=text, annotation=str, name=name, label=label_for(name),
                         widget_type="LineEdit", options={"tooltip": tooltip or None})
    if optional:
        edit.native.setPlaceholderText(_none_means(tooltip))
    label = label_for(name)

    def parse(raw: Any) -> Any:
        raw = str(raw).strip()
        if raw == "" or raw.lower() == "none":
            if optional:
                return None
            raise ValueError(f"'{label}' needs a value")
        if base is float or base is int:
            try:
                number = float(raw)
            except ValueError:
                kind = "a whole number" if base is int else "a number"
                raise ValueError(f"'{label}' must be {kind} (e.g. {default if default is not None else 1}), "
                                 f"not {raw!r}") from None
            if base is int:
                if not number.is_integer():
                    raise ValueError(f"'{label}' must be a whole number, not {raw!r}")
                return int(number)
            return number
        return raw  # strings and unions: the task core converts them (and says what is wrong)

    return ParamField(name, edit, parse, default)


def make_field(param: Any, choices: Sequence[tuple[str, Any]] | None = None) -> ParamField:
    """The editor of one :class:`~napari_spatialdl.tasks.Param`.

    ``choices`` ((text, value) pairs) makes it a drop-down, e.g. the obs columns that fit its role.
    """
    from magicgui.widgets import create_widget

    name, default, tooltip = param.name, param.default, param.doc
    label = label_for(name)
    options: dict[str, Any] = {"tooltip": tooltip or None}
    base, optional = _split_optional(getattr(param, "annotation", str))
    if typing.get_origin(base) is typing.Annotated:
        base = typing.get_args(base)[0]
    if choices is not None:
        items = list(choices)
        values = [v for _, v in items]
        combo = create_widget(value=default if default in values else (values[0] if values else None),
                              annotation=object, name=name, label=label, widget_type="ComboBox",
                              options={**options, "choices": items, "nullable": True})
        return ParamField(name, combo, lambda v: v, default)
    values = _literal_values(base)
    if values is not None:
        if optional:
            values = [None, *values]
        words = {True: "yes", False: "no", None: NONE_TEXT}
        items = [(words.get(v, str(v)) if isinstance(v, bool | None) else str(v), v) for v in values]
        if base is bool and not optional:
            box = create_widget(value=bool(default), annotation=bool, name=name, label=label, options=options)
            return ParamField(name, box, bool, default)
        combo = create_widget(value=default, annotation=object, name=name, label=label,
                              widget_type="ComboBox", options={**options, "choices": items})
        return ParamField(name, combo, lambda v: v, default)
    if base is int and not optional and isinstance(default, int):
        spin = create_widget(value=default, annotation=int, name=name, label=label,
                             options={**options, "min": min(0, default), "max": 10**7})
        return ParamField(name, spin, int, default)
    if base is str and not optional:
        edit = create_widget(value=str(default), annotation=str, name=name, label=label, options=options)
        return ParamField(name, edit, lambda v: str(v), default)
    return _text_field(name, base, optional, default, tooltip)


class ParamPanel:
    """The editors of a panel's parameters (task options, then the method's parameters).

    Parameters
    ----------
    params
        :class:`~napari_spatialdl.tasks.Param` objects (``tasks.method_params(method)``,
        ``spec.options``); those without a default are the task's inputs and are left out.
    choices
        Parameter name -> (text, value) pairs: drop-downs (obs columns for role parameters).
    """

    def __init__(self, params: Sequence[Any], *, choices: dict[str, Sequence[tuple[str, Any]]] | None = None):
        import inspect

        from magicgui.widgets import Container

        self.params = {p.name: p for p in params}
        self.fields: dict[str, ParamField] = {}
        self.container = Container(labels=True)
        self.container.native.layout().setContentsMargins(0, 0, 0, 0)
        for p in params:
            if p.default is inspect.Parameter.empty:
                continue
            field = make_field(p, (choices or {}).get(p.name))
            self.fields[p.name] = field
            self.container.append(field.widget)

    @property
    def native(self) -> QWidget:
        return self.container.native

    def values(self) -> dict[str, Any]:
        """Every parameter's value; ValueError naming the first invalid one."""
        return {name: f.value() for name, f in self.fields.items()}

    def set(self, **values: Any) -> None:
        """Set parameters by name (from a test or a script)."""
        for name, value in values.items():
            if name not in self.fields:
                raise KeyError(f"No parameter {name!r}; parameters: {', '.join(self.fields)}.")
            self.fields[name].set_value(value)

    def changed_connect(self, callback: Callable[[], None]) -> None:
        for f in self.fields.values():
            f.widget.changed.connect(lambda *_: callback())


__all__ = ["LABELS", "ParamField", "ParamPanel", "label_for", "make_field"]
