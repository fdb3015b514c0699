"""The npe2 manifest (napari.yaml) is valid and every command it names exists."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import napari_spatialdl

MANIFEST = Path(napari_spatialdl.__file__).parent / "napari.yaml"
COMMANDS = yaml.safe_load(MANIFEST.read_text())["contributions"]["commands"]


def _npe2(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("npe2", path=str(Path(sys.executable).parent)) or shutil.which("npe2")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "npe2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_npe2_validate_installed_package():
    out = _npe2("validate", "napari-spatialdl")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


def test_npe2_validate_with_imports():
    out = _npe2("validate", "napari-spatialdl", "--imports")
    assert out.returncode == 0, out.stdout + out.stderr


def test_manifest_is_the_installed_one():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-spatialdl")
    assert manifest.display_name == "Spatial DL"
    assert {c.id for c in manifest.contributions.commands} == {c["id"] for c in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS, ids=[c["id"].split(".")[-1] for c in COMMANDS])
def test_python_name_imports_and_is_callable(command):
    module_name, _, attr = command["python_name"].partition(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr)
    assert callable(obj)


def test_every_widget_contribution_has_a_command():
    contributions = yaml.safe_load(MANIFEST.read_text())["contributions"]
    ids = {c["id"] for c in contributions["commands"]}
    for section in ("widgets", "readers", "writers", "sample_data"):
        for entry in contributions.get(section, []):
            assert entry["command"] in ids, f"{section} entry points at unknown command {entry['command']}"


def test_readers_and_writers_do_not_import_the_napari_side():
    """io reads and writes AnnData only; the npe2 adapters (napari side) build the layers."""
    code = ("import sys, napari_spatialdl.io as io; io.read_visium; io.read_h5ad; io.write_h5ad; "
            "io.read_counts_csv; import napari_spatialdl._napari._npe2; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6') "
            "or m in ('napari_spatialdl.layers', 'napari_spatialdl._widgets')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    io_dir = Path(napari_spatialdl.__file__).parent / "io"
    for source in io_dir.glob("*.py"):
        text = source.read_text()
        for forbidden in ("layers import", "from ..layers", "_napari", "_widgets"):
            assert forbidden not in text, f"{source.name} imports the napari side ({forbidden!r})"


def test_manifest_commands_live_on_the_napari_side():
    for command in COMMANDS:
        module = command["python_name"].partition(":")[0]
        assert not module.startswith("napari_spatialdl.io"), command  # adapters are in _napari


@pytest.mark.gui
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)")
def test_every_widget_opens_from_the_plugins_menu(make_napari_viewer):
    import warnings

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 800)
    viewer.open_sample("napari-spatialdl", "synthetic_tissue")
    contributions = yaml.safe_load(MANIFEST.read_text())["contributions"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for entry in contributions["widgets"]:
            dock, widget = viewer.window.add_plugin_dock_widget("napari-spatialdl", entry["display_name"])
            assert widget is not None, entry["display_name"]
    private = [str(w.message) for w in caught if "Private attribute access" in str(w.message)]
    assert not private, private  # no plugin code reads private attributes through napari's proxy
    names = set(viewer.window.dock_widgets)
    for entry in contributions["widgets"]:
        assert any(entry["display_name"] in n for n in names), (entry["display_name"], names)
    # every panel, stacked: the window stays within the screen (the panels scroll)
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    main = widget.window()
    assert main.screen().availableGeometry().contains(main.frameGeometry())
    assert main.height() <= 808, main.height()
    from gui_helpers import save_window

    save_window(viewer, "all_widgets_stacked")
