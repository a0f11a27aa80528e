# fMRI: check and mask all subjects, z-score each subject, average them, estimate the noise ceiling.

wildcard_constraints:
    subject="[A-Za-z0-9]+",


checkpoint fmri_mask:
    """Check every subject (shape, affine, TR, length) and build the shared mask. A checkpoint,
    because `fmri.short_subjects: drop` decides at run time which subjects go on."""
    input:
        bold=list(BOLD.values()),
    output:
        mask=FMRI["mask"],
        info=FMRI["info"],
    params:
        bold=BOLD,
        # Only what the mask depends on: a normalization change must not rerun it.
        fmri={key: config["fmri"][key] for key in ("mask", "majority_fraction", "short_subjects")},
        tr=config["tr"],
        code=source_hash("fmri/inputs.py", "fmri/mask.py"),
    log:
        f"{LOGS}/fmri_mask.log",
    script:
        "../scripts/fmri_mask.py"


rule normalize_fmri:
    """Z-score one subject's masked time series (statistics fit as `fmri.normalize_on` says)."""
    input:
        bold=lambda wildcards: BOLD[wildcards.subject],
        mask=FMRI["mask"],
        info=FMRI["info"],
        # ancient: a rewritten split file (e.g. after a movie edit) does not by itself rerun the
        # z-scoring; the training block it holds is the fit_trs param, which does when it moves.
        split=ancient(DATASET["split"]),
    output:
        z=FMRI["z"],
        sidecar=FMRI["z_sidecar"],
        stats=FMRI["stats"],
    params:
        fit_trs=normalization_fit_trs,  # fmri.normalize_on: 'all', or the training block
        code=source_hash("fmri/normalize.py"),
    log:
        f"{LOGS}/normalize_fmri/sub-{{subject}}.log",
    script:
        "../scripts/normalize_fmri.py"


rule average_fmri:
    """The group mean time series and the inter-subject-correlation noise ceiling (on the training block)."""
    input:
        z=kept_subjects_z,
        split=ancient(DATASET["split"]),  # as in normalize_fmri: the param below reruns it when the block moves
    output:
        group=FMRI["group"],
        sidecar=FMRI["group_sidecar"],
        ceiling=FMRI["ceiling"],
    params:
        isc_trs=training_block,  # the ISC ceiling (reliable voxels) never looks at val or test TRs
        code=source_hash("fmri/group.py"),
    log:
        f"{LOGS}/average_fmri.log",
    script:
        "../scripts/average_fmri.py"
