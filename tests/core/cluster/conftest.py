"""A real SLURM for these tests: Debian's slurm-wlm and munge (installed by tests/slurm/install_slurm.sh,
which .ci/run also calls), configured for this one machine and started once per session by
tests/slurm/start_slurm.sh. The tests talk to it only through SLURM's own commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[2] / "slurm"


def _why_not() -> str | None:
    if os.name != "posix":
        return "SLURM runs on Linux only"
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        subprocess.run(["bash", str(HERE / "install_slurm.sh")], check=False)
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        return "slurm-wlm is not installed and could not be (tests/slurm/install_slurm.sh says why above)"
    if os.geteuid() != 0:
        return "the SLURM daemons need root to start (SlurmUser=root), and this user is not root"
    return None


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """SLURM_CONF for a running one-node SLURM; set in os.environ for the session, as a user's login does."""
    why = _why_not()
    if why:
        pytest.skip(why)
    state = tmp_path_factory.mktemp("slurm")
    out = subprocess.run(["bash", str(HERE / "start_slurm.sh"), str(state)], capture_output=True, text=True)
    if out.returncode != 0:
        logs = "".join(p.read_text()[-2000:] for p in (state / "log").glob("*.log"))
        raise RuntimeError(f"SLURM did not start: {out.stderr}\n{logs}")
    conf = out.stdout.strip().splitlines()[-1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    subprocess.run(["bash", str(HERE / "stop_slurm.sh"), str(state)], check=False)  # cancels, waits, stops
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(request):
    """A test that fails midway must not leave a job holding the node for the next one."""
    yield
    if "slurm" in request.fixturenames and os.environ.get("SLURM_CONF"):
        subprocess.run(["scancel", "--user=root"], check=False, capture_output=True)
        for _ in range(60):
            if not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
                break
            time.sleep(0.5)
