"""The transformer annotator (``method="transformer"``): rank-value encoding, training through the
public API, calibrated confidence, cancel, save/load, and loading a Geneformer-format checkpoint
(a tiny one written here in the Hugging Face BERT layout; nothing is downloaded).
"""

from __future__ import annotations

import copy as _copy
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from anndata import AnnData

import napari_spatialdl as sdl
from napari_spatialdl._constants import CELL_TYPE_KEY, CONFIDENCE_KEY, UNASSIGNED, UNS_KEY
from napari_spatialdl.models._train import ProgressEvent
from napari_spatialdl.models.transformer import (
    PAD,
    CheckpointError,
    GeneTransformerClassifier,
    gene_medians,
    load_geneformer,
    rank_value_encode,
)
from napari_spatialdl.tasks import InputError, annotate_iter, method_parameters

FAST = {"pretrain_epochs": 2, "max_epochs": 15}


# ----------------------------------------------------------------------------- data

def _snapshot(adata: AnnData) -> dict:
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X, copy=True)
    return {"X": X, "obs": adata.obs.copy(), "var": adata.var.copy(), "obsm": set(adata.obsm.keys()),
            "layers": set(adata.layers.keys()), "uns": repr(_copy.deepcopy(dict(adata.uns)))}


def _assert_unchanged(adata: AnnData, snap: dict) -> None:
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    np.testing.assert_array_equal(X, snap["X"])
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert set(adata.obsm.keys()) == snap["obsm"] and set(adata.layers.keys()) == snap["layers"]
    assert repr(dict(adata.uns)) == snap["uns"]


@pytest.fixture(scope="module")
def tissue():
    """The package's synthetic reference: batch 'batch1' is the reference, 'batch2' the query."""
    _, reference = sdl.datasets.synthetic_tissue(seed=0, n_spots=30, n_genes=120, n_cell_types=4,
                                                 n_reference_cells=400, n_batches=2, image_size=64)
    batch = reference.obs["batch"].astype(str).to_numpy()
    first = sorted(set(batch))[0]
    ref = reference[batch == first].copy()
    query = reference[batch != first].copy()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    query.obs = query.obs.drop(columns=["cell_type"])
    return query, ref, truth


@pytest.fixture(scope="module")
def fitted(tissue):
    query, ref, _ = tissue
    return sdl.annotate(query, ref, "cell_type", method="transformer", copy=True, **FAST)


# ----------------------------------------------------------------------------- encoding

def test_rank_value_encoding_hand_made():
    counts = np.array([[0, 4, 1, 2, 3],
                       [5, 0, 0, 0, 0],
                       [0, 0, 0, 0, 0],
                       [1, 1, 0, 1, 0]], dtype=np.float32)
    medians = np.array([1.0, 2.0, 1.0, 4.0, 1.0])
    # row 0: counts / median = [0, 2, 1, 0.5, 3] -> genes 4, 1, 2, 3 -> tokens 2 + gene
    tokens = rank_value_encode(counts, medians, max_tokens=10)
    assert tokens.shape == (4, 4)  # the most detected genes of any cell
    np.testing.assert_array_equal(tokens[0], [6, 3, 4, 5])
    np.testing.assert_array_equal(tokens[1], [2, PAD, PAD, PAD])
    np.testing.assert_array_equal(tokens[2], [PAD] * 4)
    # row 3: [1, 0.5, 0, 0.25, 0]; ties would keep the column order
    np.testing.assert_array_equal(tokens[3], [2, 3, 5, PAD])
    ties = rank_value_encode(np.array([[1, 1, 0, 1]]), np.ones(4), max_tokens=10)
    np.testing.assert_array_equal(ties[0], [2, 3, 5])
    top2 = rank_value_encode(sp.csr_matrix(counts), medians, max_tokens=2)
    np.testing.assert_array_equal(top2, tokens[:, :2])
    custom = rank_value_encode(counts[:1], medians, max_tokens=3, token_ids=np.array([10, 11, 12, 13, 14]))
    np.testing.assert_array_equal(custom[0], [14, 11, 12])
    with pytest.raises(ValueError, match="5 positive values"):
        rank_value_encode(counts, np.array([1.0, 0.0, 1.0, 1.0, 1.0]), 3)


def test_gene_medians_are_of_nonzero_normalised_values():
    counts = np.array([[1, 0, 0], [3, 1, 0], [0, 2, 0]], dtype=np.float32)
    # normalised to 10^4: row 0 [1e4, 0, 0], row 1 [7500, 2500, 0], row 2 [0, 1e4, 0]
    np.testing.assert_allclose(gene_medians(counts), [8750.0, 6250.0, 1.0])
    np.testing.assert_allclose(gene_medians(sp.csr_matrix(counts)), [8750.0, 6250.0, 1.0])


def test_model_reads_the_encoding_it_documents(tissue):
    query, ref, _ = tissue
    genes = list(ref.var_names)
    model = GeneTransformerClassifier(genes, ["a", "b"], max_tokens=16)
    X = ref.X[:20]
    med = model.set_medians(ref.X)
    np.testing.assert_array_equal(model.encode(X), rank_value_encode(X, med, 16))


# ----------------------------------------------------------------------------- through the API

def test_learns_separable_synthetic_types_across_batches(tissue, fitted):
    query, ref, truth = tissue
    pred = fitted.adata.obs[CELL_TYPE_KEY].astype(str).to_numpy()
    assert (pred == truth).mean() > 0.9
    assert fitted.method == "transformer" and CELL_TYPE_KEY not in query.obs
    meta = fitted.adata.uns[UNS_KEY]["annotate"]
    assert meta["method"] == "transformer" and meta["params"]["max_epochs"] == FAST["max_epochs"]
    assert fitted.info["pretrain_epochs"] == FAST["pretrain_epochs"]
    assert 0 <= fitted.info["ece"] < 0.2 and fitted.info["temperature"] > 0
    assert fitted.info["n_calibration_cells"] > 0


def test_confidence_in_unit_interval_and_unassigned_below_threshold(tissue, fitted):
    query, ref, _ = tissue
    conf = fitted.adata.obs[CONFIDENCE_KEY].to_numpy()
    assert conf.dtype == np.float32 and ((conf >= 0) & (conf <= 1)).all()
    below_one = conf[conf < 1.0]  # separable types: many cells are certain (1 in float32)
    assert below_one.size >= 4
    threshold = float(np.median(below_one))
    strict = sdl.annotate(query, ref, "cell_type", method="transformer", threshold=threshold, copy=True, **FAST)
    same = strict.adata.obs[CONFIDENCE_KEY].to_numpy()
    np.testing.assert_allclose(same, conf, rtol=1e-5)  # same seed, same model
    unassigned = (strict.adata.obs[CELL_TYPE_KEY] == UNASSIGNED).to_numpy()
    assert unassigned.any() and not unassigned.all()
    np.testing.assert_array_equal(unassigned, same < threshold)
    assert strict.info["n_unassigned"] == int(unassigned.sum())


def test_cancel_midway_leaves_the_data_unchanged(tissue):
    query, ref, _ = tissue
    q, r = query.copy(), ref.copy()
    snaps = _snapshot(q), _snapshot(r)
    gen = annotate_iter(q, r, "cell_type", method="transformer", pretrain_epochs=2, max_epochs=30)
    events = [next(gen) for _ in range(3)]  # both pretraining epochs, then one of fine-tuning
    assert all(isinstance(e, ProgressEvent) for e in events)
    assert [e.stage for e in events] == ["pretrain", "pretrain", "finetune"]
    assert [e.epoch for e in events] == [1, 2, 3] and {e.n_epochs for e in events} == {32}
    gen.close()
    _assert_unchanged(q, snaps[0])
    _assert_unchanged(r, snaps[1])


def test_save_load_round_trip_is_weights_only(tmp_path, tissue, fitted):
    query, _, _ = tissue
    model = fitted.model
    path = model.save(tmp_path / "transformer.pt")
    payload = torch.load(path, weights_only=True)  # nothing but tensors and plain values
    assert json.loads(payload["config_json"])["extra"]["classes"] == model.classes
    loaded = GeneTransformerClassifier.load(path)
    np.testing.assert_allclose(loaded.predict_proba(query.X), model.predict_proba(query.X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.embed(query.X), model.embed(query.X), rtol=1e-5, atol=1e-6)
    assert loaded.temperature == model.temperature and loaded.genes == model.genes
    proba = loaded.predict_proba(query.X)
    labels = np.asarray(loaded.classes)[proba.argmax(axis=1)]
    np.testing.assert_array_equal(labels, fitted.adata.obs[CELL_TYPE_KEY].astype(str).to_numpy())


def test_embeddings_separate_the_cell_types(tissue, fitted):
    query, ref, truth = tissue
    model = fitted.model
    Zr, Zq = model.embed(ref.X), model.embed(query.X)
    assert Zq.shape == (query.n_obs, model.init_kwargs["d_model"]) and np.isfinite(Zq).all()
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(5).fit(Zr, ref.obs["cell_type"].astype(str))
    assert (knn.predict(Zq) == truth).mean() > 0.85


def test_query_is_reference_with_missing_labels(tissue):
    _, ref, _ = tissue
    adata = ref.copy()
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    labels = truth.astype(object)
    hidden = np.random.default_rng(0).random(len(labels)) < 0.5
    labels[hidden] = np.nan
    adata.obs["partial"] = pd.Categorical(labels)
    res = sdl.annotate(adata, adata, "partial", method="transformer", **FAST)
    pred = adata.obs[CELL_TYPE_KEY].astype(str).to_numpy()
    assert res.info["n_unlabelled_reference_cells"] == int(hidden.sum())
    assert (pred[hidden] == truth[hidden]).mean() > 0.85


def test_parameters_are_checked_and_documented(tissue):
    query, ref, _ = tissue
    params = {p.name: p for p in method_parameters("annotate", "transformer")}
    assert {"max_tokens", "pretrain_epochs", "max_epochs", "pretrained", "token_dictionary", "trusted"} <= set(params)
    assert all(p.doc for p in params.values())
    q = query.copy()
    snap = _snapshot(q)
    for bad, match in (({"n_heads": 5}, "must divide d_model"), ({"max_epochs": 0}, "max_epochs must be at least 1"),
                       ({"calibration_fraction": 0.7}, r"calibration_fraction must be in \[0, 0.5\)"),
                       ({"trusted": True}, "only apply with pretrained")):
        with pytest.raises(InputError, match=match):
            sdl.annotate(q, ref, "cell_type", method="transformer", **bad)
        _assert_unchanged(q, snap)


# ----------------------------------------------------------------------------- pretrained checkpoints

D, HEADS, FF, LAYERS, POS = 16, 2, 32, 2, 24
CKPT_GENES = [f"ENSMUSG{i:05d}" for i in range(12)]


def _tiny_checkpoint(folder, *, token_format: str = "json", weights: str = "bin", medians: bool = False):
    """A random BERT (BertForMaskedLM names) with a Geneformer-like token dictionary.

    The dictionary knows 12 genes (token ids 2..13 in a shuffled order) and ``<pad>``/``<mask>``;
    the data will have 10 of them plus 2 genes it does not know.
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab = 2 + len(CKPT_GENES) + 3  # + 3 tokens of genes absent from the data
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": D,
              "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "intermediate_size": FF,
              "hidden_act": "relu", "max_position_embeddings": POS, "vocab_size": vocab,
              "layer_norm_eps": 1e-12, "type_vocab_size": 2, "pad_token_id": 0,
              "hidden_dropout_prob": 0.02, "attention_probs_dropout_prob": 0.02}
    (folder / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    s = {"bert.embeddings.word_embeddings.weight": rnd(vocab, D),
         "bert.embeddings.position_embeddings.weight": rnd(POS, D),
         "bert.embeddings.token_type_embeddings.weight": rnd(2, D),
         "bert.embeddings.LayerNorm.weight": 1 + rnd(D), "bert.embeddings.LayerNorm.bias": rnd(D)}
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            s[p + f"attention.self.{name}.weight"], s[p + f"attention.self.{name}.bias"] = rnd(D, D), rnd(D)
        s[p + "attention.output.dense.weight"], s[p + "attention.output.dense.bias"] = rnd(D, D), rnd(D)
        s[p + "attention.output.LayerNorm.weight"], s[p + "attention.output.LayerNorm.bias"] = 1 + rnd(D), rnd(D)
        s[p + "intermediate.dense.weight"], s[p + "intermediate.dense.bias"] = rnd(FF, D), rnd(FF)
        s[p + "output.dense.weight"], s[p + "output.dense.bias"] = rnd(D, FF), rnd(D)
        s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"] = 1 + rnd(D), rnd(D)
    s["cls.predictions.transform.dense.weight"], s["cls.predictions.transform.dense.bias"] = rnd(D, D), rnd(D)
    s["cls.predictions.transform.LayerNorm.weight"] = 1 + rnd(D)
    s["cls.predictions.transform.LayerNorm.bias"] = rnd(D)
    s["cls.predictions.bias"] = rnd(vocab)
    s["cls.predictions.decoder.weight"] = s["bert.embeddings.word_embeddings.weight"]
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.clone().contiguous() for k, v in s.items()}, str(folder / "model.safetensors"))
    else:
        torch.save(s, folder / "pytorch_model.bin")
    ids = np.random.default_rng(1).permutation(len(CKPT_GENES)) + 2
    tokens = {"<pad>": 0, "<mask>": 1, **{gene: int(t) for gene, t in zip(CKPT_GENES, ids)}}
    if token_format == "json":
        (folder / "token_dictionary.json").write_text(json.dumps(tokens))
    else:
        with open(folder / "token_dictionary.pkl", "wb") as fh:
            pickle.dump(tokens, fh)
    if medians:
        (folder / "gene_median_dictionary.json").write_text(
            json.dumps({gene: float(k + 1) for k, gene in enumerate(CKPT_GENES)}))
    return config, s, tokens


def _reference_bert(s: dict, ids: torch.Tensor) -> torch.Tensor:
    """BERT's encoder written out from the Hugging Face weights (post-LN, ReLU), for comparison."""
    pad = ids == 0
    L = ids.shape[1]
    x = (s["bert.embeddings.word_embeddings.weight"][ids] + s["bert.embeddings.position_embeddings.weight"][:L]
         + s["bert.embeddings.token_type_embeddings.weight"][0])
    x = F.layer_norm(x, (D,), s["bert.embeddings.LayerNorm.weight"], s["bert.embeddings.LayerNorm.bias"], 1e-12)
    dh = D // HEADS
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."

        def lin(h, name, p=p):
            return h @ s[p + name + ".weight"].T + s[p + name + ".bias"]

        def heads(h):
            return h.view(h.shape[0], L, HEADS, dh).transpose(1, 2)

        q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / dh ** 0.5
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = F.layer_norm(x + lin(a, "attention.output.dense"), (D,), s[p + "attention.output.LayerNorm.weight"],
                         s[p + "attention.output.LayerNorm.bias"], 1e-12)
        f = lin(torch.relu(lin(x, "intermediate.dense")), "output.dense")
        x = F.layer_norm(x + f, (D,), s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"], 1e-12)
    return x


def _checkpoint_data(n: int = 60, seed: int = 0):
    """Cells with 10 of the checkpoint's genes and 2 unknown ones, two types."""
    genes = CKPT_GENES[:10] + ["Unknown1", "Unknown2"]
    rng = np.random.default_rng(seed)
    types = np.repeat(["A", "B"], n // 2)
    mu = np.where(types[:, None] == "A", np.r_[np.full(5, 8.0), np.full(7, 1.0)], np.r_[np.full(5, 1.0), np.full(7, 8.0)])
    X = rng.poisson(mu).astype(np.float32)
    X[:, 0] += 1
    obs = pd.DataFrame({"cell_type": pd.Categorical(types)}, index=[f"c{seed}_{i}" for i in range(n)])
    return AnnData(X, obs=obs, var=pd.DataFrame(index=genes))


def test_pretrained_checkpoint_weights_map_onto_the_encoder(tmp_path):
    folder = tmp_path / "gf-tiny"
    config, s, tokens = _tiny_checkpoint(folder)
    adata = _checkpoint_data()
    genes = list(adata.var_names)
    model = GeneTransformerClassifier.from_pretrained(folder, genes, ["A", "B"], max_tokens=10)
    enc = model.module
    assert model.extra["in_vocabulary"] == [True] * 10 + [False, False]
    assert model.extra["pretrained"]["n_genes_in_dictionary"] == 10
    # one weight, value by value: the first layer's query projection
    np.testing.assert_array_equal(enc.layers[0].query.weight.detach().numpy(),
                                  s["bert.encoder.layer.0.attention.self.query.weight"].numpy())
    np.testing.assert_array_equal(enc.layers[1].ff_out.bias.detach().numpy(),
                                  s["bert.encoder.layer.1.output.dense.bias"].numpy())
    # a gene's embedding is the checkpoint's row of its token id
    gene = genes[3]
    row = int(enc.gene_token[3])
    np.testing.assert_array_equal(enc.token_embedding.weight[row].detach().numpy(),
                                  s["bert.embeddings.word_embeddings.weight"][tokens[gene]].numpy())
    np.testing.assert_array_equal(enc.mlm_bias[row].detach().numpy(), s["cls.predictions.bias"][tokens[gene]].numpy())
    # the whole encoder computes what BERT computes on the checkpoint's own token ids
    model.set_medians(adata.X)
    enc.eval()
    with torch.no_grad():
        compact = enc.tokens(torch.as_tensor(adata.X[:8]))
        to_ckpt = torch.as_tensor([0, 1] + [tokens[g] for g in genes[:10]])
        ours = enc.hidden(compact)
        theirs = _reference_bert(s, to_ckpt[compact])
    valid = (compact != PAD).unsqueeze(-1)
    assert int((compact >= 2).sum()) > 8 * 5  # real sequences, not just padding
    torch.testing.assert_close(ours * valid, theirs * valid, rtol=1e-4, atol=1e-4)
    # the unknown genes never become tokens
    assert not np.isin(model.encode(adata.X), [0]).all()
    assert int(enc.gene_scale[10]) == 0 and int(enc.gene_scale[11]) == 0


def test_pretrained_medians_from_the_checkpoint_are_used(tmp_path):
    folder = tmp_path / "gf-med"
    _tiny_checkpoint(folder, medians=True)
    adata = _checkpoint_data()
    model = GeneTransformerClassifier.from_pretrained(folder, list(adata.var_names), ["A", "B"], max_tokens=10)
    model.set_medians(adata.X)
    scale = model.module.gene_scale.numpy()
    np.testing.assert_allclose(scale[:10], 1.0 / np.arange(1, 11), rtol=1e-6)
    assert (scale[10:] == 0).all()


def test_pretrained_through_annotate(tmp_path):
    folder = tmp_path / "gf-api"
    _tiny_checkpoint(folder)
    ref, query = _checkpoint_data(60, 0), _checkpoint_data(40, 1)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    query.obs = query.obs.drop(columns=["cell_type"])
    res = sdl.annotate(query, ref, "cell_type", method="transformer", pretrained=str(folder),
                       max_tokens=10, pretrain_epochs=1, max_epochs=20, copy=True)
    assert res.info["pretrained"]["n_genes_in_dictionary"] == 10
    assert res.model.init_kwargs["d_model"] == D and res.model.init_kwargs["n_layers"] == LAYERS
    assert (res.adata.obs[CELL_TYPE_KEY].astype(str).to_numpy() == truth).mean() > 0.9


def test_pickled_token_dictionary_is_refused_unless_trusted(tmp_path):
    folder = tmp_path / "gf-pkl"
    _tiny_checkpoint(folder, token_format="pkl")
    adata = _checkpoint_data()
    with pytest.raises(CheckpointError, match=r"token_dictionary\.pkl is a pickle.*JSON.*trusted=True"):
        load_geneformer(folder)
    with pytest.raises(CheckpointError, match="is a pickle"):
        GeneTransformerClassifier.from_pretrained(folder, list(adata.var_names), ["A", "B"], max_tokens=10)
    q = adata.copy()
    snap = _snapshot(q)
    with pytest.raises(InputError, match="is a pickle"):
        sdl.annotate(q, adata, "cell_type", method="transformer", pretrained=str(folder), max_tokens=10)
    _assert_unchanged(q, snap)
    ckpt = load_geneformer(folder, trusted=True)
    assert ckpt.token_dictionary["<mask>"] == 1 and len(ckpt.token_dictionary) == 14


class _NotATensor:
    """A pickled object that torch.load(weights_only=True) must refuse."""


def test_weights_are_read_as_tensors_only(tmp_path):
    folder = tmp_path / "gf-evil"
    _tiny_checkpoint(folder)
    torch.save({"bert.embeddings.word_embeddings.weight": _NotATensor()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_geneformer(folder)


def test_checkpoint_problems_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="is not a folder"):
        load_geneformer(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_geneformer(empty)
    folder = tmp_path / "gf-other"
    _tiny_checkpoint(folder)
    (folder / "token_dictionary.json").unlink()
    with pytest.raises(CheckpointError, match="no token dictionary.*token_dictionary="):
        load_geneformer(folder)
    folder2 = tmp_path / "gf-genes"
    _tiny_checkpoint(folder2)
    with pytest.raises(CheckpointError, match="None of the 3 genes.*token dictionary"):
        GeneTransformerClassifier.from_pretrained(folder2, ["Gad1", "Sst", "Pvalb"], ["A"], max_tokens=10)
    with pytest.raises(CheckpointError, match="max_position_embeddings"):
        GeneTransformerClassifier.from_pretrained(folder2, CKPT_GENES, ["A"], max_tokens=POS + 1)
    state = torch.load(folder2 / "pytorch_model.bin", weights_only=True)
    del state["bert.encoder.layer.1.output.dense.weight"]
    torch.save(state, folder2 / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"no 'encoder\.layer\.1\.output\.dense\.weight'"):
        GeneTransformerClassifier.from_pretrained(folder2, CKPT_GENES, ["A"], max_tokens=10)


def test_safetensors_checkpoint(tmp_path):
    pytest.importorskip("safetensors")
    folder = tmp_path / "gf-st"
    _, s, _ = _tiny_checkpoint(folder, weights="safetensors")
    model = GeneTransformerClassifier.from_pretrained(folder, CKPT_GENES, ["A"], max_tokens=10)
    np.testing.assert_array_equal(model.module.layers[0].key.weight.detach().numpy(),
                                  s["bert.encoder.layer.0.attention.self.key.weight"].numpy())


def test_sparse_and_dense_counts_train_the_same_model():
    ref, query = _checkpoint_data(60, 0), _checkpoint_data(30, 1)
    kwargs = {"method": "transformer", "pretrain_epochs": 1, "max_epochs": 4, "max_tokens": 8, "copy": True}
    dense = sdl.annotate(query, ref, "cell_type", **kwargs)
    sref, squery = ref.copy(), query.copy()
    sref.X, squery.X = sp.csr_matrix(sref.X), sp.csr_matrix(squery.X)
    sparse = sdl.annotate(squery, sref, "cell_type", **kwargs)
    np.testing.assert_allclose(sparse.adata.obs[CONFIDENCE_KEY].to_numpy(),
                               dense.adata.obs[CONFIDENCE_KEY].to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.realdata
def test_benchmark_panel_case_is_the_most_variable_genes_of_the_training_replicates(shared_data):
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import _protocols as P
        import accuracy as A
    finally:
        sys.path.remove(str(bench))
    from napari_spatialdl.preprocessing import highly_variable_genes

    reference, _ = P.load_hippocampus(shared_data / "hippocampus_visium")
    case = A._panel_case(reference)
    query, train, labels_key = case.args
    assert query.n_vars == train.n_vars == P.PANEL_GENES and labels_key == "cell_type"
    rows = reference.obs["rep"].astype(str).isin(P.TRAIN_REPS).to_numpy()
    expected = reference.var_names[highly_variable_genes(reference.X[rows], P.PANEL_GENES)]
    assert list(train.var_names) == list(expected) == list(query.var_names)
    assert list(train.obs_names) == list(reference.obs_names[rows])
    assert "cell_type" not in query.obs and train.n_obs + query.n_obs == reference.n_obs
    assert case.dataset == "hippocampus 130-gene panel"
