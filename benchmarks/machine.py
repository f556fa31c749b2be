"""One line describing the machine a benchmark ran on (recorded beside every result)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def pace(repeats: int = 3) -> float:
    """Seconds of a fixed reference workload on the CPU, the best of ``repeats`` (lower: faster).

    The same machine description runs up to twice as fast on one day as on another, so seconds
    from records of different days compare only through this: a stack of 3D convolutions like the
    heatmap networks' (16 channels, one 64 x 96 x 96 window, torch's threads) and a float32 3D FFT
    the size of a level-1 tomogram (92 x 315 x 315, scipy, all workers), on fixed data. A record's
    seconds divided by its pace compare across days; the workload must not change.
    """
    import time

    import numpy as np
    import scipy.fft
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 64, 96, 96, generator=gen)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1)
    vol = np.random.default_rng(0).standard_normal((92, 315, 315), dtype=np.float32)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            y = x
            for _ in range(4):
                y = conv(y)
            scipy.fft.rfftn(vol, workers=-1)
            best = min(best, time.perf_counter() - t)
    return best


def describe(with_pace: bool = False) -> str:
    """CPU model, usable CPUs, RAM, load average, GPUs (if torch sees any) and Python, one line;
    ``with_pace``: also :func:`pace`, for records whose seconds are compared across days."""
    model, mem_kb = platform.processor() or platform.machine(), 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    gpus = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    line = (f"CPU {model}, {len(os.sched_getaffinity(0))} usable CPUs, RAM {mem_kb / 2**20:.1f} GiB, "
            f"GPUs: {gpus}, load average {load}, Python {platform.python_version()}")
    return line + (f", pace {pace():.2f} s (benchmarks/machine.py's reference workload; lower is faster)"
                   if with_pace else "")


def append_result(path: Path, title: str, text: str) -> None:
    """Append ``text`` to the results file ``path``, which starts with ``# {title}`` and a line
    naming the script that appends to it."""
    import __main__

    path.parent.mkdir(parents=True, exist_ok=True)
    script = Path(getattr(__main__, "__file__", "benchmarks/?")).name
    head = "" if path.exists() else f"# {title}\n\nAppended by `benchmarks/{script}`.\n\n"
    with path.open("a") as f:
        f.write(head + text + "\n\n")
