# Shared set-up: config validation, and each rule's files, params and code version from the package.
from giblet import paths
from giblet import resources as stage_requests
from giblet import rules as stage_rules
from giblet.code_hash import stage_code_hashes
from giblet.stages import STAGES
from giblet.config import validate_config

# Validates with snakemake.utils.validate against workflow/schemas/config.schema.yaml, fills in
# defaults, and names any unknown or mistyped key (with the closest known key).
validate_config(config)

RESULTS = config["results_dir"]
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"  # Snakemake's own per-job measurements (time, memory, I/O)
DATA_SIZE = stage_requests.data_size(config)
CODE_HASHES = stage_code_hashes(list(STAGES))  # from a cache keyed by the package's content
# Every rule runs its stage (giblet.stages, the function of the rule's name) through this script.
STAGE_SCRIPT = "../scripts/stage.py"


def _wrapped(files, wrappers):
    """Apply Snakemake's flags (report(), directory(), ...) to the named files that need them."""
    def wrap(key, value):
        flag = wrappers.get(key)
        if flag is None:
            return value
        return [flag(v) for v in value] if isinstance(value, list) else flag(value)

    return {key: wrap(key, value) for key, value in files.items()}


def stage_inputs(rule_name, **wrappers):
    """The rule's named inputs, from giblet.rules (the giblet command reads the same)."""
    return _wrapped(stage_rules.inputs(rule_name, config), wrappers)


def stage_outputs(rule_name, **wrappers):
    return _wrapped(stage_rules.outputs(rule_name, config), wrappers)


def stage_params(rule_name):
    """The config values the stage reads, and the hash of the code it runs (giblet.code_hash: the stage
    function and every package module its imports reach), so a code edit reruns exactly its users."""
    return {**stage_rules.params(rule_name, config), "code": CODE_HASHES[rule_name]}


def figure(caption, category):
    """A report item: the flag for an output that goes into `snakemake --report`."""
    return lambda path: report(path, caption=f"../report/{caption}", category=category)


def final_targets():
    """What `snakemake` builds by default: the end of every branch of the DAG built so far."""
    evaluation = paths.evaluate(config)
    outputs = [v for k, v in evaluation.items() if k != "reconstructions"] + evaluation["reconstructions"]
    return [str(p) for p in [paths.check(config), paths.train(config)["model"], *outputs]]


def stage_resources(rule_name):
    """What the rule's job asks for (memory, minutes, GPUs), computed from the data's size and the
    config (giblet/resources.py); the SLURM profile adds only partitions and the account."""
    return stage_requests.resources(rule_name, config, DATA_SIZE)


def stage_threads(rule_name):
    return stage_requests.threads(rule_name, config)
