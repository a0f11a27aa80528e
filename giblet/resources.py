"""What each rule asks a cluster for (memory, time, CPUs, GPUs), computed from the data's size and the config.

Snakemake passes these to SLURM (``mem_mb``, ``runtime`` in minutes, ``gpu``, ``cpus_per_gpu``, and
the rule's ``threads`` as ``--cpus-per-task``), so a profile holds only what a lab edits: partitions, account, GPU model.
Sizes come from the config (the demo's, or the first BOLD file's header: no voxel data is read), so
``snakemake -n`` shows every request before anything runs. The rates are from the quality benchmark
at Sherlock's size (1,976 TRs, 17 subjects, 4 mm) on 2 CPU cores, with headroom: a rule's
``benchmark:`` file (``results/benchmarks/``) shows what a run really used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from giblet import paths

BRAIN_VOLUME_MM3 = 1.9e6  # an adult brain mask: MNI152's is 1.88e6 mm³ (29,398 voxels at 4 mm)
MB = 1e6
SECONDS_PER_MINUTE = 60


@dataclass(frozen=True)
class DataSize:
    """How big the data are, for sizing requests.

    Attributes
    ----------
    n_trs : int
        Time points (TRs) per subject.
    n_subjects : int
        Subjects.
    grid_voxels : int
        Voxels of one volume's grid (X * Y * Z).
    brain_voxels : int
        Voxels expected inside the brain mask (the grid, or the brain's volume over a voxel's).
    frame_bytes_per_tr : int
        Bytes of extracted frames per TR (uint8 RGB).
    """

    n_trs: int
    n_subjects: int
    grid_voxels: int
    brain_voxels: int
    frame_bytes_per_tr: int

    @property
    def subject_mb(self) -> float:
        """One subject's 4-D float32 volume series, MB."""
        return self.n_trs * self.grid_voxels * 4 / MB

    @property
    def group_mb(self) -> float:
        """The masked group time series (n_trs, brain voxels) float32, MB."""
        return self.n_trs * self.brain_voxels * 4 / MB

    @property
    def dataset_mb(self) -> float:
        """What training and evaluation hold in memory: the group fMRI and the frames, MB."""
        return self.group_mb + self.n_trs * self.frame_bytes_per_tr / MB


def _frames_per_tr(config: dict) -> int:
    """Frames sampled per TR, at most (a movie of at most 30 frames/s)."""
    return math.ceil(30 * config["tr"] / config["stimulus"]["frames"]["frame_skip"])


def data_size(config: dict) -> DataSize:
    """The data's size from the config (the demo), or from the first BOLD file's header (real data)."""
    frames = config["stimulus"]["frames"]
    frames_per_tr = _frames_per_tr(config)
    frame_bytes = frames_per_tr * frames["height"] * frames["width"] * 3 if frames["enabled"] else 0
    if config["dataset"] == "demo":
        demo = config["demo"]
        side = demo["resolution_mm"]
        grid = math.prod(math.ceil(extent / side) for extent in (197, 233, 189))  # MNI152's field of view, mm
        return DataSize(demo["n_trs"], demo["n_subjects"], grid, min(grid, round(BRAIN_VOLUME_MM3 / side**3)),
                        frame_bytes)
    import nibabel as nib  # here, not at the top: the demo never needs it at start-up

    runs = paths.runs(config)
    first = [run["bold"] for run in next(iter(runs.values()))]  # the first subject's runs
    if not all(path.exists() for path in first):  # not there yet: Snakemake reports the missing input itself
        return DataSize(1, len(runs), 1, 1, frame_bytes)
    headers = [nib.load(path).header for path in first]
    shape, zooms = headers[0].get_data_shape(), headers[0].get_zooms()
    grid = math.prod(shape[:3])
    voxel_mm3 = math.prod(zooms[:3]) or 1.0
    n_trs = sum(header.get_data_shape()[3] if len(header.get_data_shape()) > 3 else 1 for header in headers)
    return DataSize(n_trs, len(runs), grid, min(grid, round(BRAIN_VOLUME_MM3 / voxel_mm3)), frame_bytes)


def _mb(base: float, *terms: float) -> int:
    """A memory request in MB: base + terms, rounded up to a 500 MB step."""
    return int(math.ceil((base + sum(terms)) / 500) * 500)


def _minutes(seconds: float, floor: int = 10) -> int:
    """A time request in minutes: three times the estimate, at least ``floor``."""
    return max(floor, math.ceil(3 * seconds / SECONDS_PER_MINUTE))


def _device_gpus(device: str) -> int:
    return 0 if device == "cpu" else 1


def resources(rule: str, config: dict, size: DataSize | None = None) -> dict:
    """``rule``'s request: ``mem_mb``, ``runtime`` (minutes), for a rule that may use GPUs ``gpus``/``gpu``
    (one GPU count under the two names local runs and SLURM read) and, for GPU training,
    ``cpus_per_gpu`` (see :func:`threads`).

    The estimates scale with the data: per TR and voxel for the fMRI stages, per TR for the features,
    and with the GPUs a stage may use.
    """
    size = size or data_size(config)
    t, subject, group, data = size.n_trs, size.subject_mb, size.group_mb, size.dataset_mb
    per_voxel_tr = size.n_trs * size.brain_voxels / (1976 * 29398)  # 1 at the benchmark's size
    stimulus, evaluation, train = config["stimulus"], config["evaluate"], config["train"]
    table = {
        "demo_dataset": lambda: {"mem_mb": _mb(2000, 3 * subject), "runtime": _minutes(320 * per_voxel_tr)},
        "extract_frames": lambda: {"mem_mb": _mb(1500, 1.5 * t * size.frame_bytes_per_tr / MB),
                                   "runtime": _minutes(0.05 * t)},
        "encode_audio": lambda: {"mem_mb": _mb(4000), "runtime": _minutes(0.25 * t),
                                 "gpus": _device_gpus(stimulus["audio"]["device"])},
        "embed_text": lambda: {"mem_mb": _mb(4000), "runtime": _minutes(0.1 * t),
                               "gpus": _device_gpus(stimulus["text"]["device"])},
        # ViT-B-32 embeds ~18 frames/s on 2 CPU cores (benchmarks/clip_frames_speed.py), at most 30 frames/s
        # of movie are sampled.
        "embed_frames": lambda: {"mem_mb": _mb(4000), "runtime": _minutes(t * _frames_per_tr(config) / 15),
                                 "gpus": _device_gpus(stimulus["frames"]["clip"]["device"])},
        # Every frame at the rate, held in memory as uint8 at the autoencoder's size; about 60 frames/s
        # of training on 2 CPU cores per epoch (the demo: 15 epochs of 3,500 frames in about 70 s).
        "pretrain_frames": lambda: _pretrain(config["pretrain"]["frames"],
                                             size.n_trs * config["tr"] * config["pretrain"]["frames"]["rate"] *
                                             config["pretrain"]["frames"]["height"] *
                                             config["pretrain"]["frames"]["width"] * 3 / MB,
                                             t * config["tr"] * config["pretrain"]["frames"]["rate"] / 60),
        # Every TR's codes as int64 (8 bytes per codebook and frame); the demo's 100 epochs take ~20 s.
        "pretrain_audio": lambda: _pretrain(config["pretrain"]["audio"], t * 112 * 32 * 8 / MB, t / 2000),
        "fmri_mask": lambda: {"mem_mb": _mb(1000, 2.5 * subject), "runtime": _minutes(20 * size.n_subjects * per_voxel_tr)},
        "normalize_fmri": lambda: {"mem_mb": _mb(1000, 1.5 * subject), "runtime": _minutes(30 * per_voxel_tr)},
        "average_fmri": lambda: {"mem_mb": _mb(1000, 3 * group), "runtime": _minutes(10 * size.n_subjects * per_voxel_tr)},
        "plan_split": lambda: {"mem_mb": _mb(500), "runtime": _minutes(5)},
        "check_inputs": lambda: {"mem_mb": _mb(1000), "runtime": _minutes(5)},
        "assemble_dataset": lambda: {"mem_mb": _mb(1000, group), "runtime": _minutes(30 * per_voxel_tr)},
        "train": lambda: _train(train, data),
        "verify_checkpoint": lambda: {"mem_mb": _mb(2000), "runtime": _minutes(30)},
        "examine_weights": lambda: {"mem_mb": _mb(2000), "runtime": _minutes(30)},
        "evaluate": lambda: {"mem_mb": _mb(2000, 3 * data), "runtime": _minutes(60 * per_voxel_tr),
                             "gpus": _device_gpus(evaluation["device"])},
        "baseline_ridge": lambda: {"mem_mb": _mb(2000, 10 * group), "runtime": _minutes(480 * per_voxel_tr),
                                   },
        "plot_reconstructions": lambda: {"mem_mb": _mb(2000, 3 * data), "runtime": _minutes(60 * per_voxel_tr),
                                         "gpus": _device_gpus(evaluation["device"])},
        "lesion": lambda: {"mem_mb": _mb(2000, 3 * data), "runtime": _minutes(60 * per_voxel_tr),
                           "gpus": _device_gpus(evaluation["device"])},
        "training_summary": lambda: {"mem_mb": _mb(1000), "runtime": _minutes(5)},
        "report_results": lambda: {"mem_mb": _mb(1500), "runtime": _minutes(30)},
    }
    request = table[rule]()
    if "gpus" in request:  # a rule that may use GPUs; the others ask for none and say nothing of them
        # `gpus` schedules locally (--resources gpus=N); `gpu` becomes SLURM's --gpus, a job total,
        # which a multi-node job replaces by a per-node `gres`.
        request["gpu"] = 0 if "gres" in request else request["gpus"]
    return request


def _train(train: dict, dataset_mb: float) -> dict:
    """Training: each process holds the data set; a GPU job asks for exactly ``train.gpus`` GPUs with
    CPUs beside each for loading, a CPU job for CPUs only. The time is one SLURM allocation: a job
    stopped at its limit saves, exits 75, and its resubmission resumes (``--signal=USR1@600``).

    With ``train.nodes`` N > 1: one job of N nodes, one task per node (an agent that starts
    ``train.gpus`` processes, :mod:`giblet.train.launch`), ``train.gpus`` GPUs on each node (``gres``,
    per node, not ``--gpus``, a total SLURM may spread unevenly), and ``mem_mb`` per node. ``mpi:
    srun`` makes the SLURM plugin run the rule in the batch script, so giblet's own ``srun`` gets
    every node; ``tasks_per_gpu: 0`` keeps the plugin from adding ``--ntasks-per-gpu``."""
    gpus, nodes = train["gpus"], train["nodes"]
    processes = max(1, gpus)
    request = {"mem_mb": _mb(4000 * processes, 2 * processes * dataset_mb), "runtime": 2880, "gpus": gpus}
    if nodes > 1:
        request.update(nodes=nodes, mpi="srun", tasks=nodes, tasks_per_gpu=0,
                       cpus_per_task=CPUS_PER_GPU * gpus if gpus else 4)
        if gpus:
            request["gres"] = f"gpu:{gpus}"
    elif gpus:
        request["cpus_per_gpu"] = CPUS_PER_GPU
    return request


def _pretrain(section: dict, samples_mb: float, epoch_s: float) -> dict:
    """A pretraining job: its samples in memory (per process), an epoch's seconds on 2 CPU cores times
    the epochs (a GPU is far faster; the request stays a safe upper bound), its GPUs."""
    gpus = section["gpus"]
    # At least an hour: the SLURM profile signals USR1 600 s before the limit (save, exit 75, resubmit),
    # so a shorter allocation would be told to stop as it starts.
    return {"mem_mb": _mb(3000 * max(1, gpus), 2 * max(1, gpus) * samples_mb),
            "runtime": _minutes(section["epochs"] * epoch_s, floor=60), "gpus": gpus}


CPUS_PER_GPU = 8  # a training job's CPUs beside each GPU: data loading and the torchrun process


def threads(rule: str, config: dict) -> int:
    """CPU threads of ``rule``'s job (SLURM's ``--cpus-per-task``; locally capped by ``--cores``).
    A GPU training job asks ``CPUS_PER_GPU`` per GPU instead."""
    if rule == "train":
        return 4 if config["train"]["gpus"] == 0 else 1
    if rule.startswith("pretrain_"):
        return 2 if config["pretrain"][rule.removeprefix("pretrain_")]["gpus"] == 0 else CPUS_PER_GPU
    return {"extract_frames": 2, "encode_audio": 4, "embed_text": 4, "embed_frames": 4, "baseline_ridge": 4}.get(rule, 1)
