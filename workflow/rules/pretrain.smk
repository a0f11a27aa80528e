# Stimulus pretraining: autoencoders learned from the whole movie, before and apart from the brain.
# Their outputs are file targets: editing the brain model never reruns them.


rule pretrain_frames:
    """The frame autoencoder, learned from every frame of the movie at pretrain.frames.rate, and the
    latents of every TR's frames. Checkpoints (beside the outputs, not an output) resume after a
    kill; a signal saves and exits 75, and `retries` resumes."""
    input:
        **stage_inputs("pretrain_frames"),
    output:
        **stage_outputs("pretrain_frames", tensorboard=directory),
    params:
        **stage_params("pretrain_frames"),
    retries: 0 if workflow.remote_exec else config["train"]["restarts"]
    threads: stage_threads("pretrain_frames")
    resources:
        **stage_resources("pretrain_frames"),
    benchmark:
        f"{BENCHMARKS}/pretrain_frames.tsv"
    log:
        f"{LOGS}/pretrain_frames.log",
    script:
        STAGE_SCRIPT


rule pretrain_audio:
    """The code autoencoder, learned from every chunk of the soundtrack's EnCodec codes, and the
    latents of every TR's chunks. Resumes like pretrain_frames."""
    input:
        **stage_inputs("pretrain_audio"),
    output:
        **stage_outputs("pretrain_audio", tensorboard=directory),
    params:
        **stage_params("pretrain_audio"),
    retries: 0 if workflow.remote_exec else config["train"]["restarts"]
    threads: stage_threads("pretrain_audio")
    resources:
        **stage_resources("pretrain_audio"),
    benchmark:
        f"{BENCHMARKS}/pretrain_audio.tsv"
    log:
        f"{LOGS}/pretrain_audio.log",
    script:
        STAGE_SCRIPT
