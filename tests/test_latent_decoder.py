"""The brain model's latent decoder: fitted in closed form, it recovers latents the brain encodes, renders
them with the frozen decoder, and a lesion decodes from the lesioned brain."""

import numpy as np
import torch

from giblet.autoencoders.frames import FrameAutoencoderConfig
from giblet.config import load_config
from giblet.model import BrainAutoencoder
from giblet.splits import plan_split
from giblet.timing import decode_delay_trs, decode_window_trs
from giblet.train.bottleneck import fix_principal_components
from giblet.train.latent_decoder import brain_windows, fit_latent_decoder
from tests.bundles import in_memory_manifest

N_TRS, N_VOXELS, SLOTS, DIM = 300, 60, 2, 3


def test_the_decoder_recovers_encoded_latents_on_held_out_trs_and_lesions_read_the_lesioned_brain(tmp_path):
    rng = np.random.default_rng(0)
    latents = np.cumsum(rng.standard_normal((N_TRS, SLOTS, DIM)), axis=0).astype(np.float32)   # smooth in time
    latents = (latents - latents.mean(0)) / latents.std(0)
    delay = decode_delay_trs(1.5, 8)                                         # 4: brain t reads stimulus t - 4
    mixing = rng.standard_normal((SLOTS * DIM, N_VOXELS))
    stimulus = np.roll(latents.reshape(N_TRS, -1), delay, axis=0)           # brain TR t <- stimulus TR t - delay
    fmri = (stimulus @ mixing + 0.3 * rng.standard_normal((N_TRS, N_VOXELS))).astype(np.float32)
    np.save(tmp_path / "fmri.npy", fmri)
    np.save(tmp_path / "frame_latents.npy", latents)
    split = plan_split(N_TRS, N_TRS, load_config(None, ["split.lag_trs=8"])["split"])
    manifest = in_memory_manifest({"fmri": tmp_path / "fmri.npy", "frame_latents": tmp_path / "frame_latents.npy"},
                                  split, n_voxels=N_VOXELS,
                                  modalities={"frame_latents": {"slots": SLOTS, "dim": DIM}})
    renderer = FrameAutoencoderConfig(height=8, width=12, latent_dim=DIM, channels=4, hidden=8).to_dict()
    torch.manual_seed(0)
    model = BrainAutoencoder.from_manifest(manifest.to_dict(), "tiny", renderers={"frames": renderer},
                                           decoder_components=32).eval()
    assert model.latent_decoding and model.decode_window == decode_window_trs(1.5, 8) == 2
    fix_principal_components(model, fmri[np.asarray(split.targets("train"))])
    info = fit_latent_decoder(model, manifest)
    assert info["n_targets"] == len(split.targets("train")) + len(split.targets("val"))

    test = np.asarray(split.targets("test"))
    window = torch.from_numpy(brain_windows(fmri, test, model.decode_window))
    with torch.no_grad():
        decoded = model.latent_decoder.latents(window)["frame_latents"].numpy().reshape(len(test), -1)
        rendered = model.decode(window)
    true = latents[test - delay].reshape(len(test), -1)
    r = [np.corrcoef(decoded[:, j], true[:, j])[0, 1] for j in range(SLOTS * DIM)]
    assert min(r) > 0.9, r
    assert rendered["frames"].shape == (len(test), SLOTS, 8, 12, 3)
    # Rescaled to the fitted rows' spread: the held-out predictions are not shrunk towards the mean.
    assert 0.8 < decoded.std(0).mean() / true.std(0).mean() < 1.25
    with torch.no_grad():
        all_out = model.lesion(window, torch.ones(N_VOXELS, dtype=torch.bool))["frames"]
        blank = model.decode(torch.zeros_like(window))["frames"]
        none_out = model.lesion(window, torch.zeros(N_VOXELS, dtype=torch.bool))["frames"]
        per_sample = model.lesion(window, torch.ones(len(test), N_VOXELS, dtype=torch.bool))["frames"]
    assert torch.equal(all_out, blank) and torch.equal(per_sample, blank)
    assert torch.equal(none_out, rendered["frames"]) and not torch.equal(all_out, rendered["frames"])
