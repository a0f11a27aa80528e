"""Training monitoring: TensorBoard, GPU health through NVML, and progress lines with an ETA.

Only rank 0 monitors; other ranks get a :class:`Monitor` whose methods do nothing. TensorBoard tags:

- ``train/<loss>`` every loss component, ``train/lr``, ``train/grad_norm``, ``train/samples_per_s``,
  ``train/step_time_s`` (every ``tensorboard_every_steps`` optimizer steps);
- ``val/<loss>`` and ``val/fmri_r_mean`` (every validation);
- ``gpu/<i>/utilization_pct``, ``gpu/<i>/memory_used_gb``, ``gpu/<i>/temperature_c`` (NVML) and
  ``gpu/<i>/torch_max_allocated_gb`` (when training on CUDA);
- histograms ``weights/<name>`` and ``grads/<name>`` (every ``histogram_every_steps`` steps);
- images ``reconstruction/frames`` (true | decoded from the true brain) and ``reconstruction/codes``
  at validation; the run's hyperparameters with the final validation metrics (``hparams``).

On a resume the event files are rewritten from the checkpoint's metric history, so the curves are
whole even when Snakemake removed the directory of a failed attempt (histograms and images of
earlier attempts are not kept in the history and are lost).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


class GpuStats:
    """Per-device utilization (%), memory used (GB) and temperature (C) through NVML; empty without GPUs."""

    def __init__(self):
        self.handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as error:  # no driver, no GPU, or nvidia-ml-py missing: monitoring only
            log.debug("NVML unavailable (%s): no GPU health metrics", error)

    def read(self) -> dict[str, float]:
        out = {}
        for i, handle in enumerate(self.handles):
            nv = self.nvml
            out[f"gpu/{i}/utilization_pct"] = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            out[f"gpu/{i}/memory_used_gb"] = nv.nvmlDeviceGetMemoryInfo(handle).used / 1e9
            out[f"gpu/{i}/temperature_c"] = float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        return out


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def frames_image(true: torch.Tensor, decoded: torch.Tensor) -> np.ndarray:
    """One sample's frames ``(F, H, W, 3)``: a 2-row grid, true (uint8) above decoded ([0, 1]), HWC uint8."""
    top = true.cpu().numpy().astype(np.uint8)
    bottom = (decoded.float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return np.concatenate([np.concatenate(list(top), axis=1), np.concatenate(list(bottom), axis=1)], axis=0)


def codes_image(true: torch.Tensor, logits: torch.Tensor) -> np.ndarray:
    """True codes ``(n_q, Fa)`` above the decoded argmax, as a grayscale HWC uint8 image (code / size)."""
    size = logits.shape[-1]
    rows = torch.cat([true.long().cpu(), logits.argmax(-1).cpu()], dim=0).float() / max(1, size - 1)
    return (rows.numpy()[:, :, None] * 255).astype(np.uint8)


class Monitor:
    """Writes what the trainer measures to TensorBoard and the log (rank 0 only)."""

    def __init__(self, out_dir: Path, enabled: bool, params: dict, total_steps: int, log_every_s: float = 60.0):
        self.enabled, self.params, self.total_steps = enabled, params, total_steps
        self.every = params["tensorboard_every_steps"]
        self.histogram_every = params["histogram_every_steps"]
        self.log_every_s, self.last_log = log_every_s, time.monotonic()
        self.started, self.start_step = time.monotonic(), None
        self.writer, self.gpus = None, None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.directory = Path(out_dir) / "tensorboard"
            shutil.rmtree(self.directory, ignore_errors=True)  # rewritten from the history (replay)
            self.writer = SummaryWriter(self.directory)
            self.gpus = GpuStats()

    def replay(self, history: list[dict]) -> None:
        """Rewrite the scalars of a resumed run's earlier steps from its metric history."""
        if self.writer is None:
            return
        for record in history:
            self._scalars(record, record["step"])

    def _scalars(self, record: dict, step: int) -> None:
        for key, value in record.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def histograms(self, model: torch.nn.Module, step: int) -> None:
        """Weights and (clipped) gradients just before optimizer step ``step`` (every N steps)."""
        if self.writer is None or not self.histogram_every or step % self.histogram_every:
            return
        for name, p in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
            if p.grad is not None:
                self.writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def step(self, record: dict, device: str) -> None:
        """After each optimizer step; ``record`` is the history entry (already holds the timings)."""
        if self.writer is None:
            return
        step = record["step"]
        if self.start_step is None:
            self.start_step, self.started = step - 1, time.monotonic()
        if step % self.every == 0:
            self._scalars(record, step)
            if device.startswith("cuda"):
                self.writer.add_scalar("gpu/0/torch_max_allocated_gb", torch.cuda.max_memory_allocated() / 1e9, step)
            for key, value in self.gpus.read().items():
                self.writer.add_scalar(key, value, step)
        if time.monotonic() - self.last_log >= self.log_every_s or step == self.total_steps:
            self.last_log = time.monotonic()
            log.info(self.summary(record))

    def summary(self, record: dict) -> str:
        """One line: step, loss, throughput, ETA and (with GPUs) utilization/memory/temperature."""
        step = record["step"]
        rate = (step - self.start_step) / max(1e-9, time.monotonic() - self.started)
        line = (f"step {step}/{self.total_steps} epoch {record['epoch']} loss {record['train/total']:.4f} "
                f"lr {record['lr']:.2e} {record['samples_per_s']:.1f} samples/s "
                f"ETA {format_eta((self.total_steps - step) / rate) if rate > 0 else '?'}")
        gpus = self.gpus.read() if self.gpus else {}
        for i in range(len(self.gpus.handles) if self.gpus else 0):
            line += (f" | gpu{i} {gpus[f'gpu/{i}/utilization_pct']:.0f}% {gpus[f'gpu/{i}/memory_used_gb']:.1f}GB "
                     f"{gpus[f'gpu/{i}/temperature_c']:.0f}C")
        return line

    def validation(self, metrics: dict, step: int, sample: dict | None, decoded: dict | None) -> None:
        """Validation scalars, and reconstructions of one validation sample decoded from its true brain."""
        if self.writer is None:
            return
        self._scalars(metrics, step)
        if sample is not None and decoded is not None:
            if "frames" in decoded:
                image = frames_image(sample["frames"], decoded["frames"][0])
                self.writer.add_image("reconstruction/frames", image, step, dataformats="HWC")
            if "code_logits" in decoded:
                image = codes_image(sample["codes"], decoded["code_logits"][0])
                self.writer.add_image("reconstruction/codes", image, step, dataformats="HWC")
        log.info("validation at step %d: %s", step,
                 " ".join(f"{k.removeprefix('val/')} {v:.4f}" for k, v in sorted(metrics.items())))

    def finish(self, final_metrics: dict) -> None:
        """Record the hyperparameters next to the final validation metrics, and close."""
        if self.writer is None:
            return
        hparams = {k: v for k, v in self.params.items() if isinstance(v, (int, float, str, bool))}
        hparams.update({f"loss_weights.{k}": v for k, v in self.params["loss_weights"].items()})
        metrics = {f"hparam/{k}": v for k, v in final_metrics.items() if isinstance(v, float)}
        self.writer.add_hparams(hparams, metrics or {"hparam/none": 0.0}, run_name="hparams")
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
