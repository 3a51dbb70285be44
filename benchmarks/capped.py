"""Run a command in a cgroup with a memory limit (cgroup v2 or v1), where this machine lets us make one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def run_capped(command: list[str], limit_bytes: int) -> dict:
    """Run ``command`` with at most ``limit_bytes`` of memory (page cache included); report peak and OOM kills.

    Returns ``{"ran": False, "why_not": ...}`` where no memory cgroup can be made, else ``ran``, ``returncode``,
    ``stdout``, ``stderr``, ``cgroup_peak_mb`` and ``oom_kills``.
    """
    name = f"daskfeed-bench-{os.getpid()}"
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and "memory" in v2.read_text().split():
        group, limit_file, peak_file, events = (
            Path("/sys/fs/cgroup") / name,
            "memory.max",
            "memory.peak",
            "memory.events",
        )
    elif Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        group = Path("/sys/fs/cgroup/memory") / name
        limit_file, peak_file, events = "memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.oom_control"
    else:
        return {"ran": False, "why_not": "no cgroup memory controller (v1 or v2) on this machine"}
    try:
        group.mkdir()
        (group / limit_file).write_text(str(int(limit_bytes)))
    except OSError as err:
        return {"ran": False, "why_not": f"could not make a memory-limited cgroup here: {err}"}
    try:
        join = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"]
        result = subprocess.run([*join, *command], capture_output=True, text=True)
        text = (group / events).read_text()
        return {
            "ran": True,
            "returncode": result.returncode,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "cgroup_peak_mb": int((group / peak_file).read_text()) / 1e6,
            "oom_kills": int(text.split("oom_kill ")[1].split()[0]) if "oom_kill " in text else 0,
        }
    finally:
        group.rmdir()
