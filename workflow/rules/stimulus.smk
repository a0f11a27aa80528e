# Stimulus features per TR. The sidecars (.json) record shapes, parameters, source hashes and model
# identities.


rule extract_frames:
    """Video frames per TR: uint8 (T, frames_per_tr, H, W, 3)."""
    input:
        **stage_inputs("extract_frames"),
    output:
        **stage_outputs("extract_frames"),
    params:
        **stage_params("extract_frames"),
    threads: 2
    log:
        f"{LOGS}/extract_frames.log",
    script:
        STAGE_SCRIPT


rule encode_audio:
    """EnCodec codes per TR: int16 (T, n_q, frames_per_tr)."""
    input:
        **stage_inputs("encode_audio"),
    output:
        **stage_outputs("encode_audio"),
    params:
        **stage_params("encode_audio"),
    threads: 4
    resources:
        **gpu_resources(gpus_for(config["stimulus"]["audio"]["device"])),
    log:
        f"{LOGS}/encode_audio.log",
    script:
        STAGE_SCRIPT


rule embed_text:
    """CLIP text embeddings of the annotations overlapping each TR: float32 (T, k, d) + mask."""
    input:
        **stage_inputs("embed_text"),
    output:
        **stage_outputs("embed_text"),
    params:
        **stage_params("embed_text"),
    threads: 4
    resources:
        **gpu_resources(gpus_for(config["stimulus"]["text"]["device"])),
    log:
        f"{LOGS}/embed_text.log",
    script:
        STAGE_SCRIPT
