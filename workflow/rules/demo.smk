rule demo_dataset:
    """The built-in synthetic data set: a movie, its annotations, N subjects' fMRI and the truth."""
    output:
        movie=as_str(DEMO["movie"]),
        annotations=as_str(DEMO["annotations"]),
        bold=as_str(DEMO["bold"]),
        truth=as_str(DEMO["truth"]),
        sidecar=as_str(DEMO["sidecar"]),
    params:
        demo=config["demo"],
        tr=config["tr"],
        code=source_hash("demo", "timing.py"),
    log:
        f"{LOGS}/demo_dataset.log",
    script:
        "../scripts/demo_dataset.py"
