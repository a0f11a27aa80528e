# Evaluation, all on the held-out test block. verify_checkpoint gates everything that reads the
# model: a bad checkpoint fails that job and nothing downstream runs on it.

EVAL_CODE = source_hash("evaluate", "model", "data/samples.py")


rule verify_checkpoint:
    """model.pt loads with weights_only, is finite, has the manifest's shapes, and was trained on
    this very dataset (manifest hash); otherwise the job fails naming every problem."""
    input:
        model=TRAIN["model"],
        manifest=DATASET["manifest"],
    output:
        verify=EVALUATE["verify"],
    params:
        code=EVAL_CODE,
    log:
        f"{LOGS}/verify_checkpoint.log",
    script:
        "../scripts/verify_checkpoint.py"


rule examine_weights:
    """Statistics of every tensor (and the optimizer state), flags with reasons, a verdict."""
    input:
        model=TRAIN["model"],
    output:
        json=EVALUATE["weights_json"],
        png=report(EVALUATE["weights_png"], caption="../report/weights.rst", category="Model"),
    params:
        checkpoint=TRAIN["latest_checkpoint"],
        code=EVAL_CODE,
    log:
        f"{LOGS}/examine_weights.log",
    script:
        "../scripts/examine_weights.py"


rule evaluate:
    """Per-voxel r over time, fraction of the noise ceiling, identification, a circular-shift
    null, decoding metrics; the r map in brain space."""
    input:
        model=TRAIN["model"],
        manifest=DATASET["manifest"],
        verified=EVALUATE["verify"],
    output:
        metrics=EVALUATE["metrics"],
        r_map=EVALUATE["r_map"],
        png=report(EVALUATE["r_map_png"], caption="../report/r_map.rst", category="Brain prediction"),
    params:
        evaluate=evaluate_params("reliable_threshold", "null_shifts", "device"),
        code=EVAL_CODE,
    resources:
        **gpu_resources(gpus_for(config["evaluate"]["device"])),
    log:
        f"{LOGS}/evaluate.log",
    script:
        "../scripts/evaluate.py"


rule baseline_ridge:
    """The standard baselines: himalaya banded ridge on lagged stimulus features (encoding) and ridge
    from the brain's principal components (decoding); same split, same metrics."""
    input:
        manifest=DATASET["manifest"],
    output:
        ridge=EVALUATE["ridge"],
    params:
        evaluate=evaluate_params("reliable_threshold", "null_shifts"),
        code=source_hash("evaluate/ridge.py", "evaluate/ridge_features.py", "evaluate/metrics.py",
                         "evaluate/decoding_identification.py", "evaluate/evaluate.py", "splits.py"),
    log:
        f"{LOGS}/baseline_ridge.log",
    script:
        "../scripts/baseline_ridge.py"


rule plot_reconstructions:
    """What the decoders reconstruct from the true brain, and the predicted fMRI."""
    input:
        model=TRAIN["model"],
        manifest=DATASET["manifest"],
        verified=EVALUATE["verify"],
    output:
        figures=[report(p, caption="../report/reconstructions.rst", category="Reconstructions")
                 for p in EVALUATE["reconstructions"]],
    params:
        evaluate=evaluate_params("examples", "reliable_threshold", "device"),
        code=EVAL_CODE,
    resources:
        **gpu_resources(gpus_for(config["evaluate"]["device"])),
    log:
        f"{LOGS}/plot_reconstructions.log",
    script:
        "../scripts/plot_reconstructions.py"


rule lesion:
    """Zero one region's voxels at a time; how much each modality's decoding degrades."""
    input:
        model=TRAIN["model"],
        manifest=DATASET["manifest"],
        verified=EVALUATE["verify"],
        regions=list(config["evaluate"]["lesion_regions"].values()),
    output:
        json=EVALUATE["lesion_json"],
        png=report(EVALUATE["lesion_png"], caption="../report/lesion.rst", category="Lesions"),
    params:
        regions=config["evaluate"]["lesion_regions"],
        code=EVAL_CODE,
    log:
        f"{LOGS}/lesion.log",
    script:
        "../scripts/lesion.py"


rule training_summary:
    """Loss curves per component (train and validation), LR, grad norm, throughput."""
    input:
        history=TRAIN["history"],
    output:
        png=report(EVALUATE["training_png"], caption="../report/training.rst", category="Training"),
    params:
        code=source_hash("evaluate/training_summary.py"),
    log:
        f"{LOGS}/training_summary.log",
    script:
        "../scripts/training_summary.py"
