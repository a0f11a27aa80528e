# Stimulus features per TR. Each rule is one call into giblet.stimulus; the sidecars (.json) record
# shapes, parameters, source hashes and model identities.


rule extract_frames:
    """Video frames per TR: uint8 (T, frames_per_tr, H, W, 3)."""
    input:
        movie=MOVIE,
    output:
        frames=STIMULUS["frames"],
        sidecar=STIMULUS["frames_sidecar"],
    params:
        frames=config["stimulus"]["frames"],
        tr=config["tr"],
        code=source_hash("stimulus/frames.py", "stimulus/media.py", "timing.py"),
    threads: 2
    log:
        f"{LOGS}/extract_frames.log",
    script:
        "../scripts/extract_frames.py"


rule encode_audio:
    """EnCodec codes per TR: int16 (T, n_q, frames_per_tr)."""
    input:
        movie=MOVIE,
    output:
        codes=STIMULUS["audio"],
        sidecar=STIMULUS["audio_sidecar"],
    params:
        audio=config["stimulus"]["audio"],
        tr=config["tr"],
        code=source_hash("stimulus/audio.py", "stimulus/encodec_weights.py", "stimulus/media.py", "timing.py"),
    threads: 4
    resources:
        **gpu_resources(gpus_for(config["stimulus"]["audio"]["device"])),
    log:
        f"{LOGS}/encode_audio.log",
    script:
        "../scripts/encode_audio.py"


rule embed_text:
    """CLIP text embeddings of the annotations overlapping each TR: float32 (T, k, d) + mask."""
    input:
        annotations=str(paths.annotations(config)) if config["stimulus"]["text"]["enabled"] else [],
        movie=MOVIE,
    output:
        text=STIMULUS["text"],
        mask=STIMULUS["text_mask"],
        library=STIMULUS["text_annotations"],
        sidecar=STIMULUS["text_sidecar"],
    params:
        text=config["stimulus"]["text"],
        tr=config["tr"],
        code=source_hash("stimulus/text.py", "stimulus/annotations.py", "stimulus/media.py", "timing.py"),
    threads: 4
    resources:
        **gpu_resources(gpus_for(config["stimulus"]["text"]["device"])),
    log:
        f"{LOGS}/embed_text.log",
    script:
        "../scripts/embed_text.py"
