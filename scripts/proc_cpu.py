"""CPU seconds (user + system, children excluded) of process groups, for the benchmarks.

Usage: proc_cpu.py PIDS [PIDS ...], each argument a comma-separated list of pids; prints one
sum per argument. A pid that is gone counts 0.
"""
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return 0.0


print(" ".join(str(sum(cpu(p) for p in arg.split(",") if p)) for arg in sys.argv[1:]))
