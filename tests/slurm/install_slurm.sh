#!/usr/bin/env bash
# Installs the real SLURM the cluster tests (tests/core/cluster) run against: Debian's slurm-wlm
# (slurmctld, slurmd and the client commands) and munge. Called by .ci/run and by the tests'
# fixture when sbatch is missing. Idempotent. Exits 0 even when it cannot install (no apt-get, not
# root): the tests then skip and say why.
set -u
say() { echo "[install_slurm] $*"; }
if command -v sbatch >/dev/null 2>&1 && command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
    say "slurm present: $(sbatch --version 2>/dev/null | head -1)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get: cannot install slurm-wlm"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        say "not root and no password-less sudo: cannot install slurm-wlm"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q slurm-wlm munge >/tmp/install_slurm.log 2>&1 ||
    { $SUDO apt-get update -q >>/tmp/install_slurm.log 2>&1 && $SUDO apt-get install -y -q slurm-wlm munge >>/tmp/install_slurm.log 2>&1; } ||
    { say "apt-get could not install slurm-wlm (see /tmp/install_slurm.log)"; exit 0; }
say "installed: $(sbatch --version 2>/dev/null | head -1)"
