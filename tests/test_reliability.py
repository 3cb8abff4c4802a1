"""Nothing lost, nothing leaked: each careless or unlucky moment of issue 11, through the magics,
with the user's files compared byte for byte. Disk-full cases run on a real small tmpfs (real
ENOSPC); read-only cases on a read-only tmpfs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from sft_magics.core.files import read_events, read_json
from sft_magics.core.run.checkpoints import CHECKPOINT_MARK
from sft_magics.core.run.folder import RunFolder
from sft_magics.core.run.lock import RunError

SECRET = "hf_SECRETabcdefghijklmnop123"
COMMENT_SECRET = "hf_COMMENTabcdefghijklmno456"
NESTED_SECRET = "nested-token-value-789"


def _cell(tiny_model, data, **extra) -> str:
    config = {"model": tiny_model, "dataset": data, "max_steps": 2, "per_device_train_batch_size": 4, **extra}
    return "".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}\n" for k, v in config.items())


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with the sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _user_files(tmp_path: Path) -> Path:
    """A user's project folder around the runs folder: files that must survive anything."""
    (tmp_path / "README.md").write_text("# my project\n")
    (tmp_path / "config.yaml").write_text("mine: true\n")
    (tmp_path / "cell.txt").write_text("my notes\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me\n")
    return tmp_path


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (CI runs as root); yields a mount function, unmounts everything after."""
    mounted = []

    def mount(name: str, size: str = "8m", readonly: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _fill(disk: Path, leave: int = 0) -> Path:
    """Fill a file system for real (page by page until ENOSPC), then free ``leave`` bytes."""
    filler = disk / "filler.bin"
    size = 0
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                size += f.write(b"\0" * 4096)
        except OSError:
            pass
    if leave:
        os.truncate(filler, max(0, size - leave))
    return filler


# -- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../x", "/abs/path", "a/b", ".", ".hidden", "a b", "x" * 101, ""])
def test_a_run_name_never_escapes_output_dir(shell, tiny_model, qa_jsonl, tmp_path, name):
    _user_files(tmp_path)
    before = _tree_digest(tmp_path)
    with pytest.raises(UsageError, match=r"^run name .* is not allowed: use 1-100 letters, digits") as info:
        shell.run_cell_magic("sft_train", f"--name {name!r}", _cell(tiny_model, qa_jsonl))
    assert "\n" not in str(info.value)
    assert _tree_digest(tmp_path) == before  # nothing written, nothing replaced
    for magic in ("sft_attach", "sft_wait", "sft_stop"):
        with pytest.raises(UsageError, match="is not allowed"):
            shell.run_line_magic(magic, f"{name!r}" if name else "''")


# -- reusing a name --------------------------------------------------------------------------------


def test_a_finished_run_is_never_trained_over(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    cell = _cell(tiny_model, qa_jsonl)
    shell.run_cell_magic("sft_train", "--name done", cell)
    run_dir = tmp_path / "runs" / "done"
    before = _tree_digest(run_dir)
    with pytest.raises(
        UsageError,
        match=r"a run named 'done' already exists .*\(finished at step 2\): continue it with "
        r"--resume done, choose another --name, or pass --overwrite",
    ):
        shell.run_cell_magic("sft_train", "--name done", cell)
    assert _tree_digest(run_dir) == before
    # --overwrite removes the old run first, and says so: one history, not two.
    shell.run_cell_magic("sft_train", "--name done --overwrite", _cell(tiny_model, qa_jsonl, max_steps=3))
    assert "--overwrite: the existing run 'done'" in capsys.readouterr().out
    steps = [e["step"] for e in read_events(run_dir / "metrics.jsonl") if e["kind"] == "log" and "loss" in e]
    assert steps == [1, 2, 3]
    with pytest.raises(UsageError, match="choose one"):
        shell.run_line_magic("sft_train", "--resume done --overwrite")


def test_overwrite_never_removes_a_folder_that_is_not_a_run(shell, tiny_model, qa_jsonl, tmp_path):
    mine = tmp_path / "runs" / "photos"
    mine.mkdir(parents=True)
    (mine / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(UsageError, match=r"is not a run folder .*not removed"):
        shell.run_cell_magic("sft_train", "--name photos --overwrite", _cell(tiny_model, qa_jsonl))
    assert (mine / "cat.jpg").read_bytes() == b"\xff\xd8 not really"


def test_two_starts_under_one_name_the_first_wins(tmp_path):
    results, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            RunFolder.create(tmp_path / "runs", "same")
            results.append("won")
        except RunError as err:
            results.append(str(err))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1
    assert all("already exists" in r for r in results if r != "won")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["same"]  # no claim folders left


def test_background_then_foreground_under_one_name(shell, tiny_model, qa_jsonl, tmp_path):
    cell = _cell(tiny_model, qa_jsonl, max_steps=4)
    handle = shell.run_cell_magic("sft_train", "--background --name race -o h", cell)
    with pytest.raises(UsageError, match="a run named 'race' already exists"):
        shell.run_cell_magic("sft_train", "--name race", cell)  # asked second: refused
    record = handle.wait(timeout=120)
    assert record["status"] == "finished" and record["steps"] == 4
    steps = [e["step"] for e in read_events(handle.path / "metrics.jsonl") if e["kind"] == "log" and "loss" in e]
    assert steps == [1, 2, 3, 4]


# -- export --force ----------------------------------------------------------------------------------


def test_export_force_never_replaces_runs_sources_or_home(shell, tiny_model, qa_jsonl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shell.run_cell_magic("sft_train", "--name r1", _cell(tiny_model, qa_jsonl))
    shell.run_cell_magic("sft_train", "--name r2", _cell(tiny_model, qa_jsonl))
    runs = tmp_path / "runs"
    before = _tree_digest(tmp_path)
    for target, why in [
        (runs, "runs folder"),
        (runs / "r1" / "final", "lies inside"),
        (runs / "r2", "runs folder"),
        (tmp_path, "working directory"),
        (Path.home(), "home folder"),
        (Path(tiny_model), "loaded from it"),
    ]:
        with pytest.raises(UsageError, match=f"refusing to replace .*{why}") as info:
            shell.run_line_magic("sft_export", f"r1 --to {target} --force --merge")
        assert "\n" not in str(info.value)
    assert _tree_digest(tmp_path) == before
    # The way that works: a fresh folder; then --force replaces that export.
    shell.run_line_magic("sft_export", f"r1 --to {tmp_path / 'exports' / 'r1'} --merge")
    shell.run_line_magic("sft_export", f"r1 --to {tmp_path / 'exports' / 'r1'} --merge --force")
    assert (tmp_path / "exports" / "r1" / "model.safetensors").is_file()


def test_read_only_targets_are_one_line_errors(shell, tiny_model, qa_jsonl, tmp_path, tmpfs):
    ro = tmpfs("ro", readonly=True)
    shell.run_cell_magic("sft_train", "--name ok", _cell(tiny_model, qa_jsonl))
    with pytest.raises(UsageError, match=rf"^could not write the export to {ro}/x: Read-only file system$"):
        shell.run_line_magic("sft_export", f"ok --to {ro / 'x'} --merge")
    shell.run_line_magic("config", f"SftMagics.output_dir = {str(ro / 'runs')!r}")
    with pytest.raises(UsageError, match=rf"^output_dir {ro}/runs cannot be created: Read-only file system$"):
        shell.run_cell_magic("sft_train", "--name a", _cell(tiny_model, qa_jsonl))
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    shell.run_line_magic("config", f"SftMagics.output_dir = {str(afile)!r}")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        shell.run_cell_magic("sft_train", "--name a", _cell(tiny_model, qa_jsonl))
    assert afile.read_text() == "mine\n"


# -- secrets -----------------------------------------------------------------------------------------


def _assert_no_secret(root: Path, *secrets: str) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for s in secrets:
                assert s.encode() not in data, f"{s} leaked into {p}"


def test_secrets_reach_neither_disk_nor_screen(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    cell = (
        _cell(tiny_model, qa_jsonl, save_steps=1) + f"hub_token: {SECRET}\n# my token is {COMMENT_SECRET}\n"
        f"model_init_kwargs: {{token: {NESTED_SECRET}}}\neos_token: <|im_end|>\n"
    )
    summary = shell.run_cell_magic("sft_train", "--name s --dry-run -o plan", cell)
    assert (
        summary["config"]["hub_token"] == "<redacted>"
        and summary["config"]["model_init_kwargs"]["token"] == "<redacted>"
    )
    shell.run_cell_magic("sft_train", "--name s", cell)
    run_dir = tmp_path / "runs" / "s"
    assert (run_dir / "checkpoint-1" / "training_args.bin").is_file() and (
        run_dir / "final" / "training_args.bin"
    ).is_file()
    _assert_no_secret(run_dir, SECRET, COMMENT_SECRET, NESTED_SECRET)
    cell_txt = (run_dir / "cell.txt").read_text()
    assert (
        "hub_token: <redacted>" in cell_txt
        and "{token: <redacted>}" in cell_txt
        and "eos_token: <|im_end|>" in cell_txt
    )
    # training_args.bin still loads with plain trl, as a plain SFTConfig, the token redacted.
    import torch
    from trl import SFTConfig

    args = torch.load(run_dir / "final" / "training_args.bin", weights_only=False)
    assert type(args) is SFTConfig and args.hub_token == "<redacted>" and args.eos_token == "<|im_end|>"
    # A wrong type names the key without echoing the secret.
    with pytest.raises(UsageError, match=r"key 'hub_token' expects str or null, got <redacted> \(int\)"):
        shell.run_cell_magic("sft_train", "--name t", _cell(tiny_model, qa_jsonl, hub_token=123456789012345))
    out, err = capsys.readouterr()
    for s in (SECRET, COMMENT_SECRET, NESTED_SECRET, "123456789012345"):
        assert s not in out + err


def test_settings_named_like_tokens_are_kept_and_resume_trains_with_them(shell, tiny_model, qa_jsonl, tmp_path):
    cell = _cell(tiny_model, qa_jsonl, max_steps=4, save_steps=2) + "eos_token: <|im_end|>\npad_token: <|endoftext|>\n"
    shell.run_cell_magic("sft_train", "--name tok", cell)
    run_dir = tmp_path / "runs" / "tok"
    config = (run_dir / "config.yaml").read_text()
    assert "eos_token: <|im_end|>" in config and "pad_token: <|endoftext|>" in config and "redacted" not in config
    # Pretend a crash after step 2, then resume from config.yaml alone.
    import shutil

    shutil.rmtree(run_dir / "checkpoint-4")
    shutil.rmtree(run_dir / "final")
    (run_dir / "status.json").write_text(
        json.dumps({**read_json(run_dir / "status.json"), "state": "failed", "step": 3})
    )
    result = shell.run_line_magic("sft_train", "--resume tok -o again")
    assert result.status == "finished" and result.global_step == 4
    import torch

    args = torch.load(run_dir / "final" / "training_args.bin", weights_only=False)
    assert args.eos_token == "<|im_end|>" and args.pad_token == "<|endoftext|>"


# -- disk full ---------------------------------------------------------------------------------------


def test_a_full_disk_fails_in_one_line_and_leaves_the_truth(shell, tiny_model, qa_jsonl, tmp_path, tmpfs, monkeypatch):
    disk = tmpfs("disk", size="16m")
    shell.run_line_magic("config", f"SftMagics.output_dir = {str(disk / 'runs')!r}")
    from sft_magics.core.run import folder as runs

    # Fill the disk for real right after checkpoint-2 is whole, leaving room for status lines
    # only: the save of checkpoint-4 then hits ENOSPC half way.
    real_mark = runs.RunFolder.mark_whole

    def mark_then_fill(self, checkpoint):
        real_mark(self, checkpoint)
        if checkpoint.name == "checkpoint-2":
            _fill(disk, leave=48 * 1024)

    monkeypatch.setattr(runs.RunFolder, "mark_whole", mark_then_fill)
    cell = _cell(tiny_model, qa_jsonl, max_steps=8, save_steps=2)
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("sft_train", "--name full", cell)
    message = str(info.value)
    assert "\n" not in message and message.startswith("run 'full' failed: ")
    assert "the disk is full" in message
    run_dir = disk / "runs" / "full"
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and status["step"] == 4 and "No space left" in status["error"]
    # The half-written checkpoint is set aside, never offered for resume; checkpoint-2 is.
    assert not (run_dir / "checkpoint-4").exists() and list(run_dir.glob("broken-checkpoint-4-*"))
    folder = RunFolder.existing(disk / "runs", "full")
    assert folder.resumable_checkpoint() == (run_dir / "checkpoint-2", [])
    records = shell.run_line_magic("sft_runs", "-o rs")
    assert records[0]["status"] == "failed" and records[0]["pid"] is None


def test_status_is_written_even_on_a_completely_full_disk(tmp_path, tmpfs):
    disk = tmpfs("disk2", size="1m")
    folder = RunFolder.create(disk, "r")
    folder.update_status(state="training", step=5, pid=os.getpid())
    _fill(disk)
    with pytest.raises(OSError):
        folder.write_text("error.log", "x" * 100000)
    problems = folder.record_failure(
        "OSError: [Errno 28] No space left on device", "free space", step=5, traceback_text="Traceback ... " * 10000
    )
    folder.lock.release()
    status = read_json(folder.path / "status.json")
    assert status["state"] == "failed" and status["error"].startswith("OSError: [Errno 28]")
    assert any("error.log could not be written (No space left on device)" in p for p in problems)
    from sft_magics.core.run.lookup import run_record

    assert run_record(folder.path)["status"] == "failed"


def test_a_run_whose_process_is_gone_never_looks_live(tmp_path):
    folder = RunFolder.create(tmp_path / "runs", "ghost")
    folder.update_status(state="training", step=3, pid=os.getpid())  # this (live) process's pid
    from sft_magics.core.run.lookup import run_record

    assert run_record(folder.path)["status"] == "training"  # the lock is held: live
    folder.lock.release()  # what every exit path does, even on a full disk
    assert run_record(folder.path)["status"] == "stale"


# -- resume ------------------------------------------------------------------------------------------


def _stopped_run(shell, tiny_model, qa_jsonl, name, steps=6):
    """A run that trained 4 of 6 steps with checkpoints at 2 and 4, then crashed."""
    import shutil

    shell.run_cell_magic(
        "sft_train", f"--name {name}", _cell(tiny_model, qa_jsonl, max_steps=steps, save_steps=2, save_total_limit=3)
    )
    run_dir = Path(shell.config.SftMagics.output_dir) / name
    shutil.rmtree(run_dir / f"checkpoint-{steps}")
    shutil.rmtree(run_dir / "final")
    (run_dir / "status.json").write_text(
        json.dumps({**read_json(run_dir / "status.json"), "state": "failed", "step": 5})
    )
    return run_dir


def test_resume_refuses_what_it_cannot_continue_faithfully(shell, tiny_model, qa_jsonl, tmp_path):
    shell.run_cell_magic("sft_train", "--name fin", _cell(tiny_model, qa_jsonl))
    with pytest.raises(
        UsageError,
        match=r"run 'fin' finished at step 2/2: there is nothing to resume. To train longer, "
        r"resume with a larger max_steps",
    ):
        shell.run_line_magic("sft_train", "--resume fin")
    # Training longer (the trainer saves the last step): the same run, resumed with a larger max_steps.
    longer = shell.run_cell_magic("sft_train", "--resume fin -o longer", _cell(tiny_model, qa_jsonl, max_steps=4))
    assert longer.status == "finished" and longer.global_step == 4
    steps = [
        e["step"]
        for e in read_events(tmp_path / "runs" / "fin" / "metrics.jsonl")
        if e["kind"] == "log" and "loss" in e
    ]
    assert steps == [1, 2, 3, 4]

    run_dir = _stopped_run(shell, tiny_model, qa_jsonl, "noopt")
    # A checkpoint saved without optimizer state (e.g. by another tool, or with save_only_model).
    (run_dir / "checkpoint-4" / "optimizer.pt").unlink()
    (run_dir / "checkpoint-4" / CHECKPOINT_MARK).unlink()
    with pytest.raises(
        UsageError,
        match=r"not resuming run 'noopt': checkpoint-4 has no optimizer.pt: the optimizer and "
        r"learning-rate schedule would restart. Pass --resume-anyway",
    ):
        shell.run_line_magic("sft_train", "--resume noopt")
    assert read_json(run_dir / "status.json")["state"] == "failed"  # a refused resume changes nothing
    result = shell.run_line_magic("sft_train", "--resume noopt --resume-anyway -o r")
    assert result.status == "finished" and result.global_step == 6
    assert "has no optimizer.pt" in read_json(run_dir / "status.json")["resume_overrides"][0]
    started = [e for e in read_events(run_dir / "metrics.jsonl") if e["kind"] == "started"][-1]
    assert started["resume_overrides"] and started["resumed_from"].endswith("checkpoint-4")


def test_resume_refuses_changed_data(shell, tiny_model, qa_jsonl, tmp_path):
    run_dir = _stopped_run(shell, tiny_model, qa_jsonl, "data")
    with open(qa_jsonl, "a") as f:
        f.write(
            json.dumps({"messages": [{"role": "user", "content": "new"}, {"role": "assistant", "content": "row"}]})
            + "\n"
        )
    with pytest.raises(
        UsageError, match=r"the training data changed since the run started \(24 rows, fingerprint \w+ → 25 rows"
    ):
        shell.run_line_magic("sft_train", "--resume data")
    assert not list(run_dir.glob("broken-*"))


def test_a_truncated_checkpoint_falls_back_to_the_previous_whole_one(shell, tiny_model, qa_jsonl, tmp_path, capsys):
    run_dir = _stopped_run(shell, tiny_model, qa_jsonl, "trunc")
    weights = run_dir / "checkpoint-4" / "adapter_model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    events = []
    from sft_magics.core.train.config import TrainSpec
    from sft_magics.core.train.trainer import train

    spec = TrainSpec.from_mapping("trunc", json_config(tiny_model, qa_jsonl), output_dir=str(tmp_path / "runs"))
    result = train(spec, resume=True, sink=events.append)
    assert result.status == "finished" and result.global_step == 6
    notes = next(e for e in events if e.kind == "status" and e.data.get("notes")).data["notes"]
    assert notes[0].startswith("checkpoint-4 is not whole (adapter_model.safetensors is truncated")
    assert notes[1] == "resuming from the previous whole checkpoint, checkpoint-2"
    started = next(e for e in events if e.kind == "started")
    assert started.data["resumed_from"].endswith("checkpoint-2")
    assert list(run_dir.glob("broken-checkpoint-4-*"))  # kept for inspection, out of the way


def json_config(tiny_model, data) -> dict:
    return {
        "model": tiny_model,
        "dataset": data,
        "max_steps": 6,
        "per_device_train_batch_size": 4,
        "save_steps": 2,
        "save_total_limit": 3,
    }


# -- kill -9 during checkpoint saves -------------------------------------------------------------------


def _kill_during_a_save(run_dir: Path, after: int, when: str | None, timeout: float = 120) -> str:
    """Wait for a checkpoint newer than ``after`` to appear (and, with ``when``, that file inside
    it), and SIGKILL the worker while the checkpoint is written (before it is marked whole).
    Returns what the folder held at the kill."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        worker = read_json(run_dir / "supervisor.json").get("worker_pid")
        for ckpt in run_dir.glob("checkpoint-*"):
            tail = ckpt.name.split("-")[-1]
            if (
                worker
                and tail.isdigit()
                and int(tail) > after
                and not (ckpt / CHECKPOINT_MARK).exists()
                and (when is None or (ckpt / when).exists())
            ):
                os.kill(int(worker), signal.SIGKILL)
                return f"{ckpt.name}: {sorted(p.name for p in ckpt.iterdir()) if ckpt.exists() else 'gone'}"
        time.sleep(0.001)
    raise AssertionError(f"no checkpoint after {after} appeared: {read_json(run_dir / 'status.json')}")


def test_kill_9_during_checkpoint_saves_always_leaves_a_resumable_run(shell, tiny_model, qa_jsonl, tmp_path):
    from sft_magics.core.train.worker import wait_for

    cell = _cell(tiny_model, qa_jsonl, max_steps=40, save_steps=1, save_total_limit=2) + f"hub_token: {SECRET}\n"
    run_dir = tmp_path / "runs" / "k9"
    seen, resumed_from = [], 0
    # Four moments of a save: the folder just made, the weights written, the optimizer state
    # written, the trainer state written (the last file) but not yet marked whole.
    for round_, when in enumerate([None, "adapter_model.safetensors", "optimizer.pt", "trainer_state.json"]):
        if round_ == 0:
            shell.run_cell_magic("sft_train", "--background --name k9", cell)
        else:
            shell.run_line_magic("sft_train", "--resume k9 --background")
        seen.append(_kill_during_a_save(run_dir, after=resumed_from + 2, when=when))
        record = wait_for(run_dir, timeout=60)
        status = read_json(run_dir / "status.json")
        assert record["status"] == "failed" and status["state"] == "failed", seen
        assert status["error"].startswith("the worker was killed by SIGKILL"), status
        with pytest.raises(UsageError, match=r"run 'k9' failed at step \d+: the worker was killed by SIGKILL"):
            shell.run_line_magic("sft_wait", "k9")
        ckpt, _ = RunFolder.existing(tmp_path / "runs", "k9").resumable_checkpoint()
        assert ckpt is not None, seen
        assert RunFolder.checkpoint_problem(ckpt) is None
        resumed_from = int(ckpt.name.split("-")[-1])
    # The last one resumes to the end, in the kernel.
    result = shell.run_line_magic("sft_train", "--resume k9 -o done")
    assert result.status == "finished" and result.global_step == 40
    _assert_no_secret(run_dir, SECRET)  # spec.json, cell.txt, checkpoints: the token never hit the disk


# -- bounded templates ---------------------------------------------------------------------------------


def test_hostile_templates_are_bounded_one_line_errors(shell, tiny_model, qa_jsonl, monkeypatch):
    from sft_magics.core.template import render

    # The case, under the default bound (10 s): far too much text, refused by size.
    shell.user_ns["huge"] = "{{ 'a' * 100000000 }}"
    with pytest.raises(
        UsageError, match=r"^row 0: the chat template produced 100,000,000 characters \(the limit is 4,000,000\)"
    ):
        shell.run_line_magic("sft_template", f"{tiny_model} --data {qa_jsonl} --chat-template huge")
    monkeypatch.setattr(render, "RENDER_SECONDS", 1.0)
    cases = {
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}": r"the chat template ran for more than 1 s and was stopped",
        "{% include 'x.jinja' %}": r"the chat template failed: TypeError: no loader for this environment specified",
        "{% for i in range(10**9) %}{% endfor %}": r"the chat template failed: OverflowError: Range too big",
        "{{ 1/0 }}": r"the chat template failed: ZeroDivisionError",
        "{{ ''.__class__.__mro__ }}": r"the chat template was refused by the sandbox|the chat template failed",
    }
    for i, (text, message) in enumerate(cases.items()):
        shell.user_ns[f"t{i}"] = text
        started = time.time()
        # A template that loops is caught by the probe render before any row (issue 23); the others by row 0.
        with pytest.raises(
            UsageError, match=rf"^(row 0|a probe conversation \(system, user, assistant, two turns\)): ({message})"
        ) as info:
            shell.run_line_magic("sft_template", f"{tiny_model} --data {qa_jsonl} --chat-template t{i}")
        assert "\n" not in str(info.value) and time.time() - started < 15
    # The watchdog left no pending interrupt behind: the next render works.
    shell.run_line_magic("sft_template", f"{tiny_model} --data {qa_jsonl}")


# -- one-line errors before the model loads -------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ("lora: {r: -1}", r"key 'lora.r' must be a whole number of at least 1 \(the adapter rank\), got -1"),
        ("lora: {lora_dropout: 1.5}", r"key 'lora.lora_dropout' must be a fraction in \[0, 1\), got 1.5"),
        (
            "per_device_train_batch_size: 0",
            r"key 'per_device_train_batch_size' must be a whole number of at least 1, got 0",
        ),
        ("max_length: 0", r"key 'max_length' must be a whole number of at least 1, got 0"),
        ("learning_rate: -0.1", r"key 'learning_rate' must be above 0, got -0.1"),
        (
            "max_steps: 0",
            r"key 'max_steps' must be a positive number of steps \(or -1: train num_train_epochs\), got 0",
        ),
    ],
)
@pytest.mark.parametrize("dry", ["", "--dry-run"])
def test_range_mistakes_are_one_line_and_leave_no_folder(shell, tiny_model, qa_jsonl, tmp_path, extra, message, dry):
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\n{'' if 'max_steps' in extra else 'max_steps: 2'}\n{extra}\n"
    with pytest.raises(UsageError, match=f"^{message}$"):
        shell.run_cell_magic("sft_train", f"--name bad {dry}", cell)
    assert not (tmp_path / "runs" / "bad").exists()


def test_yaml_float_strings_are_numbers(shell, tiny_model, qa_jsonl):
    plan = shell.run_cell_magic(
        "sft_train",
        "--name lr --dry-run -o p",
        _cell(tiny_model, qa_jsonl) + "learning_rate: 1e-3\nlora: {lora_dropout: 5e-2}\n",
    )
    assert plan["config"]["learning_rate"] == 0.001 and plan["config"]["lora"]["lora_dropout"] == 0.05


def test_a_model_that_needs_remote_code_is_one_line(shell, tiny_model, tmp_path):
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(tiny_model, remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(
        model_type="xmodel",
        auto_map={"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"},
    )
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"contains its own Python code \(custom code\), and trust_remote_code is off"):
        shell.run_line_magic("sft_chat", f"{remote} --message hi")


def test_a_failed_run_is_named_as_failed_not_as_a_hub_problem(shell, tiny_model, qa_jsonl, tmp_path, monkeypatch):
    from trl import SFTTrainer

    def failing_step(self, *a, **k):
        raise RuntimeError("boom at step")

    monkeypatch.setattr(SFTTrainer, "training_step", failing_step)
    with pytest.raises(UsageError, match="run 'f' failed: RuntimeError: boom at step"):
        shell.run_cell_magic("sft_train", "--name f", _cell(tiny_model, qa_jsonl))
    monkeypatch.undo()
    for magic, rest in (
        ("sft_eval", f"f --data {qa_jsonl}"),
        ("sft_chat", "f --message hi"),
        ("sft_export", f"f --to {tmp_path / 'e'}"),
    ):
        with pytest.raises(
            UsageError,
            match=r"^run 'f' has no final/ folder, so no model to use \(failed at step 0: "
            r"RuntimeError: boom at step\)",
        ):
            shell.run_line_magic(magic, rest)


def test_a_fresh_run_that_fails_to_load_leaves_no_folder(shell, qa_jsonl, tmp_path):
    with pytest.raises(UsageError, match="model folder not found"):
        shell.run_cell_magic("sft_train", "--name typo", f"model: ./no-such-model\ndataset: {qa_jsonl}\n")
    assert not (tmp_path / "runs" / "typo").exists()  # so the fixed cell can use the name at once


# -- found in review -------------------------------------------------------------------------------------


def test_a_home_relative_output_dir_is_the_home_folder(tmp_path):
    from sft_magics.core.train.config import TrainSpec

    spec = TrainSpec.from_mapping("r", {"dataset": "x.jsonl"}, output_dir="~/runs-of-mine")
    assert spec.output_dir == str(Path.home() / "runs-of-mine") and "~" not in str(spec.run_dir)


def test_a_failure_while_saving_the_final_model_is_one_line_and_recorded(
    shell, tiny_model, qa_jsonl, tmp_path, monkeypatch
):
    from sft_magics.core.run import folder as runs

    def full_disk(self, partial):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.RunFolder, "publish_final", full_disk)
    with pytest.raises(
        UsageError, match=r"^run 'fin' failed: OSError: \[Errno 28\] No space left on device — the disk is full"
    ):
        shell.run_cell_magic("sft_train", "--name fin", _cell(tiny_model, qa_jsonl))
    status = read_json(tmp_path / "runs" / "fin" / "status.json")
    assert status["state"] == "failed" and status["step"] == 2 and not (tmp_path / "runs" / "fin" / "final").exists()


def test_secrets_inside_lists_are_split_out_too():
    from sft_magics.core.secrets import merge_secrets, split_secrets

    config = {"callbacks": [{"name": "a", "token": "s3cret"}], "eos_token": "<|im_end|>"}
    clean, secrets = split_secrets(config)
    assert clean == {"callbacks": [{"name": "a"}], "eos_token": "<|im_end|>"}
    assert merge_secrets(clean, secrets) == config


def test_following_a_run_whose_processes_are_gone_ends(tmp_path):
    from sft_magics.core.train.worker import follow

    folder = RunFolder.create(tmp_path / "runs", "ghost")
    folder.update_status(state="training", step=3)
    folder.append_event({"kind": "log", "time": 1.0, "step": 3, "loss": 1.0})
    folder.lock.release()  # its process died without a final status
    seen = []
    started = time.monotonic()
    follow(folder.path, seen.append, poll=0.05)
    assert [e.kind for e in seen] == ["log"] and time.monotonic() - started < 5


def test_a_background_run_takes_your_columns_and_a_template_variable(shell, tiny_model, tmp_path):
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\n" + "".join(f"What is {i} plus {i}?,{2 * i}\n" for i in range(12)))
    shell.user_ns["my_template"] = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    cell = (
        f"model: {tiny_model}\ndataset: {{path: {data}, columns: {{user: question, assistant: answer}}}}\n"
        "chat_template: my_template\nmax_steps: 2\nper_device_train_batch_size: 4\n"
    )
    handle = shell.run_cell_magic("sft_train", "--background --name bgcols -o h", cell)
    record = handle.wait(timeout=120)
    assert record["status"] == "finished", read_json(handle.path / "status.json")
    assert (handle.path / "final" / "chat_template.jinja").read_text() == shell.user_ns["my_template"]
