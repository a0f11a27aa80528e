# Shared set-up: config validation, output locations, and the code-version params.
from giblet.config import validate_config
from giblet.demo import output_paths as demo_output_paths
from giblet.files import source_hash

# Validates with snakemake.utils.validate against workflow/schemas/config.schema.yaml, fills in
# defaults, and names any unknown or mistyped key (with the closest known key).
validate_config(config)

RESULTS = config["results_dir"]
LOGS = f"{RESULTS}/logs"
DEMO = demo_output_paths(f"{RESULTS}/demo", config["demo"]["n_subjects"])


def as_str(paths):
    """Snakemake wants str paths; DEMO holds pathlib paths and lists of them."""
    return [str(p) for p in paths] if isinstance(paths, list) else str(paths)


def final_targets():
    """What `snakemake` builds by default: the end of every branch of the DAG built so far."""
    return [as_str(DEMO["truth"]), as_str(DEMO["movie"]), as_str(DEMO["annotations"])] + as_str(DEMO["bold"])
