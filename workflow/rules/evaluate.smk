# Evaluation, all on the held-out test block. verify_checkpoint gates everything that reads the
# model: a bad checkpoint fails that job and nothing downstream runs on it.


rule verify_checkpoint:
    """model.pt loads with weights_only, is finite, has the manifest's shapes, and was trained on
    this very dataset (manifest hash); otherwise the job fails naming every problem."""
    input:
        **stage_inputs("verify_checkpoint"),
    output:
        **stage_outputs("verify_checkpoint"),
    params:
        **stage_params("verify_checkpoint"),
    log:
        f"{LOGS}/verify_checkpoint.log",
    script:
        STAGE_SCRIPT


rule examine_weights:
    """Statistics of every tensor (and the optimizer state), flags with reasons, a verdict."""
    input:
        **stage_inputs("examine_weights"),
    output:
        **stage_outputs("examine_weights", png=figure("weights.rst", "Model")),
    params:
        **stage_params("examine_weights"),
    log:
        f"{LOGS}/examine_weights.log",
    script:
        STAGE_SCRIPT


rule evaluate:
    """Per-voxel r over time, fraction of the noise ceiling, identification, a circular-shift
    null, decoding metrics; the r map in brain space."""
    input:
        **stage_inputs("evaluate"),
    output:
        **stage_outputs("evaluate", png=figure("r_map.rst", "Brain prediction")),
    params:
        **stage_params("evaluate"),
    resources:
        **gpu_resources(gpus_for(config["evaluate"]["device"])),
    log:
        f"{LOGS}/evaluate.log",
    script:
        STAGE_SCRIPT


rule baseline_ridge:
    """The standard baselines: himalaya banded ridge on lagged stimulus features (encoding) and ridge
    from the brain's principal components (decoding); same split, same metrics."""
    input:
        **stage_inputs("baseline_ridge"),
    output:
        **stage_outputs("baseline_ridge"),
    params:
        **stage_params("baseline_ridge"),
    log:
        f"{LOGS}/baseline_ridge.log",
    script:
        STAGE_SCRIPT


rule plot_reconstructions:
    """What the decoders reconstruct from the true brain, and the predicted fMRI."""
    input:
        **stage_inputs("plot_reconstructions"),
    output:
        **stage_outputs("plot_reconstructions", figures=figure("reconstructions.rst", "Reconstructions")),
    params:
        **stage_params("plot_reconstructions"),
    resources:
        **gpu_resources(gpus_for(config["evaluate"]["device"])),
    log:
        f"{LOGS}/plot_reconstructions.log",
    script:
        STAGE_SCRIPT


rule lesion:
    """Zero one region's voxels at a time; how much each modality's decoding degrades."""
    input:
        **stage_inputs("lesion"),
    output:
        **stage_outputs("lesion", png=figure("lesion.rst", "Lesions")),
    params:
        **stage_params("lesion"),
    resources:
        **gpu_resources(gpus_for(config["evaluate"]["device"])),
    log:
        f"{LOGS}/lesion.log",
    script:
        STAGE_SCRIPT


rule training_summary:
    """Loss curves per component (train and validation), LR, grad norm, throughput."""
    input:
        **stage_inputs("training_summary"),
    output:
        **stage_outputs("training_summary", png=figure("training.rst", "Training")),
    params:
        **stage_params("training_summary"),
    log:
        f"{LOGS}/training_summary.log",
    script:
        STAGE_SCRIPT
