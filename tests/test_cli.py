"""The ``napari-spatialdl`` command: demo (PNG, no Qt), run, methods."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from napari_spatialdl import cli


@pytest.fixture(scope="module")
def small_tissue():
    from napari_spatialdl.datasets import synthetic_tissue

    return synthetic_tissue(0, n_spots=300, n_genes=150, n_reference_cells=600, image_size=600)


def _has_native_deconvolution() -> bool:
    from napari_spatialdl.tasks import list_methods

    try:
        return any(m.name == "spatialdl" for m in list_methods("deconvolve"))
    except ImportError:
        return False


def test_console_script_help():
    exe = shutil.which("napari-spatialdl", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "napari_spatialdl.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "demo" in out.stdout and "run" in out.stdout


def test_demo_parser_options():
    args = cli.build_parser().parse_args(["demo", "--no-gui", "--out", "x.png", "--seed", "3",
                                          "--method", "tangram", "--param", "max_epochs=5"])
    assert args.no_gui and args.out == "x.png" and args.seed == 3 and args.method == "tangram"
    assert cli._parse_params(args.param) == {"max_epochs": 5}
    assert cli._parse_params(["name=abc", "flag=True", "lr=0.1"]) == {"name": "abc", "flag": True, "lr": 0.1}


def test_dominant_type_uses_reference_colours(small_tissue):
    spatial, reference = small_tissue
    spatial = spatial.copy()
    spatial.obsm["spatialdl_proportions"] = spatial.obsm["true_proportions"].copy()
    dominant = cli.add_dominant_type(spatial, reference)
    truth = spatial.obsm["true_proportions"]
    assert list(dominant) == list(truth.columns[truth.to_numpy().argmax(1)])
    ref_colors = dict(zip(reference.obs["cell_type"].cat.categories, reference.uns["cell_type_colors"]))
    assert spatial.uns["spatialdl_dominant_cell_type_colors"] == [ref_colors[c] for c in truth.columns]
    scores = cli.truth_agreement(spatial)
    assert scores == pytest.approx({"pearson": 1.0, "rmse": 0.0, "dominant_accuracy": 1.0})


def test_overview_figure_draws_spots_on_the_tissue(small_tissue, tmp_path):
    from napari_spatialdl.io import spots_px
    from napari_spatialdl.layers import spot_colors

    spatial, reference = small_tissue
    spatial = spatial.copy()
    spatial.obsm["spatialdl_proportions"] = spatial.obsm["true_proportions"].copy()
    cli.add_dominant_type(spatial, reference)
    fig = cli.overview_figure(spatial, n_types=3, dpi=100)
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255
    ax = fig.axes[0]
    assert len([a for a in fig.axes if a.get_title().endswith("proportion")]) == 3
    # the legend names every dominant type
    legend_names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend_names == list(spatial.obs["spatialdl_dominant_cell_type"].cat.categories)
    # at each spot centre the figure shows that spot's colour
    xy = spots_px(spatial)
    disp = ax.transData.transform(xy)
    cols = np.round(disp[:, 0]).astype(int)
    rows = np.round(buf.shape[0] - disp[:, 1]).astype(int)
    rgba, _, _ = spot_colors(spatial, "spatialdl_dominant_cell_type")
    err = np.abs(buf[rows, cols] - rgba[:, :3]).max(axis=1)
    assert np.mean(err < 0.08) > 0.95
    path = cli.render_overview(spatial, tmp_path / "sub" / "o.png")
    assert path.is_file() and path.stat().st_size > 10_000
    # the colours of the types named in the legend are in the PNG
    import imageio.v3 as iio

    png = iio.imread(path)[..., :3].reshape(-1, 3).astype(float) / 255
    colors = spatial.uns["spatialdl_dominant_cell_type_colors"]
    for i in np.unique(spatial.obs["spatialdl_dominant_cell_type"].cat.codes):
        assert (np.abs(png - np.array(to_rgb(colors[i]))).max(axis=1) < 0.03).sum() > 20


@pytest.mark.skipif(not _has_native_deconvolution(), reason="native deconvolution not registered yet")
def test_demo_no_gui_writes_png_and_prints_progress(tmp_path, capsys):
    out = tmp_path / "demo.png"
    code = cli.main(["demo", "--no-gui", "--out", str(out), "--n-spots", "300", "--param", "max_epochs=15"])
    assert code == 0
    text = capsys.readouterr().out
    assert "epoch" in text and "Pearson r" in text
    assert f"Wrote {out.resolve()}" in text
    import imageio.v3 as iio

    img = iio.imread(out)
    assert img.shape[0] > 500 and img.shape[1] > 800


@pytest.mark.skipif(not _has_native_deconvolution(), reason="native deconvolution not registered yet")
def test_run_deconvolve_on_files(small_tissue, tmp_path, capsys):
    import anndata as ad

    spatial, reference = small_tissue
    sp_path, ref_path, out = tmp_path / "spatial.h5ad", tmp_path / "ref.h5ad", tmp_path / "out.h5ad"
    spatial.write_h5ad(sp_path)
    reference.write_h5ad(ref_path)
    code = cli.main(["run", "deconvolve", str(sp_path), "--reference", str(ref_path),
                     "--labels-key", "cell_type", "--out", str(out), "--param", "max_epochs=10"])
    assert code == 0
    result = ad.read_h5ad(out)
    props = result.obsm["spatialdl_proportions"]
    assert props.shape == (spatial.n_obs, reference.obs["cell_type"].nunique())
    np.testing.assert_allclose(np.asarray(props).sum(1), 1.0, atol=1e-4)
    assert "Wrote" in capsys.readouterr().out


def test_run_needs_reference(tmp_path, small_tissue):
    spatial, _ = small_tissue
    path = tmp_path / "s.h5ad"
    spatial.write_h5ad(path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "deconvolve", str(path), "--out", str(tmp_path / "o.h5ad")])
    assert exit_info.value.code == 2


def test_run_input_error_is_one_line_unless_debug(tmp_path, small_tissue, capsys):
    spatial, reference = small_tissue
    sp_path, ref_path = tmp_path / "s.h5ad", tmp_path / "r.h5ad"
    spatial.write_h5ad(sp_path)
    reference.write_h5ad(ref_path)
    argv = ["run", "deconvolve", str(sp_path), "--reference", str(ref_path), "--labels-key", "celltype",
            "--out", str(tmp_path / "o.h5ad")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "celltype" in err[0] and "cell_type" in err[0]
    assert "Traceback" not in "".join(err)
    with pytest.raises(ValueError, match="celltype"):
        cli.main(["--debug", *argv])
    assert not (tmp_path / "o.h5ad").exists()


def test_run_options_come_from_the_method_signature(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "deconvolve", "--method", "spatialdl", "--help"])
    out = capsys.readouterr().out
    assert "--spatial-smoothing" in out and "--n-top-genes" in out and "--key-added" in out
    with pytest.raises(SystemExit):
        cli.main(["run", "deconvolve", "--method", "nnls", "--help"])
    assert "--spatial-smoothing" not in capsys.readouterr().out


def test_methods_lists_every_task(capsys):
    assert cli.main(["methods"]) == 0
    text = capsys.readouterr().out
    for task in ("impute", "integrate", "deconvolve", "annotate"):
        assert task in text


def test_progress_printer_prints_tenths_not_every_epoch():
    import io
    from types import SimpleNamespace

    out = io.StringIO()
    report = cli.progress_printer(out)
    for epoch in range(1, 201):
        report(SimpleNamespace(epoch=epoch, n_epochs=200, train_loss=1.0 / epoch, val_loss=None,
                               elapsed=0.1 * epoch, message="", stage="train"))
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 12
    assert lines[-1].startswith("[train] epoch 200/200 loss 0.005")
