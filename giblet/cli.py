"""The ``giblet`` command: every pipeline stage runs from here without Snakemake.

Each subcommand reads the same YAML config the Snakefile uses (validated by the same schema), with
``--set key.path=value`` overrides, and writes the same files the corresponding rule declares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from giblet import __version__
from giblet.config import load_config
from giblet.errors import ConfigError, InputError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", default=None,
                        help="YAML config (default: the built-in defaults, i.e. the demo)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config key, e.g. --set demo.n_trs=200 (repeatable)")


def cmd_config(args: argparse.Namespace) -> int:
    """Print the complete, validated config (defaults filled in)."""
    config = load_config(args.config, args.overrides)
    if config["inputs"]["bids"]:
        from giblet.config import find_bids
        from giblet.fmri.bids import describe

        # What inputs.bids found, as YAML comments above the config it filled in.
        print("\n".join(f"# {line}" for line in describe(find_bids(config)).splitlines()))
    yaml.safe_dump(config, sys.stdout, sort_keys=False)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check every input from its headers and list every problem at once (rule check_inputs)."""
    from giblet import paths
    from giblet.preflight import run_check

    config = load_config(args.config, args.overrides)
    report = Path(args.report) if args.report else paths.check(config)
    run_check(config, report)  # raises InputError on a problem: main prints it and exits 2
    print(report)
    return 0


def _run_stage(rule: str, config: dict, args: argparse.Namespace, subject: str | None = None,
               optional: bool = False, **paths) -> int:
    """Run ``rule``'s stage with the arguments its Snakemake rule passes (files and params from the
    config), but for the paths given on the command line; print where its first output went. A missing
    input is an error naming it, or, for an ``optional`` stage, a note that the stage was skipped."""
    import os

    from giblet import resources, rules, stages

    arguments = stages.arguments(rule, config, subject)
    arguments.update({key: str(value) for key, value in paths.items() if value and key in arguments})
    inputs = [arguments[key] for key in rules.inputs(rule, config, subject)]
    missing = [path for item in inputs for path in (item if isinstance(item, list) else [item])
               if not Path(path).exists()]
    if missing and optional:
        print(f"giblet: skipped {rule}: {missing[0]} is not there", file=sys.stderr)
        return 0
    if missing:
        raise InputError(missing[0], f"missing: {rule} reads it; run the stage that writes it first, "
                                     "or `snakemake` to run every stage needed")
    gpus = resources.resources(rule, config).get("gpus", 0)  # what the rule reserves
    status = stages.run(rule, arguments, gpus=gpus, train_config=config["train"],
                        threads=len(os.sched_getaffinity(0)), progress=not getattr(args, "quiet", False))
    if status == 0 and rule != "train":
        first = arguments[next(iter(rules.outputs(rule, config)))]
        print(first[0] if isinstance(first, list) else first)
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the demo data set."""
    config = load_config(args.config, args.overrides)
    movie = Path(args.out) / "movie.mp4" if args.out else None  # the stage writes next to the movie
    return _run_stage("demo_dataset", config, args, movie=movie)


def cmd_frames(args: argparse.Namespace) -> int:
    """Video frames per TR."""
    config = load_config(args.config, args.overrides)
    return _run_stage("extract_frames", config, args, movie=args.movie, frames=args.out)


def cmd_frame_features(args: argparse.Namespace) -> int:
    """CLIP image embeddings of the frames per TR."""
    config = load_config(args.config, args.overrides)
    return _run_stage("embed_frames", config, args, movie=args.movie, frame_features=args.out)


def cmd_frames_preview(args: argparse.Namespace) -> int:
    """Frames back to a PNG grid, an mp4 or a GIF."""
    from giblet.stimulus.frames import preview_frames

    print(preview_frames(args.frames, args.out, args.first_tr, args.n_trs))
    return 0


def cmd_audio(args: argparse.Namespace) -> int:
    """EnCodec codes per TR."""
    config = load_config(args.config, args.overrides)
    return _run_stage("encode_audio", config, args, movie=args.movie, codes=args.out)


def cmd_audio_decode(args: argparse.Namespace) -> int:
    """EnCodec codes back to a 24 kHz wav."""
    from giblet.stimulus.audio import decode_audio

    print(decode_audio(args.codes, args.out, device=args.device))
    return 0


def cmd_text(args: argparse.Namespace) -> int:
    """CLIP embeddings of the annotations per TR."""
    config = load_config(args.config, args.overrides)
    return _run_stage("embed_text", config, args, annotations=args.annotations, movie=args.movie, text=args.out)


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
    config = load_config(args.config, args.overrides)
    return _run_stage("train", config, args, manifest=args.manifest)


EVALUATION = ("verify_checkpoint", "examine_weights", "evaluate", "baseline_ridge", "plot_reconstructions",
              "lesion", "training_summary", "report_results")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Every evaluation rule in order (verification first: a bad model stops here), same outputs. The
    training curves and the report tables need the run's own files (history.jsonl, fmri.json): for a
    model.pt or manifest brought from elsewhere they are skipped, and the log says so."""
    config = load_config(args.config, args.overrides)
    for rule in EVALUATION:
        status = _run_stage(rule, config, args, optional=rule in ("training_summary", "report_results"),
                            model=args.model, manifest=args.manifest)
        if status:
            return status
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    """Any one stage, as its rule runs it."""
    config = load_config(args.config, args.overrides)
    if args.rule == "normalize_fmri" and not args.subject:
        raise ConfigError("giblet stage normalize_fmri: --subject is required")
    return _run_stage(args.rule, config, args, subject=args.subject)


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
    from giblet.stages import STAGES  # light: each stage imports what it runs only when it runs

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

    p = sub.add_parser("check", help="check the whole input set from its headers, before a long run: every "
                                      "problem at once (rule check_inputs; exit status 2 on an error)")
    _add_config_args(p)
    p.add_argument("--report", metavar="JSON", help="where the report goes (default: <results_dir>/check/"
                                                    "inputs.json; <name>.failed.json beside it on an error)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="generate the built-in demo data set (movie, annotations, fMRI, truth)")
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: <results_dir>/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    _add_stage(sub, "frames", cmd_frames, "video frames per TR (rule extract_frames)", ("movie",))
    _add_stage(sub, "frame-features", cmd_frame_features,
               "frozen CLIP image embeddings of the frames per TR (rule embed_frames)", ("movie",))
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

    p = sub.add_parser("stage", help="run any one pipeline stage as its Snakemake rule does (files from the config)")
    _add_config_args(p)
    p.add_argument("rule", choices=list(STAGES), metavar="RULE", help=", ".join(STAGES))
    p.add_argument("--subject", help="the subject, for normalize_fmri")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_stage)

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
