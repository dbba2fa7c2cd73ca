"""Imported at start-up by the Python processes of benchmarks/gpu_check.sh (it puts this folder on PYTHONPATH).

At exit, a process that used CUDA records its allocator peaks (torch.cuda.max_memory_allocated / _reserved) in
$GPU_CHECK_CUDA_STATS/<pid>.json. Does nothing when the variable is unset or torch never initialised CUDA.
"""

import atexit
import json
import os
import sys


def _record_cuda_peaks() -> None:
    """Write this process's CUDA memory peaks (best effort: never raises)."""
    directory = os.environ.get("GPU_CHECK_CUDA_STATS")
    torch = sys.modules.get("torch")
    if not directory or torch is None:
        return
    try:
        if not torch.cuda.is_initialized():
            return
        stats = {"pid": os.getpid(), "argv": sys.argv[:4], "device": torch.cuda.get_device_name(),
                 "max_memory_allocated": torch.cuda.max_memory_allocated(),
                 "max_memory_reserved": torch.cuda.max_memory_reserved()}
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{os.getpid()}.json"), "w") as handle:
            json.dump(stats, handle)
    except Exception:  # a measurement aid must not change the exit of the process it watches
        pass


atexit.register(_record_cuda_peaks)
