"""Issue 4, bad input: every kind is tried through the CLI (``main(argv)``, the console script's code path) and
through the Python API. Each must give exit status 2 and one line ``error: ...`` naming the value and what is
valid, no traceback (``--debug`` shows it), and leave no file behind: the whole test directory is fingerprinted
before and after."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import pytest
import torch

from finessl_lab.algorithms import REGISTRY
from finessl_lab.cli import main
from finessl_lab.compare import compare
from finessl_lab.config import AlgorithmConfig, Config
from finessl_lab.errors import UserError
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer, train

SMALL = ["data.subsample_per_class=20", "run.epochs=3", "run.steps_per_epoch=10", "run.progress=false",
         "data.num_workers=0"]
RUN_ALG = "algorithm.name=fixmatch"


def small_cfg(*extra: str) -> Config:
    return resolve("embedded", sets=SMALL + list(extra))


def sets(*items: str) -> list[str]:
    return sum([["--set", s] for s in items], [])


def assign(cfg: Config, dotted: str, value) -> Config:
    """What a notebook does: plain attribute assignment, no parsing (validated when training starts)."""
    *path, leaf = dotted.split(".")
    obj = cfg
    for p in path:
        obj = getattr(obj, p)
    setattr(obj, leaf, value)
    return cfg


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` (hidden ones included) with a hash of its content."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(small_cfg(RUN_ALG), run)
    return run


@dataclass
class Case:
    cli: list[str]
    api: Callable[[], object]
    cli_says: str            # substring of the CLI's error line
    api_says: str | None = None  # substring of the API's message (None: the same as cli_says)
    same: bool = True        # the CLI line is exactly "error: " + the API's message


class Ctx:
    def __init__(self, tmp: Path, finished: Path):
        self.tmp, self.finished = tmp, finished
        self.out = tmp / "out"

    def train_args(self, *extra: str, out: Path | None = None) -> list[str]:
        return ["train", "--preset", "embedded", "--out", str(out or self.out), *sets(*SMALL), *extra]

    def run_copy(self, name: str = "run") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.finished, dst)
        return dst

    def file(self, name: str, content: bytes | str) -> Path:
        p = self.tmp / name
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p


CASES: dict[str, Callable[[Ctx], Case]] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# -- names (with the closest valid one suggested) --------------------------------------------------------------
@case
def unknown_dataset(c):
    return Case(c.train_args("--dataset", "cifar1000"),
                lambda: train(assign(small_cfg(), "data.dataset", "cifar1000"), c.out),
                "data.dataset='cifar1000' is not valid (did you mean 'cifar100'?); valid: mnist5k, cifar10, cifar100")


@case
def unknown_algorithm(c):
    return Case(c.train_args("--algorithm", "fixmach"),
                lambda: train(assign(small_cfg(), "algorithm.name", "fixmach"), c.out),
                "unknown algorithm 'fixmach' (did you mean 'fixmatch'?); valid: " + ", ".join(sorted(REGISTRY)))


@case
def unknown_backbone(c):
    return Case(c.train_args("--backbone", "efficientnet_lite1"),
                lambda: train(assign(small_cfg(), "model.backbone", "efficientnet_lite1"), c.out),
                "unknown backbone 'efficientnet_lite1' (did you mean 'efficientnet_lite0'?); valid: efficientnet_lite0 "
                "or an open_clip model such as ViT-B-16")


@case
def unknown_peft(c):
    return Case(c.train_args("--peft", "vpt_dep"),
                lambda: train(assign(small_cfg(), "model.peft", "vpt_dep"), c.out),
                "model.peft='vpt_dep' is not valid (did you mean 'vpt_deep'?); valid: vpt_deep, vpt_shallow, vpt_last")


@case
def peft_wrong_family(c):
    return Case(c.train_args("--peft", "vpt_deep", *sets("run.feature_cache=false")),
                lambda: train(small_cfg("run.feature_cache=false", "model.peft=vpt_deep"), c.out),
                "PEFT 'vpt_deep' does not apply to a CNN backbone 'efficientnet_lite0'; valid PEFTs for a CNN: bn, "
                "bitfit, ssf, last_k, full, linear")


@case
def unknown_preset(c):
    return Case(["train", "--preset", "embeded", "--out", str(c.out)], lambda: resolve("embeded"),
                "unknown preset 'embeded' (did you mean 'embedded'?); valid: cifar10_n1")


# -- values out of range -------------------------------------------------------------------------------------
@case
def labels_per_class_zero(c):
    return Case(c.train_args("--labels-per-class", "0"),
                lambda: train(assign(small_cfg(), "data.labels_per_class", 0), c.out),
                "data.labels_per_class=0 is out of range; valid: value >= 1")


@case
def labels_per_class_more_than_a_class_holds(c):
    return Case(c.train_args("--labels-per-class", "21"),
                lambda: train(assign(small_cfg(), "data.labels_per_class", 21), c.out),
                "data.labels_per_class=21 is more than class 'zero' of mnist5k holds (20 training images with "
                "data.subsample_per_class=20); valid: 1 <= labels_per_class <= 20")


@case
def val_per_class_leaves_no_labels(c):
    return Case(c.train_args(*sets("data.val_per_class=20")),
                lambda: train(assign(small_cfg(), "data.val_per_class", 20), c.out),
                "data.val_per_class=20 leaves no labeled images: class 'zero' of mnist5k has only 20 training images")


@case
def threshold_out_of_range(c):
    return Case(c.train_args(*sets("algorithm.threshold=1.5")),
                lambda: train(assign(small_cfg(), "algorithm.threshold", 1.5), c.out),
                "algorithm.threshold=1.5 is out of range; valid: 0.0 <= value <= 1.0")


@case
def smoothing_out_of_range(c):
    return Case(c.train_args(*sets("algorithm.finessl.smoothing=1")),
                lambda: train(assign(small_cfg(), "algorithm.finessl.smoothing", 1.0), c.out),
                "algorithm.finessl.smoothing=1.0 is out of range; valid: 0.0 <= value < 1.0")


@case
def margin_scale_negative(c):
    return Case(c.train_args(*sets("algorithm.finessl.alpha_base=-1")),
                lambda: train(assign(small_cfg(), "algorithm.finessl.alpha_base", -1.0), c.out),
                "algorithm.finessl.alpha_base=-1.0 is out of range; valid: value >= 0.0")


@case
def unlabeled_ratio_zero(c):
    return Case(c.train_args(*sets("optim.mu=0")),
                lambda: train(assign(small_cfg(), "optim.mu", 0), c.out),
                "optim.mu=0 is out of range; valid: 1 <= value <= 64")


@case
def learning_rate_not_finite(c):
    return Case(c.train_args(*sets("optim.lr=inf")),
                lambda: train(assign(small_cfg(), "optim.lr", float("inf")), c.out),
                "optim.lr=inf is not a finite number; valid: a finite number with value > 0.0")


@case
def nan_policy_unknown(c):
    return Case(c.train_args(*sets("run.nan_policy=ignore")),
                lambda: train(assign(small_cfg(), "run.nan_policy", "ignore"), c.out),
                "run.nan_policy='ignore' is not valid; valid: stop, skip")


@case
def device_unavailable(c):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    return Case(c.train_args("--device", "cuda"), lambda: train(assign(small_cfg(), "run.device", "cuda"), c.out),
                "run.device='cuda' but CUDA is not available here; valid: auto or cpu")


# -- data roots ----------------------------------------------------------------------------------------------
@case
def data_root_missing(c):
    root = c.tmp / "nope"
    return Case(c.train_args("--dataset", "imagefolder", "--data-root", str(root)),
                lambda: train(small_cfg("data.dataset=imagefolder", f"data.root={root}"), c.out),
                f"dataset directory {root} (data.root) does not exist; expected root/train/<class>/*.jpg")


@case
def data_root_empty(c):
    root = c.tmp / "empty"
    root.mkdir()
    return Case(c.train_args("--dataset", "semi_aves", "--data-root", str(root)),
                lambda: train(small_cfg("data.dataset=semi_aves", f"data.root={root}"), c.out),
                f"{root} (data.root) contains nothing; expected root/train/<class>/*.jpg and root/test/<class>/*.jpg "
                "(or root/val/<class>/...); get Semi-Aves from https://github.com/cvl-umass/semi-inat-2020")


@case
def data_root_wrong_layout(c):
    root = c.tmp / "flat"
    (root / "a").mkdir(parents=True)
    (root / "img.jpg").write_bytes(b"x")
    return Case(c.train_args("--dataset", "imagenet", "--data-root", str(root)),
                lambda: train(small_cfg("data.dataset=imagenet", f"data.root={root}"), c.out),
                f"{root} (data.root) contains a, img.jpg; expected root/train/<class>/*.jpg and "
                "root/test/<class>/*.jpg (or root/val/<class>/...); get ImageNet-1k from https://image-net.org")


@case
def cifar_root_missing_without_download(c):
    root = c.tmp / "cifar"
    return Case(c.train_args("--dataset", "cifar10", "--data-root", str(root), *sets("data.download=false")),
                lambda: train(small_cfg("data.dataset=cifar10", f"data.root={root}", "data.download=false"), c.out),
                f"cifar10 not found in {root} (data.root) and data.download is off; get it from "
                "https://www.cs.toronto.edu/~kriz/cifar.html")


# -- --pretrained weights ------------------------------------------------------------------------------------------
@case
def pretrained_missing(c):
    path = c.tmp / "missing.pt"
    return Case(c.train_args("--pretrained", str(path)),
                lambda: train(small_cfg(f"model.pretrained={path}"), c.out),
                f"model.pretrained='{path}' does not exist; valid: an existing weights file")


@case
def pretrained_not_a_weights_file(c):
    path = c.file("notes.pt", "these are not weights")
    return Case(c.train_args("--pretrained", str(path)),
                lambda: train(small_cfg(f"model.pretrained={path}"), c.out),
                f"model.pretrained='{path}' is not a weights file (it starts with b'these ar'); valid: a PyTorch "
                "state dict saved with torch.save")


@case
def pretrained_is_a_run_checkpoint(c):
    path = c.finished / "checkpoint.pt"
    return Case(c.train_args("--pretrained", str(path)),
                lambda: train(small_cfg(f"model.pretrained={path}"), c.out),
                f"model.pretrained='{path}' is a finessl-lab run checkpoint (trained heads/PEFT state), not backbone "
                "weights")


@case
def pretrained_other_architecture(c):
    path = c.tmp / "linear.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    return Case(c.train_args("--pretrained", str(path)),
                lambda: train(small_cfg(f"model.pretrained={path}"), c.out),
                f"efficientnet_lite0 weights '{path}' do not fit the model (294 missing keys: conv_stem.weight, "
                "bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var ...; 2 unexpected keys: weight, bias)")


# -- checkpoints and resuming -----------------------------------------------------------------------------------
def _resume_case(c, run: Path, says: str, **kw) -> Case:
    return Case(["train", "--resume", str(run), "--no-progress"],
                lambda: train(small_cfg(RUN_ALG), run, resume=True), says, **kw)


@case
def checkpoint_corrupted(c):
    run = c.run_copy()
    raw = bytearray((run / "checkpoint.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (run / "checkpoint.pt").write_bytes(bytes(raw))
    return _resume_case(c, run, f"checkpoint '{run / 'checkpoint.pt'}' is corrupted or truncated (SHA-256 mismatch)")


@case
def checkpoint_truncated(c):
    run = c.run_copy()
    raw = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(raw[: len(raw) * 2 // 3])
    return _resume_case(c, run, f"checkpoint '{run / 'checkpoint.pt'}' is truncated (")


@case
def checkpoint_foreign_file(c):
    run = c.run_copy()
    torch.save({"model": {}}, run / "checkpoint.pt")
    return _resume_case(c, run, f"'{run / 'checkpoint.pt'}' is not a finessl-lab checkpoint (bad header)")


@case
def resume_with_incompatible_config(c):
    run = c.run_copy()
    return Case(["train", "--resume", str(run), "--set", "algorithm.threshold=0.9"],
                lambda: train(small_cfg(RUN_ALG, "algorithm.threshold=0.9"), run, resume=True),
                f"cannot resume '{run}' with a different config (algorithm.threshold: 0.7 -> 0.9); valid: the run's "
                "own config.yaml, changing only run.progress")


@case
def resume_without_checkpoint(c):
    run = c.run_copy()
    for f in ("checkpoint.pt", "metrics.csv", "summary.json"):
        (run / f).unlink()
    return _resume_case(c, run, f"--resume '{run}' holds no checkpoint.pt (it stopped before its first checkpoint",
                        api_says=f"cannot resume '{run}': it holds config.yaml but no checkpoint.pt", same=False)


@case
def resume_and_overwrite_together(c):
    run = c.run_copy()
    return Case(["train", "--resume", str(run), "--overwrite"],
                lambda: train(small_cfg(RUN_ALG), run, resume=True, overwrite=True),
                f"--overwrite cannot be combined with --resume '{run}'",
                api_says="resume=True and overwrite=True contradict each other", same=False)


# -- config keys and files ---------------------------------------------------------------------------------------
@case
def unknown_config_key(c):
    return Case(c.train_args(*sets("algorithm.treshold=0.5")), lambda: small_cfg().set("algorithm.treshold", 0.5),
                "unknown config key 'algorithm.treshold' (did you mean 'threshold'?); valid keys here: "
                + ", ".join(sorted(f.name for f in fields(AlgorithmConfig))))


@case
def mistyped_key_in_yaml(c):
    path = c.file("bad.yaml", "optim:\n  lrate: 0.1\n")
    return Case(c.train_args("--config", str(path)), lambda: resolve("embedded", str(path)),
                "unknown config key 'optim.lrate' (did you mean 'lr'?); valid keys here:")


@case
def yaml_syntax_error(c):
    path = c.file("broken.yaml", "optim: {lr: 0.1\n")
    return Case(c.train_args("--config", str(path)), lambda: Config.from_yaml(path),
                f"config file '{path}' is not valid YAML at line 2")


@case
def unknown_cli_option(c):
    return Case(c.train_args("--lables", "3"), lambda: small_cfg().set("data.lables_per_class", 3),
                "unknown option '--lables' (did you mean '--labels-per-class'?); valid options: --algorithm",
                api_says="unknown config key 'data.lables_per_class' (did you mean 'labels_per_class'?)", same=False)


# -- wrong types -------------------------------------------------------------------------------------------------
@case
def value_of_wrong_type(c):
    return Case(c.train_args(*sets("data.labels_per_class=four")),
                lambda: train(assign(small_cfg(), "data.labels_per_class", "four"), c.out),
                "data.labels_per_class='four' is not an integer; valid: an integer with value >= 1",
                api_says="data.labels_per_class='four' has type str; valid: an integer with value >= 1", same=False)


@case
def flag_of_wrong_type(c):
    return Case(c.train_args("--max-steps", "abc"), lambda: train("embedded", c.out),
                "argument --max-steps: 'abc' is not an integer; valid: a whole number",
                api_says="config 'embedded' has type str; valid: a finessl_lab.config.Config", same=False)


@case
def api_hooks_of_wrong_type(c):
    return Case(c.train_args("--seed", "1.5"), lambda: train(small_cfg(), c.out, hooks=[print]),
                "argument --seed: '1.5' is not an integer",
                api_says="hooks[0]=<built-in function print> has type builtin_function_or_method; valid: a "
                         "finessl_lab.hooks.Hook instance", same=False)


@case
def api_out_dir_of_wrong_type(c):
    return Case(c.train_args(*sets("run.epochs=3.5")), lambda: Trainer(small_cfg(), out_dir=3),
                "run.epochs='3.5' is not an integer; valid: an integer with 1 <= value <= 100000",
                api_says="out_dir=3 has type int; valid: a directory path (str or pathlib.Path) or None", same=False)


@case
def api_section_of_wrong_type(c):
    return Case(c.train_args(*sets("optim=3")), lambda: train(assign(small_cfg(), "optim", {"lr": 0.1}), c.out),
                "config key 'optim' must look like section.key (sections: data, model, algorithm, optim, run)",
                api_says="config section 'optim' is {'lr': 0.1} of type dict; valid: a section object of type "
                         "OptimConfig", same=False)


# -- output directories ------------------------------------------------------------------------------------------
@case
def out_dir_holds_another_run(c):
    run = c.run_copy()
    return Case(c.train_args(out=run), lambda: train(small_cfg(), run),
                f"--out '{run}' already holds a run (config.yaml, checkpoint.pt, metrics.csv, summary.json); valid: a "
                f"new directory, --overwrite to replace it, or --resume {run} to continue it",
                api_says=f"out_dir '{run}' already holds a run (config.yaml, checkpoint.pt, metrics.csv, summary.json); "
                         "valid: a new directory, overwrite=True to replace it, or resume=True to continue it",
                same=False)


@case
def overwrite_with_a_bad_value_keeps_the_old_run(c):
    run = c.run_copy()
    return Case(c.train_args("--overwrite", "--labels-per-class", "21", out=run),
                lambda: train(small_cfg("data.labels_per_class=21"), run, overwrite=True),
                "data.labels_per_class=21 is more than class 'zero' of mnist5k holds")


@case
def out_dir_is_a_file(c):
    path = c.file("results.txt", "x")
    return Case(c.train_args(out=path), lambda: train(small_cfg(), path),
                f"--out '{path}' is a file; valid: a new or empty directory",
                api_says=f"out_dir '{path}' is a file; valid: a new or empty directory", same=False)


@case
def compare_dir_holds_a_different_comparison(c):
    out = c.tmp / "cmp"
    (out / "finessl" / "seed1").mkdir(parents=True)
    (out / "finessl" / "seed1" / "config.yaml").write_text(
        small_cfg("algorithm.name=finessl", "algorithm.threshold=0.9").to_yaml())
    return Case(["compare", "--preset", "embedded", "--algorithms", "finessl", "--seeds", "1", "--out", str(out),
                 *sets(*SMALL)],
                lambda: compare(small_cfg(), ["finessl"], [1], out),
                f"'{out / 'finessl' / 'seed1'}' already holds a run of a different config (algorithm.threshold: 0.9 -> "
                "0.7); valid: a new --out directory, or --overwrite")


@case
def compare_seeds_of_wrong_type(c):
    return Case(["compare", "--preset", "embedded", "--seeds", "a", "--out", str(c.out)],
                lambda: compare(small_cfg(), ["finessl"], "1", c.out),
                "argument --seeds: 'a' is not an integer",
                api_says="seeds='1' has type str; valid: a list of non-negative integers", same=False)


MESSAGES: dict[str, tuple[str, str]] = {}  # name -> (CLI line, API message), for the closing note


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_cli_and_api(name, tmp_path, finished_run, capsys):
    c = CASES[name](Ctx(tmp_path, finished_run))
    before, ckpt_before = snapshot(tmp_path), snapshot(finished_run)
    capsys.readouterr()

    assert main(c.cli) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in err and out == ""
    assert c.cli_says in line
    assert snapshot(tmp_path) == before, "the CLI left files behind"

    with pytest.raises(UserError) as info:
        c.api()
    msg = str(info.value)
    assert "\n" not in msg
    assert (c.api_says or c.cli_says) in msg
    if c.same:
        assert line == f"error: {msg}"
    assert snapshot(tmp_path) == before, "the API left files behind"
    assert snapshot(finished_run) == ckpt_before
    MESSAGES[name] = (line, msg)


def test_there_are_at_least_twenty_kinds():
    assert len(CASES) >= 20


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["train", "--preset", "embedded", "--algorithm", "fixmach", "--out", str(tmp_path / "o"),
                 "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "finessl_lab" in err
    assert err.strip().splitlines()[-1] == ("error: unknown algorithm 'fixmach' (did you mean 'fixmatch'?); valid: "
                                            + ", ".join(sorted(REGISTRY)))
    assert not (tmp_path / "o").exists()


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("finessl-lab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "finessl_lab"]


def test_real_process_bad_input_is_one_line_without_traceback(tmp_path):
    bad = ["train", "--preset", "embedded", "--labels-per-class", "-3", "--out", str(tmp_path / "o")]
    plain, debug = (subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
                    for cmd in (_console_script() + bad, [sys.executable, "-m", "finessl_lab"] + bad + ["--debug"]))
    out, err = plain.communicate(timeout=120)
    assert plain.returncode == 2
    assert err == "error: data.labels_per_class=-3 is out of range; valid: value >= 1\n" and out == ""
    out, err = debug.communicate(timeout=120)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == "error: data.labels_per_class=-3 is out of range; valid: value >= 1"
    assert not (tmp_path / "o").exists()
