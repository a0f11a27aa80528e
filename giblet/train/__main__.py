"""``python -m giblet.train MANIFEST OUT_DIR [--params JSON]``: the entry point torchrun launches."""

import argparse
import json
import sys

from giblet.logs import setup_logging
from giblet.train.loop import train

parser = argparse.ArgumentParser(prog="python -m giblet.train", description=__doc__)
parser.add_argument("manifest")
parser.add_argument("out_dir")
parser.add_argument("--params", default="{}", help="training parameters as JSON: any keys of the config's train section (config/README.md)")
parser.add_argument("--fault-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests only
parser.add_argument("--quiet", action="store_true")
args = parser.parse_args()
setup_logging()
sys.exit(train(args.manifest, args.out_dir, json.loads(args.params), progress=not args.quiet,
               fault_at_step=args.fault_at_step))
