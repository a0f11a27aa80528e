# Training: one process per GPU under torchrun, or one CPU process (train.gpus: 0).


rule train:
    """Train (or resume) the brain autoencoder. The checkpoint directory is deliberately not an
    output: Snakemake deletes a failed job's outputs, and resume state must survive. A job stopped by
    a signal (Ctrl-C, a SLURM time limit's USR1, preemption's TERM) saves a checkpoint and exits 75;
    `retries` reruns it and the rerun resumes. Only the top-level Snakemake retries: inside a SLURM
    job the retry would start again in an allocation that is about to end. The params hold only the
    keys that change the weights; the stage reads how to run (checkpoint interval, logging) from the
    whole train section."""
    input:
        **stage_inputs("train"),
    output:
        **stage_outputs("train", tensorboard=directory),
    params:
        **stage_params("train"),
    retries: 0 if workflow.remote_exec else config["train"]["restarts"]
    threads: stage_threads("train")
    resources:
        **stage_resources("train"),
    benchmark:
        f"{BENCHMARKS}/train.tsv"
    log:
        f"{LOGS}/train.log",
    script:
        STAGE_SCRIPT
