# fMRI: check and mask all subjects, z-score each subject, average them, estimate the noise ceiling.

wildcard_constraints:
    subject="[A-Za-z0-9]+",


rule fmri_mask:
    """Check every subject (shape, affine, TR, length) and build the shared mask. Which subjects go on
    (`fmri.short_subjects: drop`) is decided here and written to fmri.json; a dropped subject's later
    outputs are empty, so the whole plan is known before anything runs."""
    input:
        **stage_inputs("fmri_mask"),
    output:
        **stage_outputs("fmri_mask"),
    params:
        **stage_params("fmri_mask"),
    threads: stage_threads("fmri_mask")
    resources:
        **stage_resources("fmri_mask"),
    benchmark:
        f"{BENCHMARKS}/fmri_mask.tsv"
    log:
        f"{LOGS}/fmri_mask.log",
    script:
        STAGE_SCRIPT


rule normalize_fmri:
    """Z-score one subject's masked time series (statistics fit as `fmri.normalize_on` says: on the
    training block, read from the split file, or on every TR)."""
    input:
        unpack(lambda wildcards: stage_rules.inputs("normalize_fmri", config, wildcards.subject)),
    output:
        **stage_outputs("normalize_fmri"),
    params:
        **stage_params("normalize_fmri"),
    threads: stage_threads("normalize_fmri")
    resources:
        **stage_resources("normalize_fmri"),
    benchmark:
        f"{BENCHMARKS}/normalize_fmri/sub-{{subject}}.tsv"
    log:
        f"{LOGS}/normalize_fmri/sub-{{subject}}.log",
    script:
        STAGE_SCRIPT


rule average_fmri:
    """The group mean time series and the inter-subject-correlation noise ceiling (on the training
    block: the ISC, and so the reliable voxels, never look at val or test TRs)."""
    input:
        **stage_inputs("average_fmri"),
    output:
        **stage_outputs("average_fmri"),
    params:
        **stage_params("average_fmri"),
    threads: stage_threads("average_fmri")
    resources:
        **stage_resources("average_fmri"),
    benchmark:
        f"{BENCHMARKS}/average_fmri.tsv"
    log:
        f"{LOGS}/average_fmri.log",
    script:
        STAGE_SCRIPT
