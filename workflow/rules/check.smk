# The pre-flight check: every input, from its headers, before anything is computed (giblet check).


rule check_inputs:
    """Check the whole input set at once (BOLD headers, runs on the movie's clock, confounds, brain
    masks, movie, annotations, split) and list every problem in the log. Nothing reads its report, so
    it reruns no other stage; the highest priority starts it with the first jobs, and once it fails
    Snakemake starts nothing more."""
    input:
        **stage_inputs("check_inputs"),
    output:
        **stage_outputs("check_inputs"),
    params:
        **stage_params("check_inputs"),
    priority: 100
    threads: stage_threads("check_inputs")
    resources:
        **stage_resources("check_inputs"),
    benchmark:
        f"{BENCHMARKS}/check_inputs.tsv"
    log:
        f"{LOGS}/check_inputs.log",
    script:
        STAGE_SCRIPT
