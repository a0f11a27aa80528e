# The dataset bundle: where the split falls, and the manifest that training reads.

checkpoint plan_split:
    """Contiguous train/val/test target blocks with lag-window buffers, from the lengths in the
    fMRI and movie headers (so z-scoring can fit on the training block before features exist).
    A checkpoint because normalize_fmri reads the training block from it as a param: editing the
    movie reruns this rule, and the z-scoring only if the training block moved."""
    input:
        info=FMRI["info"],
        movie=MOVIE,
    output:
        split=DATASET["split"],
    params:
        split=config["split"],
        shift_trs=config["fmri"]["shift_trs"],
        # Only which modalities are on: a frame size or a model change must not move the split.
        stimulus={m: {"enabled": section["enabled"]} for m, section in config["stimulus"].items()},
        tr=config["tr"],
        code=source_hash("splits.py"),
    log:
        f"{LOGS}/plan_split.log",
    script:
        "../scripts/plan_split.py"


rule assemble_dataset:
    """Check every array against the split and write dataset/manifest.json."""
    input:
        stimulus=as_str(paths.enabled_stimulus_outputs(config)),
        group=FMRI["group"],
        ceiling=FMRI["ceiling"],
        mask=FMRI["mask"],
        info=FMRI["info"],
        split=DATASET["split"],
        truth=as_str(DEMO["truth"]) if config["dataset"] == "demo" else [],
    output:
        manifest=DATASET["manifest"],
    params:
        stimulus={role: str(path) for role, path in paths.stimulus_arrays(config).items()},
        tr=config["tr"],
        code=source_hash("data/assemble.py"),
    log:
        f"{LOGS}/assemble_dataset.log",
    script:
        "../scripts/assemble_dataset.py"
