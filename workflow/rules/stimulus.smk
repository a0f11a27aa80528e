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
    threads: stage_threads("extract_frames")
    resources:
        **stage_resources("extract_frames"),
    benchmark:
        f"{BENCHMARKS}/extract_frames.tsv"
    log:
        f"{LOGS}/extract_frames.log",
    script:
        STAGE_SCRIPT


rule embed_frames:
    """Frozen CLIP image embeddings of the frames sampled per TR: float16 (T, frames_per_tr, d)."""
    input:
        **stage_inputs("embed_frames"),
    output:
        **stage_outputs("embed_frames"),
    params:
        **stage_params("embed_frames"),
    threads: stage_threads("embed_frames")
    resources:
        **stage_resources("embed_frames"),
    benchmark:
        f"{BENCHMARKS}/embed_frames.tsv"
    log:
        f"{LOGS}/embed_frames.log",
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
    threads: stage_threads("encode_audio")
    resources:
        **stage_resources("encode_audio"),
    benchmark:
        f"{BENCHMARKS}/encode_audio.tsv"
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
    threads: stage_threads("embed_text")
    resources:
        **stage_resources("embed_text"),
    benchmark:
        f"{BENCHMARKS}/embed_text.tsv"
    log:
        f"{LOGS}/embed_text.log",
    script:
        STAGE_SCRIPT
