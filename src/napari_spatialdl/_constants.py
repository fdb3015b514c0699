"""AnnData keys written by napari-spatialdl (see DESIGN.md, "AnnData conventions")."""

UNS_KEY = "spatialdl"  # run metadata: adata.uns["spatialdl"][task]

IMPUTED_LAYER = "spatialdl_imputed"
LATENT_KEY = "X_spatialdl"
PROPORTIONS_KEY = "spatialdl_proportions"
ABUNDANCE_KEY = "spatialdl_abundance"
CELL_TYPE_KEY = "spatialdl_cell_type"
CONFIDENCE_KEY = "spatialdl_confidence"
UNASSIGNED = "unassigned"

SPATIAL_KEY = "spatial"  # adata.obsm["spatial"] and adata.uns["spatial"][library_id]

TASKS = ("impute", "integrate", "deconvolve", "annotate")
