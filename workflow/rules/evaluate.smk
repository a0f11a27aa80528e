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
    threads: stage_threads("verify_checkpoint")
    resources:
        **stage_resources("verify_checkpoint"),
    benchmark:
        f"{BENCHMARKS}/verify_checkpoint.tsv"
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
    threads: stage_threads("examine_weights")
    resources:
        **stage_resources("examine_weights"),
    benchmark:
        f"{BENCHMARKS}/examine_weights.tsv"
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
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    benchmark:
        f"{BENCHMARKS}/evaluate.tsv"
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
    threads: stage_threads("baseline_ridge")
    resources:
        **stage_resources("baseline_ridge"),
    benchmark:
        f"{BENCHMARKS}/baseline_ridge.tsv"
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
    threads: stage_threads("plot_reconstructions")
    resources:
        **stage_resources("plot_reconstructions"),
    benchmark:
        f"{BENCHMARKS}/plot_reconstructions.tsv"
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
    threads: stage_threads("lesion")
    resources:
        **stage_resources("lesion"),
    benchmark:
        f"{BENCHMARKS}/lesion.tsv"
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
    threads: stage_threads("training_summary")
    resources:
        **stage_resources("training_summary"),
    benchmark:
        f"{BENCHMARKS}/training_summary.tsv"
    log:
        f"{LOGS}/training_summary.log",
    script:
        STAGE_SCRIPT


# Seconds of work (tables and two figures from small files): on a cluster it runs in the Snakemake
# process instead of waiting for an allocation, like the Snakefile's localrules.
localrules:
    report_results,


rule report_results:
    """The run's answer for the report: the results table (model vs ridge baseline vs oracle vs noise
    ceiling vs chance) and every number of metrics.json and ridge.json as CSV and HTML, the r map in an
    interactive viewer and on slices, and the evaluation folder's BIDS dataset_description.json."""
    input:
        **stage_inputs("report_results"),
    output:
        **stage_outputs("report_results", summary=figure("summary.rst", "Results"),
                        about=figure("about.rst", "Results"),
                        html=figure("results.rst", "Results"),
                        metrics_csv=figure("metrics_table.rst", "Results"),
                        ridge_csv=figure("ridge_table.rst", "Results"),
                        viewer=figure("r_map_viewer.rst", "Brain prediction"),
                        slices=figure("r_map_slices.rst", "Brain prediction")),
    params:
        **stage_params("report_results"),
    threads: stage_threads("report_results")
    resources:
        **stage_resources("report_results"),
    benchmark:
        f"{BENCHMARKS}/report_results.tsv"
    log:
        f"{LOGS}/report_results.log",
    script:
        STAGE_SCRIPT
