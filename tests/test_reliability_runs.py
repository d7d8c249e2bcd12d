"""Issue 4, runs: atomic writes, checksummed checkpoints, interruption (SIGINT / SIGTERM / SIGKILL, in-process and
in real subprocesses) with bit-exact resume on CPU, one run per directory, and NaN/Inf losses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finessl_lab import io
from finessl_lab.cli import main
from finessl_lab.errors import Stopped, UserError
from finessl_lab.hooks import Hook
from finessl_lab.presets import resolve
from finessl_lab.trainer import Interrupted, NonFiniteLoss, Trainer, _catch_signals, train


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """These tests send SIGINT to the test process and expect Python's KeyboardInterrupt handler. A job started in
    the background of a non-interactive shell (nohup, `cmd &` in a script) inherits SIGINT ignored, which the
    trainer rightly leaves ignored; here the test process gets the terminal's handler for the test's duration."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)

SMALL = ["data.subsample_per_class=20", "run.epochs=3", "run.steps_per_epoch=10", "run.progress=false",
         "data.num_workers=0"]
RESUMABLE = SMALL + ["algorithm.name=finessl", "run.checkpoint_every=5"]


def small_cfg(*extra):
    return resolve("embedded", sets=SMALL + list(extra))


def stale_temps(d: Path) -> list[str]:
    return sorted(p.name for p in Path(d).iterdir() if p.name.endswith(".tmp"))


def assert_same_run(got: Path, ref: Path):
    """Bit-identical outcome: metrics table, summary accuracy, and every tensor of the final checkpoint."""
    pd.testing.assert_frame_equal(pd.read_csv(got / "metrics.csv"), pd.read_csv(ref / "metrics.csv"), check_exact=True)
    s_got, s_ref = (json.loads((d / "summary.json").read_text()) for d in (got, ref))
    assert s_got["test_top1"] == s_ref["test_top1"] and s_got["steps"] == s_ref["steps"]
    a, b = io.load_checkpoint(got / "checkpoint.pt"), io.load_checkpoint(ref / "checkpoint.pt")
    assert a["step"] == b["step"]
    for part in ("model", "algorithm"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), part
    mom_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    mom_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(mom_a, mom_b)) and len(mom_a) == len(mom_b)


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k2: v2 for k, v in tree.items() for k2, v2 in _tensors(v, f"{prefix}.{k}").items()}
    return {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 30-step FineSSL run with a checkpoint every 5 steps."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(resolve("embedded", sets=RESUMABLE), run)
    return run


# -- atomic writes --------------------------------------------------------------------------------------------------
def test_a_failing_writer_keeps_the_old_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.csv"
    io.write_text(target, "old\n")

    def half_then_fail(f):
        f.write("new, half-writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


KILL_MID_WRITE = """
import os, signal, sys
from finessl_lab import io
def half_then_die(f):
    f.write(b"FINESSL-LAB-CKPT v2\\n" + b"0" * 1000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
io.atomic_write(sys.argv[1], half_then_die, binary=True)
"""


def test_sigkill_in_the_middle_of_a_write_leaves_the_old_checkpoint_intact(tmp_path):
    target = tmp_path / "checkpoint.pt"
    io.save_checkpoint(target, {"step": 5})
    res = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(target)], capture_output=True, timeout=60)
    assert res.returncode == -signal.SIGKILL
    assert io.load_checkpoint(target) == {"step": 5}  # the old one, whole
    left = stale_temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".checkpoint.pt.")  # the killed writer's hidden temp file
    assert [p.name for p in io.remove_stale_temps(tmp_path, ["checkpoint.pt"])] == left
    assert stale_temps(tmp_path) == [] and io.load_checkpoint(target) == {"step": 5}


def test_every_output_of_a_run_is_written_atomically(tmp_path, monkeypatch):
    written = []
    real = io.atomic_write

    def recording(path, write, binary=False):
        written.append(Path(path).name)
        return real(path, write, binary)

    monkeypatch.setattr(io, "atomic_write", recording)
    train(small_cfg(), tmp_path / "run")
    assert {"config.yaml", "checkpoint.pt", "metrics.csv", "summary.json"} <= set(written)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.csv",
                                                                     "summary.json"]


class _TinyBackbone(torch.nn.Module):
    identity = "tiny-test-backbone"

    def forward(self, x):
        return x.flatten(1)[:, :4]


def _tiny_images(key: str):
    """(bundle, transforms, load_or_compute keywords) of six 4x4 images: a feature cache built in milliseconds."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((4, 4, 3), i * 20, np.uint8)) for i in range(6)]
    split = SimpleNamespace(images=images)
    bundle = SimpleNamespace(key=key, train=split, test=split)
    to_tensor = lambda img: torch.as_tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1)  # noqa: E731
    transforms = SimpleNamespace(test=to_tensor, weak=to_tensor, strong=to_tensor)
    return bundle, transforms, dict(views=1, seed=0, device="cpu", batch_size=4, num_workers=0, progress=False)


def test_feature_cache_is_atomic_checksummed_and_a_damaged_entry_is_recomputed(tmp_path, capsys):
    from finessl_lab.data.features import load_or_compute

    bundle, transforms, kw = _tiny_images("tiny")
    feats, path = load_or_compute(tmp_path, _TinyBackbone(), bundle, transforms, {"t": 1}, **kw)
    assert stale_temps(path.parent) == [] and io.load_checkpoint(path)["meta"]["key"] == path.stem
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x55
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    again, path2 = load_or_compute(tmp_path, _TinyBackbone(), bundle, transforms, {"t": 1}, **kw)
    err = capsys.readouterr().err
    assert path2 == path and f"warning: feature cache {path} is unusable" in err and "SHA-256 mismatch" in err
    assert all(torch.equal(feats[k], again[k]) for k in feats)
    io.load_checkpoint(path)  # intact again


def test_a_feature_cache_file_is_read_once_per_process_until_it_changes(tmp_path, monkeypatch):
    """Many runs in one notebook kernel share one read of the cache file; a rewritten file is read again."""
    import os

    from finessl_lab.data import features

    bundle, transforms, kw = _tiny_images("tiny-once")
    computed, path = features.load_or_compute(tmp_path, _TinyBackbone(), bundle, transforms, {"t": 2}, **kw)
    reads = []
    real = features.load_checkpoint
    monkeypatch.setattr(features, "load_checkpoint", lambda p: reads.append(p) or real(p))
    first, _ = features.load_or_compute(tmp_path, _TinyBackbone(), bundle, transforms, {"t": 2}, **kw)
    second, _ = features.load_or_compute(tmp_path, _TinyBackbone(), bundle, transforms, {"t": 2}, **kw)
    assert len(reads) == 1 and second is first and all(torch.equal(first[k], computed[k]) for k in computed)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the file was rewritten since
    third, _ = features.load_or_compute(tmp_path, _TinyBackbone(), bundle, transforms, {"t": 2}, **kw)
    assert len(reads) == 2 and third is not first and all(torch.equal(third[k], computed[k]) for k in computed)
    features.forget_loaded()  # what reproduce's parent does after building the caches
    features.load_or_compute(tmp_path, _TinyBackbone(), bundle, transforms, {"t": 2}, **kw)
    assert len(reads) == 3


def test_figures_are_saved_atomically(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    io.save_figure(fig, tmp_path / "curve.png")
    plt.close(fig)
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG") and stale_temps(tmp_path) == []


# -- checkpoint checksum -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "c.pt"
    io.save_checkpoint(path, {"w": torch.arange(64, dtype=torch.float32), "step": 7})
    return path.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncation_or_flipped_byte_is_refused(ckpt_bytes, tmp_path, data):
    path = tmp_path / "c.pt"
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(ckpt_bytes) - 1), label="keep bytes")
        path.write_bytes(ckpt_bytes[:cut])
    else:
        pos = data.draw(st.integers(0, len(ckpt_bytes) - 1), label="position")
        raw = bytearray(ckpt_bytes)
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
        path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as info:
        io.load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_checkpoint_round_trip_and_the_old_v1_format(tmp_path, ckpt_bytes):
    path = tmp_path / "c.pt"
    path.write_bytes(ckpt_bytes)
    assert io.load_checkpoint(path)["step"] == 7
    header = ckpt_bytes.split(b"\n", 2)
    assert header[0] == b"FINESSL-LAB-CKPT v2" and int(header[1].split(b" ")[1]) == len(header[2])
    import hashlib

    payload = io.torch_save_bytes({"step": 3})
    path.write_bytes(b"FINESSL-LAB-CKPT v1\n" + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    assert io.load_checkpoint(path) == {"step": 3}


# -- interruption, in-process (any step) -------------------------------------------------------------------------
class Trigger(Hook):
    """At step ``at``: raise a signal at this process (handled by the trainer) or crash."""
    name = "trigger"

    def __init__(self, at: int, how: str):
        self.at, self.how = at, how

    def on_step(self, record):
        if record.step == self.at:
            if self.how == "crash":
                raise RuntimeError("simulated crash")
            signal.raise_signal(getattr(signal, self.how))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at=st.integers(0, 29), how=st.sampled_from(["SIGINT", "SIGTERM", "crash"]))
def test_stopped_at_any_step_then_resumed_matches_the_uninterrupted_run(reference, tmp_path_factory, at, how):
    run = tmp_path_factory.mktemp("stopped") / "run"
    cfg = resolve("embedded", sets=RESUMABLE)
    trainer = Trainer(cfg, run, hooks=[Trigger(at, how)])
    if how == "crash":
        with pytest.raises(RuntimeError, match="simulated crash"):
            trainer.fit()
        saved = (at // 5) * 5  # lost the steps since the last checkpoint
    else:
        with pytest.raises(Interrupted) as info:
            trainer.fit()
        saved = at + 1  # the current step finished, then a checkpoint
        e = info.value
        assert isinstance(e, KeyboardInterrupt) and not isinstance(e, Exception)  # `except Exception` can't eat it
        assert e.step == saved and e.exit_code == 128 + getattr(signal, how)
        assert str(e).startswith(f"stopped by {how} after step {saved} of 30; checkpoint saved to {run / 'checkpoint.pt'}")
    if saved == 0:
        assert not (run / "checkpoint.pt").exists()
        return
    assert io.load_checkpoint(run / "checkpoint.pt")["step"] == saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    train(cfg, run, resume=True)
    assert_same_run(run, reference)


def test_cli_resume_uses_the_checkpoint_config_when_config_yaml_is_gone(reference, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        Trainer(resolve("embedded", sets=RESUMABLE), run, hooks=[Trigger(7, "SIGTERM")]).fit()
    (run / "config.yaml").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_run(run, reference)


def test_a_second_signal_stops_at_once():
    flag: dict = {}
    with _catch_signals(flag, lambda: "; last checkpoint: X"):
        signal.raise_signal(signal.SIGTERM)
        assert flag == {"signal": signal.SIGTERM}
        with pytest.raises(Interrupted, match="SIGTERM received again while stopping; stopped at once, without a new "
                                              "checkpoint; last checkpoint: X") as info:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(1)  # the handler runs before this returns
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_the_parent_ignored_stays_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _catch_signals({}):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, old)


# -- interruption, real processes ----------------------------------------------------------------------------------
KILL_SETS = ["data.subsample_per_class=20", "run.epochs=4", "run.steps_per_epoch=50", "data.num_workers=0",
             "run.checkpoint_every=10"]
KILL_TOTAL, KILL_EVERY = 200, 10


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("finessl-lab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "finessl_lab"]


def _default_sigint():  # a foreground process gets Python's KeyboardInterrupt handler, even if pytest runs in background
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_real_processes_killed_mid_run_resume_bit_exact(reference, tmp_path):
    """SIGKILL / SIGTERM / SIGINT sent to real `finessl-lab train` processes once their first checkpoint exists;
    each run resumed with `--resume` ends bit-identical to an uninterrupted run. (The `reference` fixture has
    already filled the feature cache the children read.)"""
    launch = {"SIGKILL": [sys.executable, "-m", "finessl_lab"], "SIGTERM": _console_script(),
              "SIGINT": [sys.executable, "-m", "finessl_lab"]}
    procs = {}
    for name, exe in launch.items():
        out = tmp_path / name
        cmd = exe + ["train", "--preset", "embedded", "--algorithm", "finessl", "--out", str(out), "--no-progress"]
        procs[name] = (out, subprocess.Popen(cmd + sum([["--set", s] for s in KILL_SETS], []), env=dict(os.environ),
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                             preexec_fn=_default_sigint))
    pending, deadline = set(procs), time.monotonic() + 240
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            out, p = procs[name]
            if (out / "checkpoint.pt").exists() or p.poll() is not None:
                p.send_signal(getattr(signal, name))
                pending.discard(name)
        time.sleep(0.002)
    # the uninterrupted reference only now: trained alongside, it let a busy machine's children finish unkilled
    ref = tmp_path / "ref"
    train(resolve("embedded", sets=KILL_SETS + ["algorithm.name=finessl", "run.progress=false"]), ref)
    report = {}
    for name, (out, p) in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        step = io.load_checkpoint(out / "checkpoint.pt")["step"]
        assert not (out / "summary.json").exists() and stale_temps(out) == []
        if name == "SIGKILL":
            assert p.returncode == -signal.SIGKILL, stderr
            assert step >= KILL_EVERY and step % KILL_EVERY == 0  # the last periodic checkpoint
        else:
            assert p.returncode == 128 + getattr(signal, name), stderr
            assert stderr.strip().splitlines()[-1] == (
                f"interrupted: {name} after step {step} of {KILL_TOTAL}; checkpoint saved to {out / 'checkpoint.pt'}; "
                f"continue with: finessl-lab train --resume {out}")
            assert KILL_EVERY <= step < KILL_TOTAL  # saved at the step it stopped at, after the first checkpoint
        report[name] = step
        assert main(["train", "--resume", str(out), "--no-progress"]) == 0
        assert_same_run(out, ref)
    print(f"\nkill/resume: checkpoint step at stop {report}; all resumed runs bit-identical to the reference")


# -- one run per directory, --overwrite ------------------------------------------------------------------------------
def test_a_run_directory_in_use_is_refused(reference, tmp_path):
    run = tmp_path / "run"
    train(small_cfg(), run)
    with io.dir_lock(run):  # as another process training there would hold it
        with pytest.raises(UserError, match=f"run directory '{run}' is in use by another finessl-lab process"):
            train(small_cfg(), run, resume=True)
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2


def test_an_unwritable_or_blocked_out_dir_is_refused_before_training(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=f"out_dir '{tmp_path / 'file' / 'run'}' cannot be created: "
                                        f"'{tmp_path / 'file'}' is a file"):
        Trainer(small_cfg(), tmp_path / "file" / "run")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    with pytest.raises(UserError, match=f"out_dir '{tmp_path / 'a' / 'b'}' is not writable \\(permission denied on "
                                        f"'{tmp_path}'\\); valid: a directory you can write to"):
        train(small_cfg(), tmp_path / "a" / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_overwrite_replaces_the_old_run_and_resume_clears_stale_temp_files(tmp_path):
    run = tmp_path / "run"
    train(small_cfg("run.epochs=2"), run)
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"left by a killed writer")
    summary, _ = train(small_cfg("algorithm.name=fixmatch"), run, overwrite=True)
    assert summary["steps"] == 30 and json.loads((run / "summary.json").read_text())["algorithm"] == "fixmatch"
    assert stale_temps(run) == []
    (run / ".metrics.csv.xyz.tmp").write_text("junk")
    train(small_cfg("algorithm.name=fixmatch"), run, resume=True)
    assert stale_temps(run) == []


def test_an_interrupted_comparison_resumes_reuses_finished_runs_and_overwrite_redoes_them(tmp_path):
    from finessl_lab.compare import compare

    cfg = small_cfg("run.checkpoint_every=5")
    half = tmp_path / "cmp" / "fixmatch" / "seed1"
    stopped = small_cfg("run.checkpoint_every=5", "algorithm.name=fixmatch")
    with pytest.raises(Interrupted):
        Trainer(stopped, half, hooks=[Trigger(11, "SIGINT")]).fit()
    table = compare(cfg, ["supervised", "fixmatch"], [1], tmp_path / "cmp")
    assert list(table["algorithm"]) == ["supervised", "fixmatch"] and (table["runs"] == 1).all()
    straight, _ = train(stopped, tmp_path / "straight")
    results = pd.read_csv(tmp_path / "cmp" / "results.csv")
    assert results.set_index("algorithm").loc["fixmatch", "test_top1"] == straight["test_top1"]  # resumed exactly
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cmp").rglob("checkpoint.pt")}
    compare(cfg, ["supervised", "fixmatch"], [1], tmp_path / "cmp")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished runs reused, not retrained
    compare(cfg, ["supervised"], [1], tmp_path / "cmp", overwrite=True)
    sup = tmp_path / "cmp" / "supervised" / "seed1" / "checkpoint.pt"
    assert sup.stat().st_mtime_ns != stamps[sup]


def _wait_until_catching(pid: int, sig: int, timeout: float = 60.0) -> None:
    """Poll /proc/PID/status until the process has a handler for ``sig`` (no guessing with sleeps)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("needs /proc to see when the handler is installed")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        caught = next((int(ln.split()[1], 16) for ln in status.read_text().splitlines() if ln.startswith("SigCgt:")), 0)
        if caught >> (sig - 1) & 1:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never installed a handler for signal {sig}")


def test_sigterm_outside_the_training_loop_exits_143_with_one_line(tmp_path):
    p = subprocess.Popen(_console_script() + ["train", "--preset", "embedded", "--out", str(tmp_path / "o"),
                                              "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    _wait_until_catching(p.pid, signal.SIGTERM)  # the CLI's handler is in place; the trainer is minutes away
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143
    assert err.strip().splitlines()[-1].startswith("interrupted: stopped by SIGTERM outside the training loop")
    assert not (tmp_path / "o").exists()


# -- numerical faults ------------------------------------------------------------------------------------------------
def inject(trainer: Trainer, bad: dict[int, float]):
    """Make the loss NaN/Inf at the given (0-based) steps."""
    step = trainer.algorithm.step

    def wrapped(*a, **k):
        out = step(*a, **k)
        if trainer.step in bad:
            out.loss = out.loss * bad[trainer.step]
        return out

    trainer.algorithm.step = wrapped
    return trainer


def test_a_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    cfg = resolve("embedded", sets=RESUMABLE)
    trainer = inject(Trainer(cfg, run), {17: float("nan")})
    with pytest.raises(NonFiniteLoss) as info:
        trainer.fit()
    assert str(info.value).startswith(f"loss is nan at step 18 of 30; training stopped; last good checkpoint: "
                                      f"{run / 'checkpoint.pt'} (after step 15); continue from it with --resume {run} "
                                      "--set run.nan_policy=skip")
    ckpt = io.load_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 15 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert not (run / "summary.json").exists() and trainer.step == 20  # seen at the next log read (checkpoint_every=5)
    cfg.run.nan_policy = "skip"  # allowed on resume: it changes nothing before the fault
    resumed = inject(Trainer(cfg, run, resume=True), {17: float("nan")})
    summary = resumed.fit()
    assert summary["steps"] == 30 and summary["skipped_steps"] == 1


def test_skip_policy_skips_and_counts_nan_and_inf_steps(tmp_path):
    trainer = inject(Trainer(small_cfg("algorithm.name=finessl", "run.nan_policy=skip"), tmp_path / "run"),
                     {3: float("nan"), 7: float("inf"), 25: float("-inf")})
    summary = trainer.fit()
    assert summary["skipped_steps"] == 3 and summary["steps"] == 30
    assert trainer.metrics()["skipped_steps"].tolist() == [2, 2, 3]
    assert all(torch.isfinite(p).all() for p in trainer.exp.model.trainable_parameters())


def test_cli_nan_loss_exits_2_with_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "embedded", "--out", str(run), "--no-progress"] + sum(
        [["--set", s] for s in SMALL + ["run.checkpoint_every=1", "optim.lr=1e6",
                                        "model.scale_param=log"]], [])  # exp(log s) overflows at step 2
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(
        f"error: loss is nan at step 2 of 30; training stopped; last good checkpoint: {run / 'checkpoint.pt'} "
        f"(after step 1); continue from it with --resume {run} --set run.nan_policy=skip")
    assert main(["train", "--resume", str(run), "--set", "run.nan_policy=skip", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "step(s) with a NaN/Inf loss were skipped" in out


def test_interrupted_is_a_stop_not_an_error():
    assert issubclass(Interrupted, Stopped) and issubclass(Interrupted, KeyboardInterrupt)
    assert not issubclass(Interrupted, Exception)


# -- slow: SIGKILL at exact steps, and in the middle of a checkpoint write ----------------------------------------------
SELF_KILL = """
import os, signal, sys
from finessl_lab import io
from finessl_lab.hooks import Hook
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer

at, mode, out, sets = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]

class Kill(Hook):
    name = "kill"
    def on_step(self, record):  # step `at` computed and applied, not yet counted or saved
        if mode == "step" and record.step == at:
            os.kill(os.getpid(), signal.SIGKILL)

real_save = io.save_checkpoint
def save(path, obj):  # die half-way through writing the checkpoint of step `at`
    if mode == "write" and obj["step"] == at:
        payload = io.torch_save_bytes(obj)
        def half(f):
            f.write(payload[: len(payload) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        io.atomic_write(path, half, binary=True)
    return real_save(path, obj)
io.save_checkpoint = save
Trainer(resolve("embedded", sets=sets), out, hooks=[Kill()]).fit()
"""
KILL_POINTS = [("step", 0), ("step", 9), ("step", 10), ("step", 55), ("step", 149), ("step", 150), ("step", 199),
               ("write", 60), ("write", 100)]


@pytest.mark.slow
def test_sigkill_at_exact_steps_loses_only_the_steps_since_the_last_checkpoint(reference, tmp_path, capsys):
    sets_ = KILL_SETS + ["algorithm.name=finessl", "run.progress=false"]
    ref = tmp_path / "ref"
    train(resolve("embedded", sets=sets_), ref)
    procs = {}
    for mode, at in KILL_POINTS:
        out = tmp_path / f"{mode}{at}"
        procs[(mode, at)] = (out, subprocess.Popen([sys.executable, "-c", SELF_KILL, str(at), mode, str(out), *sets_],
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    rows = []
    for (mode, at), (out, p) in procs.items():
        p.communicate(timeout=600)
        assert p.returncode == -signal.SIGKILL
        expected = (at // KILL_EVERY) * KILL_EVERY if mode == "step" else at - KILL_EVERY
        if expected == 0:
            assert not (out / "checkpoint.pt").exists()
            capsys.readouterr()
            assert main(["train", "--resume", str(out)]) == 2
            assert "stopped before its first checkpoint" in capsys.readouterr().err
            assert main(["train", "--preset", "embedded", "--algorithm", "finessl", "--out", str(out), "--overwrite",
                         "--no-progress"] + sum([["--set", s] for s in KILL_SETS], [])) == 0
        else:
            assert io.load_checkpoint(out / "checkpoint.pt")["step"] == expected
            assert (mode == "write") == bool(stale_temps(out))  # a killed writer leaves only a hidden temp file
            assert main(["train", "--resume", str(out), "--no-progress"]) == 0
            assert stale_temps(out) == []
        assert_same_run(out, ref)
        lost = at - expected if mode == "step" else KILL_EVERY
        on_disk = f"checkpoint on disk at step {expected:3d}" if expected else "no checkpoint yet (restarted)   "
        rows.append(f"SIGKILL {'during' if mode == 'step' else 'writing ckpt of'} step {at:3d}: {on_disk}, {lost:2d} "
                    "completed step(s) lost, final metrics bit-identical")
    with capsys.disabled():
        print("\n" + "\n".join(rows))


IMAGE_SETS = ["data.subsample_per_class=4", "data.labels_per_class=2", "run.feature_cache=false", "model.peft=bn",
              "data.num_workers=2", "run.checkpoint_every=2", "optim.batch_size=8", "optim.mu=1", "run.epochs=2",
              "run.steps_per_epoch=6", "run.eval_batch_size=128", "algorithm.name=fixmatch"]


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_image_mode_with_workers_survives_a_signal_to_the_whole_process_group(tmp_path, signame):
    """A scheduler's SIGTERM or a terminal's Ctrl-C reaches the DataLoader workers too: they must leave stopping to
    the main process, which saves a checkpoint at the current step (no 'DataLoader worker exited unexpectedly')."""
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "finessl_lab", "train", "--preset", "embedded", "--out", str(out),
                          "--no-progress"] + sum([["--set", s] for s in IMAGE_SETS], []),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=_default_sigint)
    while not (out / "checkpoint.pt").exists() and p.poll() is None:
        time.sleep(0.005)
    os.killpg(p.pid, getattr(signal, signame))
    _, err = p.communicate(timeout=120)
    ref = tmp_path / "ref"  # the reference run only after the kill: running it alongside let the child finish first
    train(resolve("embedded", sets=IMAGE_SETS + ["run.progress=false"]), ref)
    assert p.returncode == 128 + getattr(signal, signame), err
    step = io.load_checkpoint(out / "checkpoint.pt")["step"]
    assert err.strip().splitlines()[-1].startswith(f"interrupted: {signame} after step {step} of 12; checkpoint saved")
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no orphaned workers left in the group
        os.killpg(p.pid, 0)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), pd.read_csv(ref / "metrics.csv"), check_exact=True)


def test_a_checkpoint_holds_a_view_of_a_larger_tensor_as_its_own_elements_only(tmp_path):
    """torch.save writes a view's whole storage: a stacked run's parameters are views of the [K, ...] tensors of
    all K runs, so its checkpoint held every run's weights. Views are saved compact, values, dtypes, nesting and a
    state dict's _metadata unchanged; tensors that own their storage are saved as they are."""
    import collections

    big = torch.arange(9 * 1000, dtype=torch.float32).view(9, 1000)
    sd = collections.OrderedDict(weight=big[4], whole=torch.ones(3))
    sd._metadata = {"": {"version": 2}}
    obj = {"model": sd, "pace": [big[1, :10], (big[2, 5:7],)], "step": 3}
    path = io.save_checkpoint(tmp_path / "c.pt", obj)
    assert path.stat().st_size < 9 * 1000 * 4 / 3  # one row of 9 plus overhead, not the 36 kB storage
    back = io.load_checkpoint(path)
    assert torch.equal(back["model"]["weight"], big[4]) and back["model"]["weight"].untyped_storage().nbytes() == 4000
    assert back["model"]._metadata == {"": {"version": 2}} and isinstance(back["model"], collections.OrderedDict)
    assert torch.equal(back["pace"][0], big[1, :10]) and torch.equal(back["pace"][1][0], big[2, 5:7])
    assert isinstance(back["pace"][1], tuple) and back["step"] == 3 and torch.equal(back["model"]["whole"], torch.ones(3))
