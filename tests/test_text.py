"""The CLIP text stage: annotation reading, TR mapping, model loading, the stage and its inverse."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

import numpy as np
import openpyxl
import pytest
import torch

from giblet.errors import ConfigError, InputError
from giblet.files import read_sidecar
from giblet.stimulus.media import probe_movie
from giblet.stimulus.text import (
    assign_to_trs, embed_text, embed_texts, encode_tokens, forward_fill, load_text_model,
    nearest_annotations, overlap_counts, read_annotations,
)
from giblet.timing import n_trs as count_trs

TEXTS = ["John walks into the kitchen.", "A dog barks at the mailman outside.", "Sherlock studies the body.",
         "Rain falls on an empty street at night"]


# ----------------------------------------------------------------------------- TR mapping

def test_assign_to_trs_hand_computed():
    # tr = 2 s, 6 TRs: [0,2) [2,4) [4,6) [6,8) [8,10) [10,12)
    onset = np.array([0.5, 8.0, 10.0, 10.2, 11.0, 9.5])
    offset = np.array([5.0, 10.0, 10.5, 12.0, 13.0, 11.0])
    # a0 spans TRs 0-2; TR 3 is a gap; a1 sits exactly on TR 4's edges, so it does not touch TR 5.
    # TR 5 has 4 overlaps: a3 1.8 s, a4 1.0 s, a5 1.0 s, a2 0.5 s -> keep a3 and a5 (a5 wins the tie
    # with a4 by its earlier onset), stored in onset order: a5 (9.5 s), a3 (10.2 s).
    expected = [[0, -1], [0, -1], [0, -1], [-1, -1], [1, 5], [5, 3]]
    index = assign_to_trs(onset, offset, n_trs=6, tr=2.0, k=2)
    assert index.dtype == np.int32 and index.tolist() == expected
    assert overlap_counts(onset, offset, 6, 2.0).tolist() == [1, 1, 1, 0, 2, 4]
    assert assign_to_trs(onset, offset, 6, 2.0, k=1).tolist() == [[0], [0], [0], [-1], [1], [3]]


def test_assign_to_trs_edges_survive_float_rounding():
    # 0.3 / 0.1 = 2.9999999999999996 and 0.6 / 0.1 = 5.999999999999999 in floating point: still TRs 3-5.
    index = assign_to_trs(np.array([0.3]), np.array([0.6]), 8, 0.1, 1)
    assert index[:, 0].tolist() == [-1, -1, -1, 0, 0, 0, -1, -1]
    # 2.1 / 0.7 = 3.0000000000000004: the annotation still ends on TR 3's edge and stays out of it.
    assert assign_to_trs(np.array([0.7]), np.array([2.1]), 5, 0.7, 1)[:, 0].tolist() == [-1, 0, 0, -1, -1]
    # Ends exactly on an edge (4.5 s = TR 3's start): TRs 2 and 3 only; starts exactly on one: from TR 3.
    index = assign_to_trs(np.array([3.0, 4.5]), np.array([4.5, 6.0]), 5, 1.5, 2)
    assert index.tolist() == [[-1, -1], [-1, -1], [0, -1], [1, -1], [-1, -1]]


def test_forward_fill_only_fills_empty_trs():
    index = np.array([[-1, -1], [0, -1], [-1, -1], [-1, -1], [1, 2], [-1, -1]], dtype=np.int32)
    filled = forward_fill(index)
    assert filled.tolist() == [[-1, -1], [0, -1], [0, -1], [0, -1], [1, 2], [1, 2]]
    assert index[2].tolist() == [-1, -1]  # the input is not modified


# ----------------------------------------------------------------------------- reading annotations

def write_xlsx(path, rows):
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    book.save(path)


def test_sherlock_preset_on_xlsx_with_trailing_space_headers(tmp_path):
    path = tmp_path / "sherlock.xlsx"
    header = ["Segment Number", "Start Time (s) ", "End Time (s) ", "Scene Details - A Level ", "Name - All"]
    write_xlsx(path, [header,
                      [1, 0, 12.5, " Cartoon opening credits ", "none"],
                      [2, 12.5, 17, "People in popcorn, Sherlock's title", "none"],
                      [None, None, None, None, None]])  # an empty trailing row is skipped
    table = read_annotations(path, "sherlock")
    assert table["onset"].tolist() == [0.0, 12.5] and table["offset"].tolist() == [12.5, 17.0]
    assert table["text"].tolist() == ["Cartoon opening credits", "People in popcorn, Sherlock's title"]


def test_csv_and_tsv_with_a_mapping_joining_text_columns(tmp_path):
    rows = [["start", "end", "what", "who"], ["1.5", "3", "a fight", "John"], ["3", "4.25", "a chase", ""]]
    for suffix, sep in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"notes{suffix}"
        path.write_text("\n".join(sep.join(r) for r in rows) + "\n")
        table = read_annotations(path, {"onset": "start", "offset": "end", "text": ["what", "who"]})
        assert table["onset"].tolist() == [1.5, 3.0] and table["offset"].tolist() == [3.0, 4.25]
        assert table["text"].tolist() == ["a fight John", "a chase"]


def test_beyond_end_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "a.tsv"
    path.write_text("onset\toffset\ttext\n0\t2\tin\n9\t12\tcrossing the end\n"
                    "10\t11\tafter\n12\t13\tafter too\n")
    with caplog.at_level(logging.WARNING, logger="giblet.stimulus.annotations"):
        table = read_annotations(path, "demo", duration_s=10.0)
    assert table["text"].tolist() == ["in", "crossing the end"]
    assert table.attrs["dropped_beyond_end"] == 2
    assert str(path) in caplog.text and "dropped 2 of 4" in caplog.text and "4, 5" in caplog.text


# ----------------------------------------------------------------------------- the model

@pytest.fixture(scope="module")
def demo_model():
    return load_text_model("ViT-B-32", "none", "cpu", seed=0)


@pytest.fixture(scope="module")
def reference_clip():
    """A full open_clip ViT-B-32, built independently of giblet, with the same seed as demo_model."""
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32", pretrained=None).eval()


@pytest.fixture(scope="module")
def weights_file(reference_clip, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in reference_clip.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def reference_embeddings(reference_clip):
    """TEXTS through open_clip's own encode_text (full 77-token context), (4, 512)."""
    import open_clip

    with torch.inference_mode():
        return reference_clip.encode_text(open_clip.get_tokenizer("ViT-B-32")(TEXTS), normalize=True).numpy()


def test_random_init_is_seeded_deterministic_and_distinct(demo_model, reference_embeddings):
    model, tokenizer, weights_id = demo_model
    assert "DEMO ONLY" in weights_id and "seed=0" in weights_id
    emb = embed_texts(TEXTS, model, tokenizer, batch_size=3, device="cpu", progress=False)
    assert emb.shape == (4, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, reference_embeddings, atol=1e-5)  # same seed, same model
    similarity = emb @ emb.T
    assert similarity[~np.eye(4, dtype=bool)].max() < 0.999  # distinct texts, distinct embeddings


def test_trimmed_encoding_equals_open_clip(demo_model):
    model, tokenizer, _ = demo_model
    texts = ["a", "a much longer sentence about the people in the room", "word " * 100]  # last: truncated
    tokens = tokenizer(texts)
    with torch.inference_mode():
        full = model.encode_text(tokens, normalize=True)
    np.testing.assert_allclose(encode_tokens(model, tokens).numpy(), full.numpy(), atol=1e-5)


def test_local_weights_file(weights_file, reference_embeddings):
    # A different seed: equal embeddings prove the weights came from the file, not the RNG.
    model, tokenizer, weights_id = load_text_model("ViT-B-32", str(weights_file), "cpu", seed=123)
    assert weights_id.startswith("file:clip.safetensors sha256:")
    emb = embed_texts(TEXTS, model, tokenizer, batch_size=64, device="cpu", progress=False)
    np.testing.assert_allclose(emb, reference_embeddings, atol=1e-5)


def test_wrong_shaped_or_missing_weights_file(reference_clip, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in reference_clip.state_dict().items()}
    state["text_projection"] = torch.zeros(512, 256)
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(InputError, match="wrong.safetensors.*cannot be loaded as ViT-B-32 weights"):
        load_text_model("ViT-B-32", str(path), "cpu", 0)
    with pytest.raises(InputError, match="missing.safetensors: weights file not found"):
        load_text_model("ViT-B-32", str(tmp_path / "missing.safetensors"), "cpu", 0)


def test_pretrained_tag_offline_suggests_a_local_file(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai'")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ConfigError, match="stimulus.text.pretrained.*local file"):
        load_text_model("ViT-B-32", "openai", "cpu", 0)
    with pytest.raises(ConfigError, match="neither 'none', an existing file, nor an open_clip tag"):
        load_text_model("ViT-B-32", "no-such-tag", "cpu", 0)


def test_nearest_annotation_of_its_own_embedding_is_itself(demo_model):
    model, tokenizer, _ = demo_model
    library = embed_texts(TEXTS, model, tokenizer, batch_size=64, device="cpu", progress=False)
    noisy = library * 3.0 + 0.01 * np.random.default_rng(0).standard_normal(library.shape)  # scale-free
    indices, scores = nearest_annotations(noisy, library, top_k=2)
    assert indices.shape == scores.shape == (4, 2)
    assert indices[:, 0].tolist() == [0, 1, 2, 3]
    assert (scores[:, 0] > 0.99).all() and (scores[:, 0] >= scores[:, 1]).all()


# ----------------------------------------------------------------------------- the stage

@pytest.fixture
def params(small_demo):
    return {**small_demo["config"]["stimulus"]["text"], "device": "cpu"}


def test_stage_end_to_end_on_the_demo(small_demo, params, tmp_path, caplog):
    tr = small_demo["config"]["tr"]
    annotations = tmp_path / "annotations.tsv"  # the demo's, plus one row past the movie's end
    annotations.write_text(small_demo["annotations"].read_text() + "1000\t1001\ta scene after the credits\n")
    out = tmp_path / "stimulus" / "text.npy"
    with caplog.at_level(logging.WARNING):
        paths = embed_text(annotations, small_demo["movie"], out, tr, params, progress=False)
    assert "dropped 1 of" in caplog.text

    duration = probe_movie(small_demo["movie"]).duration_s
    T, k = count_trs(duration, tr), params["k"]
    text, mask = np.load(paths["text"]), np.load(paths["mask"])
    library = np.load(paths["annotations"])
    assert text.shape == (T, k, 512) and text.dtype == np.float32
    assert mask.shape == (T, k) and mask.dtype == bool
    index = library["index"]
    assert index.shape == (T, k) and ((index >= 0) == mask).all()
    np.testing.assert_array_equal(text[mask], library["embeddings"][index[mask]])
    assert (text[~mask] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(text[mask], axis=1), 1.0, atol=1e-5)

    # A TR holds annotations exactly where the demo's ground truth has a scene (not a gap).
    truth = np.load(small_demo["truth"])
    per_tr = int(round(tr / float(truth["latent_dt"])))
    scene = (truth["scene_codes"][: T * per_tr, 0] >= 0).reshape(T, per_tr).any(axis=1)
    assert (mask.any(axis=1) == scene).all() and (~scene).any()
    counts = overlap_counts(library["onset"], library["offset"], T, tr)
    assert (mask.sum(axis=1) == np.minimum(counts, k)).all()

    sidecar = read_sidecar(out)
    assert sidecar["shape"] == [T, k, 512] and sidecar["dtype"] == "float32"
    assert sidecar["models"]["clip"]["dim"] == 512 and "DEMO ONLY" in sidecar["models"]["clip"]["pretrained"]
    assert sidecar["n_trs"] == T and sidecar["n_annotations"] == len(library["texts"])
    assert sidecar["dropped_beyond_end"] == 1 and sidecar["empty_trs"] == int((~scene).sum())
    assert sidecar["parameters"]["k"] == k and sidecar["parameters"]["tr"] == tr
    assert set(sidecar["sources"]) == {"annotations", "movie"}
    assert set(os.listdir(out.parent)) == {"text.npy", "text_mask.npy", "text_annotations.npz", "text.json"}


HEADER = "onset\toffset\ttext\n0\t1\ta\n"  # one good row (row 2), then the bad one(s)
BAD_INPUTS = {  # case: (file content, expected message after the file name)
    "missing column": ("onset\tend\ttext\n0\t1\ta\n",
                       r"missing column\(s\) \['offset'\].*columns found: \['onset', 'end', 'text'\]"),
    "non-numeric time": (HEADER + "1\tsoon\tb\n", r"offset column 'offset' is not a number in row\(s\) 3"),
    "negative time": (HEADER + "-2\t3\tb\n", r"onset column 'onset' is negative in row\(s\) 3"),
    "offset before onset": (HEADER + "2\t2\tb\n5\t4\tc\n", r"offset is not after onset in row\(s\) 3, 4"),
    "empty text": (HEADER + "1\t2\t  \n", r"text column\(s\) \['text'\] are empty in row\(s\) 3"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_annotations_name_the_file_and_leave_no_output(case, small_demo, params, tmp_path):
    content, message = BAD_INPUTS[case]
    annotations = tmp_path / "bad.tsv"
    annotations.write_text(content)
    out_dir = tmp_path / "stimulus"
    out_dir.mkdir()
    (out_dir / "text.npy").write_bytes(b"from an earlier run")
    with pytest.raises(InputError, match=f"bad.tsv: {message}"):
        embed_text(annotations, small_demo["movie"], out_dir / "text.npy", 1.5, params, progress=False)
    assert os.listdir(out_dir) == ["text.npy"]
    assert (out_dir / "text.npy").read_bytes() == b"from an earlier run"
    assert sorted(os.listdir(tmp_path)) == ["bad.tsv", "stimulus"]  # no temporary directory left


def test_missing_annotation_file(small_demo, params, tmp_path):
    with pytest.raises(InputError, match="nowhere.tsv: file not found"):
        embed_text(tmp_path / "nowhere.tsv", small_demo["movie"], tmp_path / "out" / "text.npy", 1.5, params)
    assert not (tmp_path / "out").exists()
