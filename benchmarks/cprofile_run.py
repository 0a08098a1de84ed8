"""Run `sage-cp` under cProfile with a chosen clock (profile_gateway.py starts the gateway
with it): `python cprofile_run.py cpu|wall OUT.prof serve ...`. `python -m cProfile` has
no option for the clock, and its wall clock misleads on a shared machine (see
profile_gateway.py). The statistics are written when the CLI returns (SIGINT)."""

from __future__ import annotations

import cProfile
import runpy
import sys
import time

if __name__ == "__main__":
    timer, out = sys.argv[1], sys.argv[2]
    if timer not in ("cpu", "wall"):
        raise SystemExit(f"timer must be cpu or wall, got {timer!r}")
    sys.argv = ["sage-cp", *sys.argv[3:]]
    prof = cProfile.Profile(time.process_time if timer == "cpu" else time.perf_counter)
    prof.enable()
    try:
        runpy.run_module("sage_cp_plugin.entrypoints.cli", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        prof.disable()
        prof.dump_stats(out)
