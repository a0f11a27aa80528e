"""fMRI: check the subjects' BOLD runs, build a shared mask, clean and z-score each subject, average them.

The stages, in order (each writes file targets the next one reads):

- ``fmri_mask`` (:func:`giblet.fmri.mask.prepare_fmri`): check shape, affine, TR and length of every
  subject's runs (placed on the movie's clock by :mod:`giblet.fmri.runs`) and their confounds tables
  (:mod:`giblet.fmri.confounds`), then write ``mask.nii.gz`` and ``fmri.json``;
- ``normalize_fmri`` (:func:`giblet.fmri.normalize.normalize_subject`): one subject's runs, streamed
  in time chunks, each cleaned (:mod:`giblet.fmri.clean`) and joined, to ``sub-XX_z.npy`` float32
  (T, V) and ``sub-XX_stats.npz``;
- ``average_fmri`` (:func:`giblet.fmri.group.average_subjects`): ``group.npy`` (T, V) and the
  inter-subject-correlation noise ceiling.

:mod:`giblet.fmri.nifti` maps (T, V) arrays back into brain space and out again. Voxel order is
always numpy's C order of the mask's (i, j, k) indices, the same as nilearn's ``apply_mask``.
:mod:`giblet.fmri.bids` finds an fMRIPrep folder's files for ``inputs.bids`` (names parsed by
:mod:`giblet.fmri.bids_names`).

Nothing is imported here: each stage imports only its own module, so editing one stage's module
reruns that stage alone (see :mod:`giblet.code_hash`).
"""
