"""The demo brains: NIfTI headers, exact noise ceilings, anatomical regions, linear/nonlinear split."""

import nibabel as nib
import numpy as np
import pytest
from nilearn.datasets import load_mni152_brain_mask

from giblet.demo import brain
from giblet.demo.generate import fine_step
from giblet.demo.latents import make_latents


def _corr_columns(a, b):
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return (a * b).mean(0)


def _r2(y, design):
    """R^2 of the least-squares fit of each column of y by [1, design]."""
    basis = np.column_stack([np.ones(len(design)), design])
    resid = y - basis @ np.linalg.lstsq(basis, y, rcond=None)[0]
    return 1 - resid.var(0) / y.var(0)


def _load_masked(small_demo):
    truth = np.load(small_demo["truth"])
    ijk = truth["voxel_ijk"]
    data = []
    for path in small_demo["bold"]:
        volume = np.asarray(nib.load(path).dataobj)
        data.append(volume[ijk[:, 0], ijk[:, 1], ijk[:, 2]].T)  # (T, V)
    return truth, data


def test_nifti_headers_carry_tr_and_the_mni_affine(small_demo):
    demo, tr = small_demo["config"]["demo"], small_demo["config"]["tr"]
    mask = load_mni152_brain_mask(resolution=demo["resolution_mm"])
    assert len(small_demo["bold"]) == demo["n_subjects"]
    for path in small_demo["bold"]:
        image = nib.load(path)
        assert image.shape == mask.shape + (demo["n_trs"],)
        np.testing.assert_allclose(image.affine, mask.affine)
        assert image.header["pixdim"][4] == pytest.approx(tr)
        assert image.header.get_xyzt_units() == ("mm", "sec")
        assert image.get_data_dtype() == np.float32
        outside = np.asarray(mask.dataobj) == 0
        volume = np.asarray(image.dataobj)
        assert np.all(volume[outside] == 0)
        assert np.all(np.isfinite(volume)) and np.all(volume[~outside] > 0)


def test_voxel_order_matches_nilearn_masking(small_demo):
    """truth.npz voxels are in the order nilearn's NiftiMasker uses, so arrays line up."""
    from nilearn.maskers import NiftiMasker

    truth, data = _load_masked(small_demo)
    mask = load_mni152_brain_mask(resolution=small_demo["config"]["demo"]["resolution_mm"])
    masked = NiftiMasker(mask_img=mask).fit().transform(small_demo["bold"][0])
    np.testing.assert_array_equal(masked, data[0])


def test_subject_voxels_correlate_with_signal_at_the_stored_ceiling(small_demo):
    """End-to-end on the written files: r(subject voxel, noise-free signal) ~ ceiling (short demo)."""
    truth, data = _load_masked(small_demo)
    has_signal = truth["region"] > 0
    for bold in data:
        r = _corr_columns(bold[:, has_signal].astype(np.float64), truth["signal"][:, has_signal])
        # 100 TRs: each r is noisy, the mean over ~2,400 voxels is not.
        assert np.mean(r - truth["ceiling_single"][has_signal]) == pytest.approx(0, abs=0.03)
        assert np.corrcoef(r, truth["ceiling_single"][has_signal])[0, 1] > 0.6


@pytest.fixture(scope="module")
def default_size_brain():
    """The default demo's brain (4 mm, 29,398 voxels, 440 TRs, 4 subjects) without the movie."""
    tr, n_trs, n_subjects, phi, f = 1.5, 440, 4, 0.4, 0.5
    rng = np.random.default_rng(7)
    latents = make_latents(rng, n_trs * tr, fine_step(tr),
                           {"min_segment_s": 3, "max_segment_s": 8, "gap_fraction": 0.1})
    mask_img = load_mni152_brain_mask(resolution=4)
    mask = np.asarray(mask_img.dataobj) > 0
    _, xyz = brain.voxel_coordinates_mm(mask, mask_img.affine)
    labels = brain.assign_regions(xyz, 0.33)
    ceiling = np.zeros(len(labels), dtype=np.float32)
    ceiling[labels > 0] = brain.uniform_by_rank(brain.smooth_field(rng, mask, 4)[labels > 0], 0.1, 0.7)
    designs = brain.region_designs(latents, tr, n_trs)
    signal = brain.noise_free_signal(designs, labels, f, rng)
    baseline = np.full(len(labels), 1000.0, dtype=np.float32)
    subjects = [brain.subject_bold(signal, ceiling, baseline, phi, np.random.default_rng(100 + k))
                for k in range(n_subjects)]
    return dict(labels=labels, ceiling=ceiling, signal=signal, designs=designs, subjects=subjects,
                xyz=xyz, f=f)


def test_ceilings_are_exact_on_many_voxels(default_size_brain):
    """Per ceiling decile, the mean empirical r equals the mean stored ceiling within 0.02.

    A wrong noise scale shows up here: noise variance 1/c^2 instead of 1/c^2 - 1 would give
    r = c / sqrt(1 + c^2), 0.13 too low at c = 0.7.
    """
    b = default_size_brain
    has_signal = b["labels"] > 0
    c = b["ceiling"][has_signal].astype(np.float64)
    s = b["signal"][:, has_signal].astype(np.float64)
    deciles = np.digitize(c, np.quantile(c, np.linspace(0, 1, 11)[1:-1]))
    for bold in b["subjects"]:
        r = _corr_columns(bold[:, has_signal].astype(np.float64), s)
        for d in range(10):
            assert r[deciles == d].mean() == pytest.approx(c[deciles == d].mean(), abs=0.02)
    # The group mean of z-scored subjects reaches the stored group ceiling.
    z = np.mean([(x - x.mean(0)) / x.std(0) for x in b["subjects"]], axis=0)
    r_group = _corr_columns(z[:, has_signal].astype(np.float64), s)
    group = brain.group_ceiling(c, len(b["subjects"]))
    for d in range(10):
        assert r_group[deciles == d].mean() == pytest.approx(group[deciles == d].mean(), abs=0.02)


def test_difficulty_is_as_configured(default_size_brain):
    b = default_size_brain
    labels, ceiling = b["labels"], b["ceiling"]
    assert (labels == 0).mean() == pytest.approx(0.33, abs=0.005)
    c = ceiling[labels > 0]
    assert c.min() >= 0.1 and c.max() <= 0.7
    assert np.histogram(c, bins=6, range=(0.1, 0.7))[0].min() > 0.9 * len(c) / 6  # uniform marginal
    assert np.all(ceiling[labels == 0] == 0)
    # Signal: unit variance; exactly a fraction f of it is beyond any linear function of the latents.
    for k, name in enumerate(brain.REGION_NAMES[1:], start=1):
        s = b["signal"][:, labels == k].astype(np.float64)
        np.testing.assert_allclose(s.std(0), 1.0, atol=1e-4)
        linear, _ = b["designs"][name]
        np.testing.assert_allclose(_r2(s, linear), 1 - b["f"], atol=1e-3)


def test_regions_respond_to_their_own_modality_only(default_size_brain):
    """R^2 of each region's voxels on each modality's latents, against a measured chance level.

    The latents are smooth, so chance R^2 is well above k / T; it is measured here as the R^2 on
    designs built from an independent draw of the latents.
    """
    b = default_size_brain
    bold = b["subjects"][0].astype(np.float64)
    unrelated = make_latents(np.random.default_rng(1234), len(bold) * 1.5, fine_step(1.5),
                             {"min_segment_s": 3, "max_segment_s": 8, "gap_fraction": 0.1})
    null_designs = brain.region_designs(unrelated, 1.5, len(bold))
    for k, own in enumerate(brain.REGION_NAMES, start=0):
        voxels = bold[:, b["labels"] == k]
        r2 = {name: _r2(voxels, design[0]).mean() for name, design in b["designs"].items()}
        chance = {name: _r2(voxels, design[0]).mean() for name, design in null_designs.items()}
        for name in r2:
            if name == own:
                assert r2[name] > chance[name] + 0.05, f"{own} voxels do not follow {own}: {r2} {chance}"
            else:
                assert r2[name] < chance[name] + 0.015, f"{own} voxels follow {name}: {r2} {chance}"


def test_regions_are_placed_anatomically(default_size_brain):
    b = default_size_brain
    x, y, z = b["xyz"].T
    name_to_label = {name: k for k, name in enumerate(brain.REGION_NAMES)}
    visual = b["labels"] == name_to_label["visual"]
    auditory = b["labels"] == name_to_label["auditory"]
    language = b["labels"] == name_to_label["language"]
    assert np.median(y[visual]) < -60  # occipital
    assert np.median(np.abs(x[auditory])) > 40 and -45 < np.median(y[auditory]) < 10  # lateral temporal
    assert np.mean(x[language] < 0) > 0.9  # left-lateralized
    assert min(visual.sum(), auditory.sum(), language.sum()) > 1000
