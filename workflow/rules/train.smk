# Training: one process per GPU under torchrun (or one CPU process). Not in the default target yet:
# build it with `snakemake --cores all results/train/model.pt`.


rule train:
    """Train (or resume) the brain autoencoder. The checkpoint directory is deliberately not an
    output: Snakemake deletes a failed job's outputs, and resume state must survive. Exit status 75
    means "checkpoint saved after a signal"; `retries` reruns the job, which resumes."""
    input:
        manifest=DATASET["manifest"],
    output:
        model=f"{RESULTS}/train/model.pt",
        history=f"{RESULTS}/train/history.jsonl",
    params:
        train=config["train"],
        code=source_hash("model", "train", "data/samples.py"),
    resources:
        gpus=0,
        gpu=0,
    retries: 3
    log:
        f"{LOGS}/train.log",
    script:
        "../scripts/train.py"
