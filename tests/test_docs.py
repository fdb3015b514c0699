"""The documentation tells the truth: quoted error messages, images, API pages, figure helpers.

- Every message quoted in docs/troubleshooting.md (marked ``<!-- message: NAME -->``) is the one
  the code produces for that situation (each case below triggers it).
- Every image the pages show exists, every PNG in docs/images is shown somewhere, and together
  they stay small.
- The API page documents every public name of ``napari_spatialdl``.
- docs/make_figures.py's data and image helpers work without a display.

Run ``python tests/test_docs.py`` to print the current messages (to paste into the page).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHARED_HNE = ROOT.parent / "shared" / "data" / "visium_spaceranger_1.0.0"
MESSAGE = re.compile(r"<!-- message: (\w+) -->\s*```text\n(.*?)\n```", re.S)


# ------------------------------------------------------------------------- trigger cases
def _small():
    from napari_spatialdl.datasets import synthetic_tissue

    return synthetic_tissue(0, n_spots=200, n_genes=60, n_cell_types=4, n_reference_cells=200,
                            image_size=300)


def _error(func: Callable[[], object]) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            func()
    except Exception as exc:  # the message is what we want
        return str(exc)
    raise AssertionError("no error was raised")


def _warning(func: Callable[[], object]) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        func()
    user = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert user, "no UserWarning was issued"
    return user[0]


def case_non_integer() -> str:
    import napari_spatialdl as sdl

    spatial, reference = _small()
    spatial.layers["lognorm"] = np.log1p(spatial.X.toarray())
    return _error(lambda: sdl.deconvolve(spatial, reference, "cell_type", layer="lognorm", max_epochs=1))


def case_negative() -> str:
    import napari_spatialdl as sdl

    spatial, reference = _small()
    X = spatial.X.toarray()
    X[0, 0] = -1
    spatial.X = X
    return _error(lambda: sdl.deconvolve(spatial, reference, "cell_type", max_epochs=1))


def case_no_overlap() -> str:
    import napari_spatialdl as sdl

    spatial, reference = _small()
    reference.var_names = [f"ENSMUSG{i:011d}" for i in range(reference.n_vars)]
    return _error(lambda: sdl.deconvolve(spatial, reference, "cell_type", max_epochs=1))


def case_missing_coords_task() -> str:
    import napari_spatialdl as sdl

    spatial, reference = _small()
    del spatial.obsm["spatial"]
    return _error(lambda: sdl.deconvolve(spatial, reference, "cell_type", spatial_smoothing=0.5,
                                         max_epochs=1))


def case_missing_coords_show() -> str:
    from napari_spatialdl.layers import spatial_layers

    spatial, _ = _small()
    del spatial.obsm["spatial"]
    return _error(lambda: spatial_layers(spatial))


def case_empty_spots() -> str:
    import napari_spatialdl as sdl

    spatial, reference = _small()
    X = spatial.X.toarray()
    X[:3] = 0
    spatial.X = X
    return _error(lambda: sdl.deconvolve(spatial, reference, "cell_type", max_epochs=1))


def case_nan() -> str:
    import napari_spatialdl as sdl

    spatial, reference = _small()
    X = spatial.X.toarray()
    X[1, 1] = np.nan
    spatial.X = X
    return _error(lambda: sdl.deconvolve(spatial, reference, "cell_type", max_epochs=1))


def case_missing_labels() -> str:
    import napari_spatialdl as sdl

    spatial, reference = _small()
    return _error(lambda: sdl.deconvolve(spatial, reference, "celltype", max_epochs=1))


def case_one_label() -> str:
    import napari_spatialdl as sdl

    spatial, reference = _small()
    reference.obs["tissue"] = "brain"
    return _error(lambda: sdl.annotate(spatial, reference, "tissue", max_epochs=1))


def case_few_cells() -> str:
    import pandas as pd

    import napari_spatialdl as sdl

    spatial, _ = _small()
    labels = pd.Series(np.nan, index=spatial.obs_names, dtype=object)
    labels.iloc[:20] = "region A"
    labels.iloc[20] = "region B"
    spatial.obs["annotated_region"] = pd.Categorical(labels)
    return _error(lambda: sdl.annotate(spatial, spatial, "annotated_region", max_epochs=1))


def case_unknown_method() -> str:
    import napari_spatialdl as sdl

    spatial, reference = _small()
    return _error(lambda: sdl.deconvolve(spatial, reference, "cell_type", method="cell2location"))


def case_device() -> str:
    import torch

    import napari_spatialdl as sdl

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: asking for cuda is not an error here")
    spatial, reference = _small()
    return _error(lambda: sdl.deconvolve(spatial, reference, "cell_type", device="cuda", max_epochs=1))


def case_blank_hires() -> str:
    from napari_spatialdl.io import get_image, read_visium

    if not SHARED_HNE.is_dir():
        pytest.skip("../shared/data is absent")
    adata = read_visium(SHARED_HNE)
    return _warning(lambda: get_image(adata))


def case_not_spaceranger(tmp_path_factory=None) -> str:
    import tempfile

    from napari_spatialdl import read_visium

    folder = Path(tempfile.mkdtemp()) / "my_run"
    (folder / "outs").mkdir(parents=True)
    return _error(lambda: read_visium(folder)).replace(str(folder), "my_run")


def case_offline() -> str:
    import tempfile

    from napari_spatialdl.datasets import _visium

    def no_network(name):
        def load(path):
            raise OSError("[Errno -2] Name or service not known")

        return load

    original = _visium._loader
    _visium._loader = no_network
    try:
        target = Path(tempfile.mkdtemp()) / "napari-spatialdl" / "visium_hne_adata.h5ad"
        message = _error(lambda: _visium.visium_hne(path=target))
    finally:
        _visium._loader = original
    return message.replace(str(target.parent), "~/.cache/napari-spatialdl")


CASES: dict[str, Callable[[], str]] = {
    name[len("case_"):]: func for name, func in sorted(globals().items()) if name.startswith("case_")
}


# ------------------------------------------------------------------------------- tests
def quoted_messages() -> dict[str, str]:
    text = (DOCS / "troubleshooting.md").read_text()
    return {name: body.strip() for name, body in MESSAGE.findall(text)}


def test_every_case_is_quoted_once():
    text = (DOCS / "troubleshooting.md").read_text()
    names = re.findall(r"<!-- message: (\w+) -->", text)
    assert sorted(names) == sorted(CASES), "troubleshooting.md and CASES list different messages"


@pytest.mark.parametrize("name", sorted(CASES))
def test_troubleshooting_quotes_the_real_message(name):
    quoted = quoted_messages()[name]
    actual = CASES[name]()
    assert quoted == actual, f"docs/troubleshooting.md quotes an outdated message for {name!r}"


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_images_exist_are_used_and_small():
    shown: set[str] = set()
    for page in _pages():
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.is_file(), f"{page.relative_to(ROOT)} shows a missing image {target}"
            shown.add(path.name)
    pngs = sorted((DOCS / "images").glob("*.png"))
    unused = [p.name for p in pngs if p.name not in shown]
    assert not unused, f"images in docs/images shown on no page: {unused}"
    total = sum(p.stat().st_size for p in pngs)
    assert total < 5 * 1024**2, f"docs/images holds {total / 1024**2:.1f} MB (keep it under 5 MB)"
    from PIL import Image

    for p in pngs:
        with Image.open(p) as img:
            assert img.width <= 1300, f"{p.name} is {img.width} px wide"


def test_api_page_documents_every_public_name():
    import napari_spatialdl

    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: ([\w.]+)$", text, re.M))
    short = {name.rsplit(".", 1)[-1] for name in documented}
    missing = [name for name in napari_spatialdl.__all__
               if name not in ("__version__", "datasets") and name not in short]
    assert not missing, f"docs/api.md lacks {missing}"
    assert "napari_spatialdl.datasets._synthetic.synthetic_tissue" in documented


def test_api_page_targets_exist():
    import importlib

    text = (DOCS / "api.md").read_text()
    for target in re.findall(r"^::: ([\w.]+)$", text, re.M):
        module, _, name = target.rpartition(".")
        assert hasattr(importlib.import_module(module), name), target


def test_documented_parameters_exist():
    """Docstrings of the public functions document no parameter the function does not have."""
    import importlib
    import inspect

    from napari_spatialdl.tasks._spec import param_docs as parse_param_docs

    text = (DOCS / "api.md").read_text()
    for target in re.findall(r"^::: ([\w.]+)$", text, re.M):
        module, _, name = target.rpartition(".")
        obj = getattr(importlib.import_module(module), name)
        assert inspect.getdoc(obj), f"{target} has no docstring"
        if not inspect.isfunction(obj):
            continue
        params = set(inspect.signature(obj).parameters)
        stale = [p for p in parse_param_docs(obj) if p not in params and not p.startswith("*")]
        assert not stale, f"{target} documents parameters it does not have: {stale}"


# ----------------------------------------------------------------- make_figures helpers
@pytest.fixture(scope="module")
def make_figures():
    sys.path.insert(0, str(DOCS))
    try:
        import make_figures as module
    finally:
        sys.path.remove(str(DOCS))
    return module


def test_figure_options_never_write_other_sizes_into_the_docs(make_figures):
    """The docs' figures are taken at WINDOW; a --size check goes to /tmp (or --out), and a bad
    size is refused."""
    from pathlib import Path

    settings = make_figures.SETTINGS
    try:
        make_figures.configure([])
        assert settings.size == make_figures.WINDOW == (1280, 800)
        assert settings.folder == make_figures.IMAGES
        make_figures.configure(["--size", "1600x1200", "--only", "home"])
        assert settings.size == (1600, 1200) and settings.max_width == 1600
        assert settings.folder == Path("/tmp/spatialdl_figures_1600x1200")
        make_figures.configure(["--size", "1600x1200", "--out", "/tmp/elsewhere"])
        assert settings.folder == Path("/tmp/elsewhere")
        with pytest.raises(SystemExit):
            make_figures.configure(["--size", "big"])
    finally:
        make_figures.configure([])


def test_save_writes_small_faithful_png(make_figures, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(make_figures, "IMAGES", tmp_path)
    monkeypatch.setattr(make_figures, "ROOT", tmp_path)
    rng = np.random.default_rng(0)
    image = np.zeros((700, 1600, 4), dtype=np.uint8)
    image[..., :3] = rng.integers(0, 4, size=(700, 1600, 1)) * 60  # four grey levels
    image[100:200, 100:400, 0] = 255
    path = make_figures.save(image, "test")
    with Image.open(path) as img:
        assert img.width == make_figures.MAX_WIDTH
        assert img.height == round(700 * make_figures.MAX_WIDTH / 1600)
        rgb = np.asarray(img.convert("RGB"))
    # the red block is still red where it was (scaled)
    scale = make_figures.MAX_WIDTH / 1600
    block = rgb[int(120 * scale):int(180 * scale), int(150 * scale):int(350 * scale)]
    assert (block[..., 0] > 200).all()


def test_panels_grid(make_figures, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(make_figures, "IMAGES", tmp_path)
    monkeypatch.setattr(make_figures, "ROOT", tmp_path)
    tiles = [np.full((100, 200, 3), v, dtype=np.uint8) for v in (50, 100, 150)]
    path = make_figures.panels(tiles, ["a", "b", "c"], "grid", n_cols=2, width=300, gap=8)
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    assert rgb.shape[1] == 2 * 300 + 8
    cell_h = 150 + 30
    assert rgb.shape[0] == 2 * cell_h + 8
    # each tile keeps its grey level below its title
    assert abs(rgb[30 + 75, 150, 0] - 50) <= 3
    assert abs(rgb[30 + 75, 308 + 150, 0] - 100) <= 3
    assert abs(rgb[cell_h + 8 + 30 + 75, 150, 0] - 150) <= 3


if __name__ == "__main__":
    for case_name, case in CASES.items():
        try:
            print(f"<!-- message: {case_name} -->\n```text\n{case()}\n```\n")
        except BaseException as exc:  # pytest.skip raises a BaseException
            print(f"{case_name}: skipped ({exc})\n")


# ------------------------------------------------------------- parameter tables in tutorials
TUTORIAL_METHODS = {
    "deconvolution.md": ("deconvolve", "spatialdl"),
    "annotation.md": ("annotate", "spatialdl"),
    "imputation.md": ("impute", "spatialdl"),
    "integration.md": ("integrate", "spatialdl"),
}


def _as_doc_text(value) -> str:
    """How a default is written in the tutorials' parameter tables."""
    if value is None:
        return "(none)"
    if value is True:
        return "on"
    if value is False:
        return "off"
    return str(value)


def _same(doc: str, value) -> bool:
    doc = doc.replace("`", "").strip()
    doc = doc.split("=")[0].strip() if doc.startswith("(none)") else doc
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return doc == _as_doc_text(value)
    try:
        return float(doc.replace(",", "")) == float(value)
    except ValueError:
        return False


@pytest.mark.parametrize("page", sorted(TUTORIAL_METHODS))
def test_tutorial_parameter_tables_match_the_defaults(page):
    import inspect

    import napari_spatialdl as sdl
    from napari_spatialdl.tasks import get_method

    task, method = TUTORIAL_METHODS[page]
    # what a user can pass: the task function's own arguments (layers, options, device, seed)
    # and the method's parameters
    signature = dict(inspect.signature(getattr(sdl, task)).parameters)
    signature.update(inspect.signature(get_method(task, method).func).parameters)
    text = (DOCS / "tutorials" / page).read_text()
    section = text.split("### The parameters", 1)[1].splitlines()
    start = next(i for i, line in enumerate(section) if line.startswith("|"))
    rows = []
    for line in section[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    checked = 0
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        names = [n.strip().replace(" ", "_") for n in re.split(r"[/,]", cells[0])]
        defaults = [d.strip() for d in cells[1].split(",")] if len(names) > 1 else [cells[1]]
        if len(defaults) != len(names):  # "(none) = X" for two layers: one default for both
            defaults = defaults * len(names) if len(defaults) == 1 else defaults
        for name, doc in zip(names, defaults):
            assert name in signature, f"{page}: no parameter {name!r} in {task}/{method}"
            assert _same(doc, signature[name].default), (
                f"{page}: {name} is documented with default {doc!r}, the code has "
                f"{signature[name].default!r}")
            checked += 1
    assert checked >= 5


# ------------------------------------------------------------------ benchmarks page hook
def test_benchmark_hook_includes_every_result_file(tmp_path, monkeypatch):
    sys.path.insert(0, str(DOCS))
    try:
        import hooks
    finally:
        sys.path.remove(str(DOCS))
    assert "No benchmark results yet" in hooks.results_markdown(tmp_path)
    (tmp_path / "speed_2026.md").write_text("# Speed (2026-01-02)\n\n| a |\n|---|\n| 1 |\n")
    (tmp_path / "accuracy_x.md").write_text("# Accuracy (2026-01-01)\n\n```bash\n# a comment\n```\n## Table\n")
    text = hooks.results_markdown(tmp_path)
    assert text.index("## Accuracy (2026-01-01)") < text.index("## Speed (2026-01-02)")
    assert "### Table" in text and "\n# a comment\n" in text  # code comments are not headings
    page = "# Benchmarks\n\n" + hooks.MARKER
    monkeypatch.setattr(hooks, "RESULTS", tmp_path)
    out = hooks.on_page_markdown(page, None, None, None)
    assert hooks.MARKER not in out and out.startswith("# Benchmarks") and "| 1 |" in out
    assert hooks.MARKER in (DOCS / "benchmarks.md").read_text()
