"""The ``giblet`` command: every pipeline stage runs from here without Snakemake.

Each subcommand reads the same YAML config the Snakefile uses (validated by the same schema), with
``--set key.path=value`` overrides, and writes the same files the corresponding rule declares.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from giblet import __version__
from giblet.config import ConfigError, load_config
from giblet.errors import InputError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", default=None,
                        help="YAML config (default: the built-in defaults, i.e. the demo)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config key, e.g. --set demo.n_trs=200 (repeatable)")


def cmd_config(args: argparse.Namespace) -> int:
    """Print the complete, validated config (defaults filled in)."""
    config = load_config(args.config, args.overrides)
    yaml.safe_dump(config, sys.stdout, sort_keys=False)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the demo data set."""
    from giblet.demo.generate import make_demo

    config = load_config(args.config, args.overrides)
    out = args.out or f"{config['results_dir']}/demo"
    make_demo(config["demo"], config["tr"], out, progress=not args.quiet)
    print(out)
    return 0


def _stage_paths(args: argparse.Namespace) -> tuple[dict, dict]:
    from giblet import paths

    config = load_config(args.config, args.overrides)
    return config, paths.stimulus(config)


def cmd_frames(args: argparse.Namespace) -> int:
    """Video frames per TR."""
    from giblet import paths
    from giblet.stimulus.frames import extract_frames

    config, out = _stage_paths(args)
    print(extract_frames(args.movie or paths.movie(config), args.out or out["frames"], config["tr"],
                         config["stimulus"]["frames"], progress=not args.quiet))
    return 0


def cmd_frames_preview(args: argparse.Namespace) -> int:
    """Frames back to a PNG grid, an mp4 or a GIF."""
    from giblet.stimulus.frames import preview_frames

    print(preview_frames(args.frames, args.out, args.first_tr, args.n_trs))
    return 0


def cmd_audio(args: argparse.Namespace) -> int:
    """EnCodec codes per TR."""
    from giblet import paths
    from giblet.stimulus.audio import encode_audio

    config, out = _stage_paths(args)
    print(encode_audio(args.movie or paths.movie(config), args.out or out["audio"], config["tr"],
                       config["stimulus"]["audio"], progress=not args.quiet))
    return 0


def cmd_audio_decode(args: argparse.Namespace) -> int:
    """EnCodec codes back to a 24 kHz wav."""
    from giblet.stimulus.audio import decode_audio

    print(decode_audio(args.codes, args.out, device=args.device))
    return 0


def cmd_text(args: argparse.Namespace) -> int:
    """CLIP embeddings of the annotations per TR."""
    from giblet import paths
    from giblet.stimulus.text import embed_text

    config, out = _stage_paths(args)
    written = embed_text(args.annotations or paths.annotations(config), args.movie or paths.movie(config),
                         args.out or out["text"], config["tr"], config["stimulus"]["text"],
                         progress=not args.quiet)
    print(written)
    return 0


def cmd_text_nearest(args: argparse.Namespace) -> int:
    """For each row of an embeddings array, the annotations with the most similar embedding."""
    import numpy as np

    from giblet.stimulus.text import nearest_annotations

    library = np.load(args.library)
    embeddings = np.load(args.embeddings)
    queries = embeddings.reshape(-1, library["embeddings"].shape[1])
    # (T, k, d) text arrays: name rows "TR slot"; other shapes: by row number.
    slots = embeddings.shape[1] if embeddings.ndim == 3 else 1
    index, score = nearest_annotations(queries, library["embeddings"], args.top_k)
    for row, (ids, scores) in enumerate(zip(index, score)):
        label = f"TR {row // slots} slot {row % slots}" if slots > 1 else f"row {row}"
        if not np.any(queries[row]):
            print(f"{label}\t(empty slot)")
            continue
        matches = "  |  ".join(f"{s:.3f} {library['texts'][i]}" for i, s in zip(ids, scores))
        print(f"{label}\t{matches}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) as the train rule does: CPU, or torchrun over ``train.gpus`` GPUs."""
    from giblet import paths
    from giblet.train.launch import launch

    config = load_config(args.config, args.overrides)
    manifest = args.manifest or str(paths.dataset(config)["manifest"])
    return launch(manifest, str(paths.train(config)["model"].parent), config["train"])


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Every evaluation rule in order (verification first: a bad model stops here), same outputs."""
    from giblet import paths
    from giblet.evaluate.evaluate import evaluate
    from giblet.evaluate.lesion import lesion
    from giblet.evaluate.reconstructions import plot_reconstructions
    from giblet.evaluate.ridge import write_ridge_baseline
    from giblet.evaluate.training_summary import training_summary
    from giblet.evaluate.verify import verify_checkpoint
    from giblet.evaluate.weights import examine_weights

    config = load_config(args.config, args.overrides)
    train, out, ev = paths.train(config), paths.evaluate(config), config["evaluate"]
    model = args.model or str(train["model"])
    manifest = args.manifest or str(paths.dataset(config)["manifest"])
    verify_checkpoint(model, manifest, out["verify"])
    latest = train["latest_checkpoint"]
    examine_weights(model, out["weights_json"], out["weights_png"], latest if latest.exists() else None)
    evaluate(model, manifest, out["metrics"].parent, reliable_threshold=ev["reliable_threshold"],
             n_null=ev["null_shifts"], device=ev["device"])
    write_ridge_baseline(manifest, out["ridge"], reliable_threshold=ev["reliable_threshold"], n_null=ev["null_shifts"])
    plot_reconstructions(model, manifest, out["reconstructions"][0].parent, n_examples=ev["examples"],
                         reliable_ceiling=ev["reliable_threshold"], device=ev["device"])
    lesion(model, manifest, out["lesion_json"], out["lesion_png"], regions=ev["lesion_regions"] or None,
           device=ev["device"])
    if train["history"].exists():
        training_summary(train["history"], out["training_png"])
    print(out["metrics"].parent.parent)
    return 0


def _add_stage(sub, name: str, func, help: str, inputs: tuple[str, ...]) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    _add_config_args(p)
    for item in inputs:
        p.add_argument(f"--{item}", metavar="PATH", help=f"input {item} (default: from the config)")
    p.add_argument("--out", metavar="PATH", help="output .npy (default: under <results_dir>/stimulus/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giblet",
        description="Movie + fMRI -> a multimodal autoencoder whose middle layer is the brain. "
                    "Each subcommand is one pipeline stage; `snakemake --cores all` runs them all.",
    )
    parser.add_argument("--version", action="version", version=f"giblet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="print the validated config with every default filled in")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="generate the built-in demo data set (movie, annotations, fMRI, truth)")
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: <results_dir>/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    _add_stage(sub, "frames", cmd_frames, "video frames per TR (rule extract_frames)", ("movie",))
    _add_stage(sub, "audio", cmd_audio, "EnCodec audio codes per TR (rule encode_audio)", ("movie",))
    _add_stage(sub, "text", cmd_text, "CLIP embeddings of the annotations per TR (rule embed_text)",
               ("annotations", "movie"))

    p = sub.add_parser("train", help="train or resume the model (rule train; GPUs per train.gpus)")
    _add_config_args(p)
    p.add_argument("--manifest", metavar="PATH", help="dataset manifest (default: from the config)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="verify, examine, score and plot a trained model (the evaluation rules)")
    _add_config_args(p)
    p.add_argument("--model", metavar="PATH", help="model.pt (default: <results_dir>/train/model.pt)")
    p.add_argument("--manifest", metavar="PATH", help="dataset manifest (default: from the config)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("frames-preview", help="frames.npy back to a PNG grid (one row per TR), mp4 or GIF")
    p.add_argument("frames", metavar="FRAMES_NPY")
    p.add_argument("--out", required=True, metavar="PATH", help=".png, .mp4 or .gif")
    p.add_argument("--first-tr", type=int, default=0)
    p.add_argument("--n-trs", type=int, default=8)
    p.set_defaults(func=cmd_frames_preview)

    p = sub.add_parser("audio-decode", help="audio_codes.npy back to a 24 kHz wav")
    p.add_argument("codes", metavar="CODES_NPY")
    p.add_argument("--out", required=True, metavar="WAV")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_audio_decode)

    p = sub.add_parser("text-nearest", help="nearest annotations (cosine) to embeddings, e.g. decoded ones")
    p.add_argument("embeddings", metavar="EMBEDDINGS_NPY", help="(..., d) float array")
    p.add_argument("--library", required=True, metavar="NPZ", help="text_annotations.npz of embed_text")
    p.add_argument("--top-k", type=int, default=3)
    p.set_defaults(func=cmd_text_nearest)
    return parser


def main(argv: list[str] | None = None) -> int:
    from giblet.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return args.func(args)
    except (ConfigError, InputError) as err:
        print(f"giblet: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
