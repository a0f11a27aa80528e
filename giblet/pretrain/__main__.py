"""``python -m giblet.pretrain KIND STIMULUS OUT_DIR --tr TR [--movie MOVIE] [--params JSON]``: the
entry point torchrun launches for multi-GPU pretraining."""

import argparse
import json
import sys

from giblet.logs import setup_logging
from giblet.pretrain.trainer import pretrain

parser = argparse.ArgumentParser(prog="python -m giblet.pretrain", description=__doc__)
parser.add_argument("kind", choices=("frames", "audio"))
parser.add_argument("stimulus")
parser.add_argument("out_dir")
parser.add_argument("--tr", type=float, required=True)
parser.add_argument("--movie", default=None)
parser.add_argument("--params", default="{}", help="the engine's parameters as JSON (giblet.pretrain.trainer.pretrain_params)")
parser.add_argument("--fault-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests only
parser.add_argument("--quiet", action="store_true")
args = parser.parse_args()
setup_logging()
sys.exit(pretrain(args.kind, args.stimulus, args.out_dir, json.loads(args.params), args.tr, args.movie,
                  progress=not args.quiet, fault_at_step=args.fault_at_step))
