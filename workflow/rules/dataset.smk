# The dataset bundle: where the split falls, and the manifest that training reads.


rule plan_split:
    """Contiguous train/val/test target blocks with lag-window buffers, from the lengths in the fMRI
    and movie headers (so z-scoring can fit on the training block before features exist). The
    stages that fit on the training block read it from this file."""
    input:
        **stage_inputs("plan_split"),
    output:
        **stage_outputs("plan_split"),
    params:
        **stage_params("plan_split"),
    threads: stage_threads("plan_split")
    resources:
        **stage_resources("plan_split"),
    benchmark:
        f"{BENCHMARKS}/plan_split.tsv"
    log:
        f"{LOGS}/plan_split.log",
    script:
        STAGE_SCRIPT


rule assemble_dataset:
    """Check every array against the split and write dataset/manifest.json."""
    input:
        **stage_inputs("assemble_dataset"),
    output:
        **stage_outputs("assemble_dataset"),
    params:
        **stage_params("assemble_dataset"),
    threads: stage_threads("assemble_dataset")
    resources:
        **stage_resources("assemble_dataset"),
    benchmark:
        f"{BENCHMARKS}/assemble_dataset.tsv"
    log:
        f"{LOGS}/assemble_dataset.log",
    script:
        STAGE_SCRIPT
