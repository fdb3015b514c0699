"""Reference backends: the published tools (scvi-tools, Tangram, CellTypist, Harmony, MAGIC), one module per tool."""
