"""Where the pipeline runs: inside a Kaggle kernel or not, and on which devices.

Kaggle is recognised by the kernel itself (``KAGGLE_KERNEL_RUN_TYPE`` set, or
``/kaggle/working`` present), never by whether the competition data is attached:
a Kaggle kernel without the data must stop, not quietly predict something else.

A visible GPU whose compute capability the installed torch was not built for (a
P100, sm_60, with torch 2.10) is left out with a one-line note; with no usable GPU
the runs go to the CPU (ONNX Runtime when the bundle has it) and the note says
roughly how long that will take.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import layout
from .errors import CziiInputError

#: Set by Kaggle in every kernel ("Interactive" or "Batch").
KAGGLE_ENV_VAR = "KAGGLE_KERNEL_RUN_TYPE"
#: Kaggle's writable output folder, present in every kernel.
KAGGLE_WORKING = Path("/kaggle/working")

#: Seconds to predict one full-size test tomogram (184 x 630 x 630) on the CPU with ONNX
#: Runtime, on the 2-core AMD EPYC this was built on (benchmarks/results/detection.md:
#: 15.4 s end to end, 12 runs). Used only for the rough estimate printed when no GPU is usable.
CPU_SECONDS_PER_RUN = 15.4
CPU_REFERENCE_CORES = 2


def on_kaggle(environ: dict | None = None, working_dir: Path = KAGGLE_WORKING) -> bool:
    """Whether this process runs inside a Kaggle kernel (env var or ``/kaggle/working``)."""
    environ = os.environ if environ is None else environ
    return bool(environ.get(KAGGLE_ENV_VAR)) or Path(working_dir).is_dir()


def resolve_data_root(data_root: str | Path | None = None, kaggle: bool | None = None,
                      competition_root: Path = layout.KAGGLE_ROOT) -> Path | None:
    """The data root to predict: ``data_root`` when given; on Kaggle the attached competition
    data; elsewhere ``None`` (the caller may simulate a test set).

    Raises :class:`CziiInputError` on Kaggle when the competition data is not attached,
    so a Kaggle kernel never predicts (or submits) a simulated test set.
    """
    if data_root is not None:
        return Path(data_root)
    kaggle = on_kaggle() if kaggle is None else kaggle
    if not kaggle:
        return None
    if not Path(competition_root).is_dir():
        raise CziiInputError(competition_root, "the competition data is not attached to this Kaggle notebook: "
                                               "add it (Add Input > Competition Datasets > CZII - CryoET Object "
                                               "Identification) and run again")
    return Path(competition_root)


def data_root_or_simulate(data_root: str | Path | None, sim_dir: str | Path, *, n_train: int = 0, n_test: int = 0,
                          config=None, seed: int = 0, count_scale: float = 1.0,
                          real_layouts: str | Path | None = None, kaggle_needs_data: bool = False,
                          kaggle: bool | None = None,
                          competition_root: Path = layout.KAGGLE_ROOT) -> tuple[Path, object]:
    """The notebooks' data: ``data_root`` when given, Kaggle's competition data when attached, else a
    dataset simulated into ``sim_dir`` (:func:`czii_kaggle.simulate.simulate_dataset`).

    Parameters
    ----------
    data_root : path-like or None
        A Kaggle-layout root to use as it is.
    sim_dir : path-like
        The caller's own scratch folder for the simulated dataset: a re-run writes into it again
        (``overwrite``; runs of the same name are replaced).
    n_train, n_test, config, seed, count_scale
        As :func:`~czii_kaggle.simulate.simulate_dataset` (``config``: a ``SimConfig``).
    real_layouts : path-like, optional
        A Kaggle-layout root with real picks: the simulated training runs take its runs' layouts
        (random layouts when None).
    kaggle_needs_data : bool
        Inside a Kaggle kernel, stop with :class:`CziiInputError` when the competition data is not
        attached instead of simulating (:func:`resolve_data_root`): a kernel never submits a
        simulated test set.

    Returns
    -------
    (Path, SimDataset or None)
        The data root, and the simulated dataset (its runs and ``solution_csv``) when one was made.
    """
    if kaggle_needs_data:
        data_root = resolve_data_root(data_root, kaggle=kaggle, competition_root=competition_root)
    elif data_root is None and Path(competition_root).is_dir():
        data_root = competition_root
    if data_root is not None:
        return Path(data_root), None
    from .simulate import simulate_dataset

    options = {} if config is None else {"config": config}
    sim = simulate_dataset(sim_dir, n_train=n_train, n_test=n_test, seed=seed, count_scale=count_scale,
                           real_train_layouts=real_layouts is not None, real_root=real_layouts, overwrite=True,
                           **options)
    return sim.root, sim


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Gpu:
    """One visible CUDA device: its index, name and compute capability ``(major, minor)``."""

    index: int
    name: str
    capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


@dataclass(frozen=True)
class DevicePlan:
    """The devices to predict on and what was left out.

    devices : ``["cuda:0", ...]`` or ``["cpu"]``.
    left_out : one line per visible GPU torch cannot run, naming it and what to do.
    """

    devices: list[str]
    left_out: list[str] = field(default_factory=list)

    @property
    def on_cpu(self) -> bool:
        return all(d == "cpu" for d in self.devices)


def _arch_number(arch: str) -> tuple[str, int] | None:
    """``"sm_86"`` -> ``("sm", 86)``, ``"compute_90"`` -> ``("compute", 90)``; else None."""
    m = re.fullmatch(r"(sm|compute)_(\d+)[a-z]?", arch.strip())
    return (m.group(1), int(m.group(2))) if m else None


def gpu_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether torch built for ``arch_list`` (``torch.cuda.get_arch_list()``) runs on a GPU of
    ``capability``: a binary ``sm_XY`` runs on the same major version X with minor >= Y; PTX
    ``compute_XY`` is compiled on the fly for any capability >= XY."""
    major, minor = capability
    cap = 10 * major + minor
    for arch in arch_list:
        parsed = _arch_number(arch)
        if parsed is None:
            continue
        kind, num = parsed
        if kind == "sm" and num // 10 == major and num % 10 <= minor:
            return True
        if kind == "compute" and num <= cap:
            return True
    return False


def visible_gpus() -> list[Gpu]:
    """Every CUDA device torch sees (none without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [Gpu(i, torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
            for i in range(torch.cuda.device_count())]


def torch_arch_list() -> list[str]:
    """The GPU architectures the installed torch was built for."""
    import torch

    return list(torch.cuda.get_arch_list())


def plan_devices(gpus: list[Gpu] | None = None, arch_list: list[str] | None = None) -> DevicePlan:
    """One device entry per usable GPU, else ``["cpu"]``; GPUs torch cannot run are left out.

    ``gpus`` and ``arch_list`` default to what torch reports here (given, they let the
    decision be tested without a GPU).
    """
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        return DevicePlan(["cpu"])
    arch_list = torch_arch_list() if arch_list is None else arch_list
    usable, left_out = [], []
    for gpu in gpus:
        if gpu_supported(gpu.capability, arch_list):
            usable.append(f"cuda:{gpu.index}")
        else:
            left_out.append(f"GPU {gpu.index} ({gpu.name}, {gpu.sm}) cannot run with this torch (built for "
                            f"{', '.join(arch_list) or 'no GPU'}): left out; choose a GPU T4 x2 accelerator "
                            "in the notebook settings to use a GPU")
    return DevicePlan(usable or ["cpu"], left_out)


def cpu_estimate_s(n_runs: int, n_cpus: int | None = None, shape_vox: tuple[int, int, int] = (184, 630, 630)) -> float:
    """Rough seconds to predict ``n_runs`` tomograms of ``shape_vox`` on ``n_cpus`` CPU cores:
    :data:`CPU_SECONDS_PER_RUN` scaled by voxel count and (linearly, optimistically) by cores."""
    if not n_cpus:
        n_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    voxels = shape_vox[0] * shape_vox[1] * shape_vox[2] / (184 * 630 * 630)
    return n_runs * CPU_SECONDS_PER_RUN * voxels * CPU_REFERENCE_CORES / max(1, n_cpus)


def describe_plan(plan: DevicePlan, n_runs: int, n_cpus: int | None = None) -> list[str]:
    """Lines to print about ``plan``: each GPU left out and, when the CPU runs everything,
    the estimated time."""
    lines = list(plan.left_out)
    if plan.on_cpu:
        seconds = cpu_estimate_s(n_runs, n_cpus)
        took = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
        lines.append(f"{'no usable GPU' if plan.left_out else 'no GPU'}: predicting {n_runs} run(s) on the CPU "
                     f"(ONNX Runtime when the bundle has it), roughly {took} at full size")
    return lines
