rule demo_dataset:
    """The built-in synthetic data set: a movie, its annotations, N subjects' fMRI and the truth."""
    output:
        **stage_outputs("demo_dataset"),
    params:
        **stage_params("demo_dataset"),
    threads: stage_threads("demo_dataset")
    resources:
        **stage_resources("demo_dataset"),
    benchmark:
        f"{BENCHMARKS}/demo_dataset.tsv"
    log:
        f"{LOGS}/demo_dataset.log",
    script:
        STAGE_SCRIPT
