"""One line describing the machine a benchmark ran on (recorded beside every result)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> str:
    """CPU model, usable CPUs, RAM, load average, GPUs (if torch sees any) and Python, one line."""
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
    return (f"CPU {model}, {len(os.sched_getaffinity(0))} usable CPUs, RAM {mem_kb / 2**20:.1f} GiB, "
            f"GPUs: {gpus}, load average {load}, Python {platform.python_version()}")


def append_result(path: Path, title: str, text: str) -> None:
    """Append ``text`` to the results file ``path``, which starts with ``# {title}`` and a line
    naming the script that appends to it."""
    import __main__

    path.parent.mkdir(parents=True, exist_ok=True)
    script = Path(getattr(__main__, "__file__", "benchmarks/?")).name
    head = "" if path.exists() else f"# {title}\n\nAppended by `benchmarks/{script}`.\n\n"
    with path.open("a") as f:
        f.write(head + text + "\n\n")
