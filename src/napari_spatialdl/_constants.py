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

# Derived results (computed in tasks/_derived.py; the CLI and the GUI use the same keys)
CLUSTERS_KEY = "spatialdl_clusters"  # obs: clusters of the integration latent space
DOMINANT_KEY = "spatialdl_dominant_cell_type"  # obs: argmax of the proportions
PREDICTED_GENES_KEY = "spatialdl_predicted_genes"  # obsm: genes predicted from a reference
REGION_KEY = "annotated_region"  # obs: regions drawn by hand (Regions widget)
