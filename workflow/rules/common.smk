# Shared set-up: config validation, output locations, and the code-version params.
from giblet import paths
from giblet.config import validate_config
from giblet.files import source_hash
from giblet.train.params import rule_params as train_rule_params

# Validates with snakemake.utils.validate against workflow/schemas/config.schema.yaml, fills in
# defaults, and names any unknown or mistyped key (with the closest known key).
validate_config(config)

RESULTS = config["results_dir"]
LOGS = f"{RESULTS}/logs"
DEMO = paths.demo(config)
STIMULUS = {key: str(path) for key, path in paths.stimulus(config).items()}
MOVIE = str(paths.movie(config))
FMRI = {key: str(path) for key, path in paths.fmri(config).items()}
BOLD = {subject: str(path) for subject, path in paths.bold(config).items()}
DATASET = {key: str(path) for key, path in paths.dataset(config).items()}
TRAIN = {key: str(path) for key, path in paths.train(config).items()}


def as_str(paths):
    """Snakemake wants str paths; the giblet.paths helpers return pathlib paths and lists of them."""
    return [str(p) for p in paths] if isinstance(paths, list) else str(paths)


EVALUATE = {key: as_str(path) for key, path in paths.evaluate(config).items()}


def final_targets():
    """What `snakemake` builds by default: the end of every branch of the DAG built so far."""
    outputs = [v for k, v in EVALUATE.items() if k != "reconstructions"] + EVALUATE["reconstructions"]
    return [TRAIN["model"], *outputs]


def kept_subjects_z(wildcards):
    """The z-scored subjects that passed fmri_mask (known once the checkpoint has run)."""
    import json

    with open(checkpoints.fmri_mask.get().output.info) as f:
        kept = json.load(f)["subjects"]
    return expand(FMRI["z"], subject=kept)


def training_block(wildcards):
    """The split's training block [start, stop) (known once the plan_split checkpoint has run)."""
    import json

    with open(checkpoints.plan_split.get().output.split) as f:
        return json.load(f)["ranges"]["train"]


def normalization_fit_trs(wildcards):
    """The TRs normalize_fmri fits its statistics on: 'all', or the split's training block."""
    return "all" if config["fmri"]["normalize_on"] == "all" else training_block(wildcards)


def evaluate_params(*keys):
    """Only the evaluate keys a rule reads, so that changing one reruns only the rules that use it."""
    return {key: config["evaluate"][key] for key in keys}


def gpu_resources(count):
    """A rule's GPUs under both names: `gpus` for local scheduling (`--resources gpus=N` caps it) and
    `gpu`, the only name the SLURM executor turns into `--gpus`."""
    return {"gpus": count, "gpu": count}


def gpus_for(device):
    """A rule whose model can run on a GPU reserves one unless told `cpu`."""
    return 0 if device == "cpu" else 1
