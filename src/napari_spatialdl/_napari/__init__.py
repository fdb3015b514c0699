"""napari adapters: npe2 reader/writer commands (imported by napari through napari.yaml)."""
