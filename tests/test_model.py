"""The brain autoencoder (giblet.model): shapes, causality, masking, lesions, losses, learning, rebuild."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from giblet.model import PRESETS, BrainAutoencoder, BrainAutoencoderConfig, losses, pearson_per_voxel

MODALITIES = {"frames": {"frames_per_tr": 2, "height": 18, "width": 32},
              "audio": {"n_q": 4, "frames_per_tr": 16, "codebook_size": 64},
              "text": {"k": 2, "dim": 16}}
V, LAG, B = 300, 6, 4
SUBSETS = [("frames",), ("audio",), ("text",), ("frames", "audio", "text")]


def manifest(names=("frames", "audio", "text")) -> dict:
    return {"modalities": {n: MODALITIES[n] for n in names}, "n_voxels": V, "lag_trs": LAG}


def make_batch(names=("frames", "audio", "text"), b: int = B, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"fmri": torch.randn(b, V, generator=g), "target": torch.arange(b)}
    if "frames" in names:
        m = MODALITIES["frames"]
        batch["frames"] = torch.randint(0, 256, (b, LAG, m["frames_per_tr"], m["height"], m["width"], 3),
                                        generator=g, dtype=torch.uint8)
    if "audio" in names:
        m = MODALITIES["audio"]
        batch["codes"] = torch.randint(0, m["codebook_size"], (b, LAG, m["n_q"], m["frames_per_tr"]), generator=g)
    if "text" in names:
        m = MODALITIES["text"]
        mask = torch.rand(b, LAG, m["k"], generator=g) > 0.4
        mask[0, 0] = False          # a TR with no annotation (uses the "no text" vector)
        mask[:, -1, 0] = True       # every last TR has at least one slot
        mask[1, -1, 1] = False      # ... and one masked slot at the last TR
        batch["text"] = torch.randn(b, LAG, m["k"], m["dim"], generator=g) * mask[..., None]
        batch["text_mask"] = mask
    return batch


def model(names=("frames", "audio", "text"), **kw) -> BrainAutoencoder:
    """A tiny model whose fMRI layer has random weights: it starts at zero (next test), which would hide
    from the structural tests whether the stimulus reaches the prediction at all."""
    torch.manual_seed(0)
    kw.setdefault("fmri_rank", 0)  # training through principal components needs data (test_readout.py)
    m = BrainAutoencoder.from_manifest(manifest(names), "tiny", **kw)
    torch.nn.init.normal_(m.to_fmri.weight, std=0.2)
    return m


def test_a_fresh_model_predicts_the_mean_and_its_corr_loss_has_finite_gradients():
    torch.manual_seed(0)
    m = BrainAutoencoder.from_manifest(manifest(), "tiny")
    batch = make_batch()
    out = m(batch)
    assert torch.equal(out["fmri"], torch.zeros(B, V))
    parts = losses(out, batch, {"fmri_corr": 1.0})
    parts["total"].backward()
    assert parts["fmri_corr"].item() == pytest.approx(1.0)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("names", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_shapes_for_every_modality_subset(names):
    m = model(names).eval()
    batch = make_batch(names)
    out = m(batch)
    expected = {"fmri": (B, V)}
    if "frames" in names:
        expected["frames"] = (B, 2, 18, 32, 3)
    if "audio" in names:
        expected["code_logits"] = (B, 4, 16, 64)
    if "text" in names:
        expected["text"] = (B, 2, 16)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    if "frames" in out:
        assert out["frames"].min() >= 0 and out["frames"].max() <= 1
    assert m.encode(batch).shape == (B, V)
    assert set(m.decode(batch["fmri"])) == set(expected) - {"fmri"}
    parts = losses(out, batch, {})
    assert set(parts) == {"total", *(k.replace("code_logits", "codes") for k in expected), "fmri_corr"}
    assert all(torch.isfinite(v) for v in parts.values())


@pytest.mark.parametrize("names", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_every_tr_of_the_window_changes_the_prediction(names):
    m = model(names).eval()
    batch = make_batch(names)
    with torch.no_grad():
        base = m.encode(batch)
        for t in range(LAG):
            changed = {k: v.clone() for k, v in batch.items()}
            if "frames" in names:
                changed["frames"][:, t] = 255 - changed["frames"][:, t]
            if "audio" in names:
                changed["codes"][:, t] = (changed["codes"][:, t] + 7) % 64
            if "text" in names:
                changed["text"][:, t] = torch.randn_like(changed["text"][:, t]) * changed["text_mask"][:, t, :, None]
                changed["text_mask"][:, t, 0] = True
                changed["text"][:, t, 0] = 1.0
            diff = (m.encode(changed) - base).abs().amax(dim=1)
            assert (diff > 1e-6).all(), f"TR {t} of the window does not reach the prediction"
    # the window is the input: the decoder reads only the brain, and encode only the batch's window
    assert m.temporal.weight.shape[-1] == LAG


def test_causal_stack_sees_only_the_past():
    """Inside the causal stack (temporal="conv"), position t never depends on later positions."""
    m = model(temporal="conv", fusion="sum", interactions=0).eval()
    x = torch.randn(2, LAG, m.config()["dim"])
    with torch.no_grad():
        h = m.temporal.position[None] + x
        ref = h.transpose(1, 2)
        for block in m.temporal.blocks:
            ref = block(ref)
        y = x.clone()
        y[:, 3:] = torch.randn_like(y[:, 3:])
        other = (m.temporal.position[None] + y).transpose(1, 2)
        for block in m.temporal.blocks:
            other = block(other)
    assert torch.allclose(ref[:, :, :3], other[:, :, :3], atol=1e-6)
    assert not torch.allclose(ref[:, :, 3:], other[:, :, 3:])


def test_masked_text_slots_change_nothing():
    m = model(("text",)).eval()
    batch = make_batch(("text",))
    changed = dict(batch, text=batch["text"].clone())
    masked = ~batch["text_mask"]
    assert masked.any()
    changed["text"][masked] = torch.randn(int(masked.sum()), 16) * 100
    with torch.no_grad():
        assert torch.equal(m.encode(batch), m.encode(changed))
        a, b = losses(m(batch), batch, {}), losses(m(changed), changed, {})
    assert torch.equal(a["text"], b["text"])
    # a TR with no annotation is not the same as a zero-embedding annotation
    zero = dict(batch, text_mask=batch["text_mask"].clone())
    zero["text_mask"][0, 0, 0] = True
    with torch.no_grad():
        assert not torch.equal(m.encode(zero), m.encode(batch))


def test_lesion():
    m = model().eval()
    fmri = make_batch()["fmri"]
    with torch.no_grad():
        all_out = m.lesion(fmri, torch.ones(V, dtype=torch.bool))
        zero = m.decode(torch.zeros_like(fmri))
        none_out = m.lesion(fmri, torch.zeros(V, dtype=torch.bool))
        plain = m.decode(fmri)
        part = m.lesion(fmri, torch.arange(V) < 50)
        per_sample = m.lesion(fmri, torch.ones(B, V, dtype=torch.bool))
    for key in plain:
        assert torch.equal(all_out[key], zero[key])
        assert torch.equal(per_sample[key], zero[key])
        assert torch.equal(none_out[key], plain[key])
        assert not torch.equal(part[key], plain[key])


def test_losses_match_independent_references():
    batch = make_batch()
    g = torch.Generator().manual_seed(1)
    out = {"fmri": torch.randn(B, V, generator=g), "frames": torch.rand(B, 2, 18, 32, 3, generator=g),
           "code_logits": torch.randn(B, 4, 16, 64, generator=g), "text": torch.randn(B, 2, 16, generator=g)}
    w = {"fmri": 2.0, "codes": 0.5, "text": 3.0, "frames": 0.25}
    got = losses(out, batch, w)
    assert torch.allclose(got["fmri"], ((out["fmri"] - batch["fmri"]) ** 2).mean())
    r = torch.stack([torch.corrcoef(torch.stack([out["fmri"][i], batch["fmri"][i]]))[0, 1] for i in range(B)])
    assert torch.allclose(got["fmri_corr"], (1 - r).mean(), atol=1e-5)
    ce = [F.cross_entropy(out["code_logits"][:, q].reshape(-1, 64), batch["codes"][:, -1, q].reshape(-1))
          for q in range(4)]
    assert torch.allclose(got["codes"], sum(ce) / 4)
    mask = batch["text_mask"][:, -1]
    cos = [F.cosine_similarity(out["text"][i, s], batch["text"][i, -1, s], dim=0)
           for i in range(B) for s in range(2) if mask[i, s]]
    assert len(cos) < 2 * B
    assert torch.allclose(got["text"], 1 - torch.stack(cos).mean())
    assert torch.allclose(got["frames"], ((out["frames"] - batch["frames"][:, -1].float() / 255) ** 2).mean())
    total = 2 * got["fmri"] + 0.5 * got["codes"] + 3 * got["text"] + 0.25 * got["frames"]
    assert torch.allclose(got["total"], total)

    perfect = {"fmri": batch["fmri"].clone(), "frames": batch["frames"][:, -1].float() / 255,
               "text": batch["text"][:, -1] * 5 + (~batch["text_mask"][:, -1, :, None]) * 9.0}
    got = losses(perfect, batch, {})
    for key in ("fmri", "fmri_corr", "frames", "text"):
        assert got[key].abs() < 1e-5, key
    assert set(got) == {"fmri", "fmri_corr", "frames", "text", "total"}  # missing modality (codes) skipped

    # no valid text slot at all: a zero that keeps the graph
    empty = dict(batch, text_mask=torch.zeros_like(batch["text_mask"]))
    text = out["text"].clone().requires_grad_()
    got = losses({"text": text}, empty, {})
    assert got["text"] == 0 and got["text"].requires_grad


def test_pearson_per_voxel():
    g = torch.Generator().manual_seed(2)
    pred, true = torch.randn(50, 7, generator=g), torch.randn(50, 7, generator=g)
    true[:, 0] = pred[:, 0] * 3 + 1
    r = pearson_per_voxel(pred, true)
    ref = torch.stack([torch.corrcoef(torch.stack([pred[:, v], true[:, v]]))[0, 1] for v in range(7)])
    assert r.shape == (7,)
    assert torch.allclose(r, ref, atol=1e-5) and torch.isclose(r[0], torch.tensor(1.0), atol=1e-5)
    assert pearson_per_voxel(pred, torch.ones(50, 7)).abs().max() == 0


def test_every_parameter_gets_a_gradient_and_the_tiny_model_learns():
    m = model(dropout=0.0).train()
    batch = make_batch(b=8)
    parts = losses(m(batch), batch, {})
    parts["total"].backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"

    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    history = []
    for _ in range(100):
        opt.zero_grad()
        parts = losses(m(batch), batch, {})
        parts["total"].backward()
        opt.step()
        history.append({k: v.item() for k, v in parts.items()})
    first, last = history[0], history[-1]
    assert last["fmri"] < 0.5 * first["fmri"], (first, last)
    for key in ("codes", "text", "frames"):
        assert last[key] < first[key], (key, first, last)


def test_config_round_trip_rebuilds_an_identical_model():
    m = model(dropout=0.2, gradient_checkpointing=True, hidden=48)
    cfg = m.config()
    import json
    cfg = json.loads(json.dumps(cfg))  # self-describing model.pt: JSON-safe
    assert cfg["dropout"] == 0.2 and cfg["hidden"] == 48 and cfg["gradient_checkpointing"] is True
    rebuilt = BrainAutoencoder.from_config(cfg)
    a, b = m.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    rebuilt.load_state_dict(a)
    batch = make_batch()
    m.eval(), rebuilt.eval()
    with torch.no_grad():
        x, y = m(batch), rebuilt(batch)
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert rebuilt.config() == cfg
    with pytest.raises(ValueError, match="preset"):
        BrainAutoencoder.from_manifest(manifest(), "huge")


def test_the_config_dataclass_round_trips_through_json_to_the_same_weights():
    import json
    config = BrainAutoencoderConfig.from_manifest({**manifest(), "tr": 1.5}, "tiny", hidden=48)
    assert config.frame_channels == PRESETS["tiny"].frame_channels and config.hidden == 48
    assert config.decode_delay_trs > 0 and config.decode_window_trs > 1  # from the TR (giblet.timing)
    torch.manual_seed(0)
    m = BrainAutoencoder(config)
    saved = json.loads(json.dumps(m.config()))
    assert saved["frame_channels"] == list(config.frame_channels)
    assert BrainAutoencoderConfig.from_dict(saved) == config
    torch.manual_seed(0)
    rebuilt = BrainAutoencoder.from_config(saved)
    assert rebuilt.cfg == config and rebuilt.config() == saved
    a, b = m.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"key\(s\) \['hiden'\]"):
        BrainAutoencoder.from_config({**saved, "hiden": 32})


def test_gradient_checkpointing_and_dropout():
    plain, ckpt = model(), model(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    batch = make_batch()
    plain.eval(), ckpt.eval()
    with torch.no_grad():
        x, y = plain(batch), ckpt(batch)
    assert all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)
    # in train mode, checkpointing recomputes with the same dropout mask: same outputs and gradients
    plain.train(), ckpt.train()
    grads = []
    for m in (plain, ckpt):
        torch.manual_seed(5)
        m.zero_grad()
        losses(m(batch), batch, {})["total"].backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    assert all(torch.allclose(g1, g2, atol=1e-5) for g1, g2 in zip(*grads))

    assert plain.config()["dropout"] == PRESETS["tiny"].dropout > 0
    plain.train()
    with torch.no_grad():
        torch.manual_seed(1)
        a = plain(batch)["fmri"]
        torch.manual_seed(2)
        b = plain(batch)["fmri"]
    assert not torch.equal(a, b), "dropout inactive in train mode"
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain(batch)["fmri"], plain(batch)["fmri"])
    no_drop = model(dropout=0.0).train()
    with torch.no_grad():
        assert torch.equal(no_drop(batch)["fmri"], no_drop(batch)["fmri"])


def test_tiny_preset_is_small_and_presets_grow():
    demo = {"modalities": {"frames": {"frames_per_tr": 10, "height": 90, "width": 160},
                           "audio": {"n_q": 4, "frames_per_tr": 112, "codebook_size": 1024},
                           "text": {"k": 2, "dim": 512}}, "n_voxels": 29398, "lag_trs": 10}
    with torch.device("meta"):
        counts = {p: BrainAutoencoder.from_manifest(demo, p).n_parameters(exclude_voxel_layers=True)
                  for p in ("tiny", "base", "large")}
    assert counts["tiny"] < 1_100_000
    assert counts["tiny"] < counts["base"] < counts["large"]
    # the receptive field of the causal stack covers the window for every preset and lag
    for preset, lag in itertools.product(PRESETS, (1, 6, 10, 40)):
        with torch.device("meta"):
            m = BrainAutoencoder.from_manifest(dict(demo, lag_trs=lag), preset, temporal="conv")
        k = m.config()["kernel_size"]
        dilations = [blk.pad // (k - 1) for blk in m.temporal.blocks]
        assert 1 + (k - 1) * sum(dilations) >= lag


def test_windows_sharing_trs_encode_each_tr_once_with_the_same_result():
    """Consecutive windows cut from one stimulus sequence: with ``stimulus_trs`` each TR goes through the
    encoders once (counted), and in eval mode the prediction equals the window-by-window one."""
    sequence = make_batch(seed=3)                         # its first window of LAG TRs is the movie
    starts = [0, 0, 1, 2]                                 # windows of LAG - 2 TRs at these offsets
    length = LAG - 2
    batch = {k: torch.stack([sequence[k][0, s:s + length] for s in starts])
             for k in ("frames", "codes", "text", "text_mask")}
    m = model().eval()
    calls = []
    m.encoders["frames"].register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    per_window = m.encode(batch)
    shared = m.encode({**batch, "stimulus_trs": torch.tensor([[s + j for j in range(length)] for s in starts])})
    torch.testing.assert_close(shared, per_window, rtol=1e-5, atol=1e-5)
    assert calls == [len(starts) * length, length + 2]    # 24 window slots, 8 distinct TRs


def test_feature_groups_name_the_modality_each_feature_column_comes_from():
    """Changing one modality's input changes exactly the columns feature_groups gives that modality."""
    m = model().eval()
    groups = m.feature_groups()
    batch = make_batch()
    with torch.no_grad():
        base = m.features(batch)
        assert groups.shape == (base.shape[1],)
        for index, (name, key) in enumerate((("frames", "frames"), ("audio", "codes"), ("text", "text"))):
            assert list(m.encoders)[index] == name
            changed = dict(batch)
            changed[key] = make_batch(seed=1)[key]
            moved = (m.features(changed) - base).abs().amax(dim=0) > 0
            assert torch.equal(moved, torch.from_numpy(groups == index))
    assert model(fusion="sum").feature_groups() is None
    assert model(temporal="conv").feature_groups() is None
