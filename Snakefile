# giblet: movie + fMRI -> a multimodal autoencoder whose middle layer is the brain.
# Run:  snakemake --cores all                    (the built-in demo, config/config.yaml)
#       snakemake --cores all --configfile config/benchmark.yaml
# Every rule is a thin call into the installed `giblet` package; see README.md for the DAG.

from snakemake.utils import min_version

min_version("9.27")


configfile: "config/config.yaml"


# The report's first page: the data, the model and the results table (snakemake --report report.html).
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/check.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/stimulus.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/fmri.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


# Seconds of work each: on a cluster they run in the Snakemake process itself instead of waiting in
# the queue for an allocation (profiles/README.md says why each is here).
localrules:
    all,
    check_inputs,
    plan_split,
    verify_checkpoint,
    examine_weights,
    training_summary,


rule all:
    default_target: True
    input:
        final_targets(),
