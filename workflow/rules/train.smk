# Training: one process per GPU under torchrun (train.gpus), or one CPU process (train.gpus: 0).


rule train:
    """Train (or resume) the brain autoencoder. The checkpoint directory is deliberately not an
    output: Snakemake deletes a failed job's outputs, and resume state must survive. Exit status 75
    means "checkpoint saved after a signal"; `retries` reruns the job, which resumes."""
    input:
        manifest=DATASET["manifest"],
    output:
        model=TRAIN["model"],
        history=TRAIN["history"],
        tensorboard=directory(TRAIN["tensorboard"]),
    params:
        train=config["train"],
        code=source_hash("model", "train", "data/samples.py"),
    resources:
        gpus=config["train"]["gpus"],  # local scheduling: --resources gpus=N
        gpu=config["train"]["gpus"],  # what the SLURM executor requests
    retries: 3
    log:
        f"{LOGS}/train.log",
    script:
        "../scripts/train.py"
