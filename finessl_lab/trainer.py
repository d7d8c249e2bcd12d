"""The training loop: steps/epochs, SGD + cosine, autocast, per-epoch evaluation, checkpoint/resume, hooks.

The trainer knows nothing about any algorithm: it computes backbone features for all views in one forward,
hands them to ``algorithm.step``, optimises, and passes a :class:`StepRecord` to every hook. It reports the
LAST-epoch test accuracy; the best epoch is chosen only on a validation split, never on test.
"""
from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from . import distributed, io
from .algorithms import REGISTRY, Heads, RoundContext, UnlabeledViews, build_algorithm
from .build import EvalSet, Experiment, build_experiment, unlabeled_batch_size
from .config import Config, describe_diff, diff
from .device import autocast, grad_scaler, weight_dtype
from .errors import Stopped, UserError, check_type
from .diagnostics.recorders import recorders_from_config
from .hooks import Hook, PseudoLabelMonitor, StepRecord
from .progress import progress_bar
from .rundir import CHECKPOINT, CONFIG, METRICS, RUN_FILES, SUMMARY, check_new_run_dir, held_run_files

# config keys that may differ between a run and its resumption (they change no result)
RESUME_IGNORED = ("run.progress", "run.device", "run.cache_dir", "run.eval_batch_size", "data.root",
                  "data.download", "data.num_workers", "run.checkpoint_every", "run.nan_policy",
                  "data.transport")
CHECKPOINT_FORMAT = 1


class Interrupted(Stopped):
    """Raised after SIGINT/SIGTERM once a checkpoint has been written (a second signal stops at once).

    A KeyboardInterrupt (via :class:`~finessl_lab.errors.Stopped`), so ``except Exception`` in a sweep loop does not
    swallow it; ``exit_code`` is 130 for SIGINT and 143 for SIGTERM."""

    def __init__(self, message: str, signum: int = signal.SIGINT, step: int | None = None,
                 checkpoint: Path | None = None, total: int | None = None, out: Path | None = None):
        super().__init__(message, signum)
        self.step, self.checkpoint, self.total, self.out = step, checkpoint, total, out


class NonFiniteLoss(UserError):
    """A NaN/Inf loss with run.nan_policy=stop: names the step and the last good checkpoint."""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # pragma: no cover
        return f"signal {signum}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, cfg: Config) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (linear warm-up, then cosine to 0 or constant)."""
    o, total, spe = cfg.optim, cfg.total_steps, cfg.run.steps_per_epoch
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    unit = o.schedule_unit
    if unit == "auto":
        from .fidelity import implied

        unit = implied(cfg, "optim.schedule_unit")
    if unit == "epoch":  # official code: CosineAnnealingLR(T_max=epochs), stepped once per epoch
        t, span = step // spe, max(1, math.ceil(total / spe))
    else:
        t, span = step - o.warmup_steps, max(1, total - o.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, span) / span))


def param_groups(params: list[torch.nn.Parameter], weight_decay: float, scope: str = "matrices") -> list[dict]:
    """Weight decay on every tuned tensor (``scope='all'``, the official code) or not on 0-/1-d parameters
    (``'matrices'``: biases, norm affines, the cosine-head scale)."""
    if scope == "all":
        return [{"params": list(params), "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def backbone_lr_groups(groups: list[dict], backbone_params, lr: float) -> list[dict]:
    """Split each parameter group into heads (the optimizer's lr) and backbone parameters (``lr``:
    ``optim.backbone_lr``); empty groups are dropped. The cosine schedule scales every group alike."""
    ids = {id(p) for p in backbone_params}
    out = []
    for g in groups:
        heads = [p for p in g["params"] if id(p) not in ids]
        backbone = [p for p in g["params"] if id(p) in ids]
        out += [dict(g, params=heads)] if heads else []
        out += [dict(g, params=backbone, lr=lr)] if backbone else []
    return out


HEADS = ("main", "aux")


@torch.no_grad()
def predict(model, eval_set: EvalSet, device, precision: str, batch_size: int, head="main") -> Tensor:
    """Logits (fp32, CPU) of ``head`` for an evaluation set: a feature tensor (feature-cache mode) or a DataLoader
    of images (image mode). ``head`` is 'main', 'aux' or a callable features -> logits (e.g. an algorithm's
    ``eval_logits``). Puts the model in eval mode."""
    if callable(head):
        return predict_features(model, eval_set, device, precision, batch_size, heads={"logits": head})["logits"]
    if head not in HEADS:
        raise UserError(f"head={head!r} is not valid; valid: {', '.join(HEADS)} or a callable features -> logits")
    return predict_features(model, eval_set, device, precision, batch_size, heads=(head,))[head]


@torch.no_grad()
def predict_features(model, eval_set: EvalSet, device, precision: str, batch_size: int,
                     heads: tuple[str, ...] | dict = ("main",)) -> dict[str, Tensor]:
    """One backbone pass over an evaluation set: {head: logits (fp32, CPU)} for each of ``heads`` ('main', 'aux',
    or "features" for the [N, D] features themselves), or for each (name, callable features -> logits) of a
    ``heads`` dict. Puts the model in eval mode."""
    model.eval()
    fns = heads if isinstance(heads, dict) else \
        {h: (lambda f: f) if h == "features" else getattr(model, h) for h in heads}
    inputs = eval_set.inputs
    chunks = inputs.split(batch_size) if isinstance(inputs, Tensor) else inputs
    out: dict[str, list] = {h: [] for h in fns}
    for x in chunks:
        with autocast(device, precision):
            x = x.to(device, non_blocking=True)
            f = model.features(x.to(weight_dtype(precision)))
            for h, fn in fns.items():
                out[h].append(fn(f).float().cpu())
    return {h: torch.cat(v) for h, v in out.items()}


def top1(logits: Tensor, targets: Tensor) -> float:
    """Top-1 accuracy in %, counted exactly and rounded to 4 decimals (no float32 noise such as 76.39999985)."""
    return round(100.0 * int((logits.argmax(1) == targets).sum()) / max(1, len(targets)), 4)


class StepLogs:
    """The step logs of one window (at most an epoch) kept as the steps' own 0-d device tensors: nothing is
    computed or copied per step and the host is never synced; :meth:`read` stacks the whole window in one op, sums
    it on the host once (per epoch, checkpoint or progress refresh) and finds the first step with a NaN/Inf loss."""

    def __init__(self):
        self.keys: tuple | None = None
        self.rows: list[list[Tensor]] = []
        self.capacity = 1
        self.first = 0
        self.sums: dict[str, float] = {}   # already read to the host
        self.count, self.bad = 0, None

    @property
    def n(self) -> int:
        return len(self.rows)

    def add(self, step: int, loss: Tensor, logs: dict, capacity: int) -> None:
        keys = ("loss", *logs)
        row = [loss, *logs.values()]
        for i, v in enumerate(row):
            if not isinstance(v, Tensor):
                row[i] = torch.tensor(float(v), device=loss.device)
            elif v.requires_grad:  # hold no autograd graph
                row[i] = v.detach()
        if keys != self.keys or len(self.rows) >= self.capacity or (self.rows and loss.device != self.rows[0][0].device):
            self._drain()  # rare: a new set of log keys (or a full window) is read to the host first
            self.keys, self.capacity = keys, max(1, capacity)
        if not self.rows:
            self.first = step
        self.rows.append(row)

    def _drain(self) -> None:
        if not self.rows:
            return
        k = len(self.keys)
        with torch.no_grad():  # one stack for the window (dtypes promoted, then fp32: as a per-value .float())
            flat = torch.stack([v for row in self.rows for v in row]).float().tolist()
        for i in range(len(self.rows)):  # summed on the host step by step, in float64: the
            row = flat[i * k:(i + 1) * k]     # same sums however the windows split an epoch
            for key, v in zip(self.keys, row):
                self.sums[key] = self.sums.get(key, 0.0) + v
            if self.bad is None and not math.isfinite(row[0]):
                self.bad = (self.first + i, row[0])
        self.count += len(self.rows)
        self.rows = []

    def read(self) -> tuple[dict, int, tuple | None]:
        """({key: sum over the steps}, steps, (first step with a NaN/Inf loss, that loss) or None); starts anew."""
        self._drain()
        out = (self.sums, self.count, self.bad)
        self.sums, self.count, self.bad = {}, 0, None
        return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # per batch dataclass: its field names (fields() per step costs)


def _off_device(batch, device) -> bool:
    """True if a tensor of ``batch`` (a dataclass of tensors and Nones) lies elsewhere than on ``device``."""
    names = _FIELD_NAMES.get(type(batch))
    if names is None:
        names = _FIELD_NAMES[type(batch)] = tuple(f.name for f in fields(batch))
    if device.type == "cpu":  # (is_cpu: no device object per tensor)
        for name in names:
            t = getattr(batch, name)
            if t is not None and not t.is_cpu:
                return True
        return False
    for name in names:
        t = getattr(batch, name)
        if t is not None and t.device != device:
            return True
    return False


class HookError(RuntimeError):
    """A hook raised: names the hook, the step and the last checkpoint, with the resume hint. The hook's own
    exception is chained (``__cause__``)."""


# config keys that may differ between the Experiment a Trainer reuses and its own config (they change neither
# the data, the split, the batches nor the model's architecture and initial weights)
REUSE_ALLOWED = ("algorithm.", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.nesterov",
                 "optim.schedule", "optim.warmup_steps", "run.epochs", "run.steps_per_epoch", "run.max_steps",
                 "run.checkpoint_every", "run.nan_policy", "run.record", "run.tensorboard") + RESUME_IGNORED


def check_reusable(exp: Experiment, cfg: Config) -> None:
    """An Experiment may be reused by a Trainer only for a config that builds the same data, split, batches and
    initial model: otherwise a UserError names the differing keys."""
    changed = [k for k in diff(exp.cfg, cfg) if not k.startswith(REUSE_ALLOWED)]
    if changed:
        raise UserError(f"experiment was built for a different config ({describe_diff(exp.cfg, cfg, changed)}); valid: "
                        f"reuse an Experiment only when changing algorithm.*, optim.lr / momentum / weight_decay / "
                        f"schedule / warmup_steps or run.epochs / steps_per_epoch / max_steps; otherwise pass no "
                        f"experiment (build_experiment(cfg) builds a matching one)")
    uses_unlabeled = REGISTRY[cfg.algorithm.name].uses_unlabeled
    if uses_unlabeled != bool(exp.split_view.unlabeled_batch):
        built = "without" if uses_unlabeled else "with"
        raise UserError(f"experiment was built {built} unlabeled batches but algorithm {cfg.algorithm.name!r} "
                        f"{'uses' if uses_unlabeled else 'does not use'} them; valid: build_experiment(cfg, "
                        f"uses_unlabeled={uses_unlabeled})")


@contextmanager
def _intra_op_threads(n: int | None):
    """Head-level training on CPU works on tiny tensors, where intra-op threading only adds synchronisation
    (measured here: ~100x slower steps with 2 threads on a busy 2-core machine); use one thread for it."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def _catch_signals(flag: dict, describe=lambda: ""):
    """While training, SIGINT/SIGTERM only set ``flag``: the loop finishes the current step, saves a checkpoint and
    raises :class:`Interrupted`. A second signal raises at once (the last checkpoint on disk stays valid: writes
    are atomic). Handlers are installed only in the main thread, and a signal the parent process set to be ignored
    (e.g. SIGINT for a background job of a non-interactive shell) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("signal") is not None:
            raise Interrupted(f"{_signal_name(signum)} received again while stopping; stopped at once, without a new "
                              f"checkpoint{describe()}", signum)
        flag["signal"] = signum

    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) is not signal.SIG_IGN:
            old[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _check_arguments(cfg, out_dir, hooks, resume, experiment, progress, overwrite) -> None:
    """Wrong argument types of the Python API fail here with one line, not deep inside training."""
    from .config import validate

    validate(cfg)
    check_type("out_dir", out_dir, (str, os.PathLike, type(None)), "a directory path (str or pathlib.Path) or None")
    if isinstance(out_dir, str) and not out_dir.strip():
        raise UserError("out_dir='' is empty; valid: a directory path or None (train without writing files)")
    check_type("hooks", hooks, (list, tuple), "a list of finessl_lab.hooks.Hook instances")
    for i, h in enumerate(hooks):
        check_type(f"hooks[{i}]", h, Hook, "a finessl_lab.hooks.Hook instance (subclass Hook, give it a unique name)")
    check_type("resume", resume, bool, "True or False")
    check_type("overwrite", overwrite, bool, "True or False")
    check_type("progress", progress, (bool, type(None)), "True, False or None (= run.progress)")
    check_type("experiment", experiment, (Experiment, type(None)), "an Experiment from build_experiment(cfg) or None")
    if resume and overwrite:
        raise UserError("resume=True and overwrite=True contradict each other; valid: resume to continue the run, "
                        "overwrite to replace it")


class Trainer:
    def __init__(self, cfg: Config, out_dir: str | Path | None = None, hooks: list[Hook] | tuple = (),
                 resume: bool = False, experiment: Experiment | None = None, progress: bool | None = None,
                 *, overwrite: bool = False):
        _check_arguments(cfg, out_dir, hooks, resume, experiment, progress, overwrite)
        distributed.init()  # under torchrun: join the process group (no-op in a single process)
        cfg = cfg.resolved()  # every fidelity item concrete: this is what config.yaml and the checkpoint record
        self.cfg = cfg
        self.out = Path(out_dir).expanduser() if out_dir is not None else None
        self.progress = (cfg.run.progress if progress is None else progress) and distributed.is_main()
        self.overwrite = overwrite
        self.checkpoint_step: int | None = None  # step of the last checkpoint on disk
        resumed = None
        if self.out is not None:
            self._check_out_dir(resume, overwrite)
        if resume:
            if self.out is None:
                raise UserError("resume=True needs out_dir, the run directory that holds checkpoint.pt")
            resumed = io.load_checkpoint(self.out / CHECKPOINT)
            self._check_resumable(resumed, cfg)
        uses_unlabeled = REGISTRY[cfg.algorithm.name].uses_unlabeled
        if experiment is not None:
            check_reusable(experiment, cfg)
        distributed.check_divisible(cfg.optim.batch_size, unlabeled_batch_size(cfg, uses_unlabeled))
        with distributed.main_first():  # rank 0 builds the feature cache and split, the other ranks read them
            self.exp = experiment or build_experiment(cfg, uses_unlabeled=uses_unlabeled, progress=self.progress)
        e = self.exp
        e.reset_model()  # a reused Experiment starts from the same fresh heads (and PEFT weights) as a new one
        self.algorithm = build_algorithm(cfg.algorithm, e.num_classes, len(e.split.unlabeled), e.device)
        self.hooks = [PseudoLabelMonitor(e.num_classes), *recorders_from_config(cfg, e), *hooks]
        names = [h.name for h in self.hooks]
        if len(set(names)) != len(names):
            raise UserError(f"hook names must be unique, got {names}; valid: give every hook its own name "
                            "('pseudo_labels' is built in)")
        if not distributed.is_main():  # only rank 0 writes: the others train with no run directory
            self.out, self.hooks = None, [h for h in self.hooks if h.name != "tensorboard"]
        self._ddp = None  # the DDP-wrapped step under torchrun (built in fit, after a resume's restore)
        params = e.model.trainable_parameters()
        groups = param_groups(params, cfg.optim.weight_decay, cfg.optim.decay_scope)
        if cfg.optim.backbone_lr and e.model.backbone is not None:
            groups = backbone_lr_groups(groups, e.model.backbone.peft_parameters, cfg.optim.backbone_lr)
        self.optimizer = torch.optim.SGD(groups, lr=cfg.optim.lr,
                                         momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.scaler = grad_scaler(e.device, e.precision)
        self._autocast = not isinstance(autocast(e.device, e.precision), nullcontext)  # bf16/fp16 autocast steps
        self.step = 0
        self.rows: list[dict] = []
        self.accum: dict[str, float] = {}
        self.skipped = 0
        self._logs = StepLogs()  # this window's per-step logs, on the device; folded into accum when read
        self.best: dict = {}
        self.elapsed = 0.0
        seed_everything(cfg.run.seed)
        if resumed is not None:
            self._restore(resumed)

    # -- run directory ------------------------------------------------------------------------------------
    def _check_out_dir(self, resume: bool, overwrite: bool) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise UserError(f"out_dir {str(out)!r} is a file; valid: a new or empty directory")
        io.check_writable_dir(out, "out_dir")
        if not resume:
            check_new_run_dir(out, overwrite)
        elif not (out / CHECKPOINT).is_file():
            what = ("does not exist" if not out.exists() else
                    "holds config.yaml but no checkpoint.pt (the run stopped before its first checkpoint; start "
                    "it again with overwrite=True)" if (out / CONFIG).exists() else "holds no checkpoint.pt")
            raise UserError(f"cannot resume {str(out)!r}: it {what}; valid: a run directory written by "
                            "finessl-lab train")
        if out.is_dir() and distributed.is_main():  # fail now rather than after building the experiment
            with io.dir_lock(out):  # (rank 0 only: the ranks of one torchrun job would lock each other out)
                pass

    def _check_resumable(self, resumed, cfg: Config) -> None:
        where = repr(str(self.out / CHECKPOINT))
        if not isinstance(resumed, dict) or resumed.get("format") != CHECKPOINT_FORMAT or "config" not in resumed:
            fmt = resumed.get("format") if isinstance(resumed, dict) else type(resumed).__name__
            raise UserError(f"checkpoint {where} is not a finessl-lab training checkpoint of format {CHECKPOINT_FORMAT} "
                            f"(format: {fmt!r}); valid: a checkpoint.pt written by finessl-lab train")
        try:
            old = Config.from_dict(resumed["config"])
        except UserError as e:
            raise UserError(f"checkpoint {where} holds a config this version cannot read ({e})") from None
        changed = diff(old, cfg, ignore=RESUME_IGNORED)
        if changed:
            raise UserError(f"cannot resume {str(self.out)!r} with a different config ({describe_diff(old, cfg, changed)}); "
                            f"valid: the run's own config.yaml, changing only {', '.join(RESUME_IGNORED)}")

    def _prepare_out_dir(self) -> None:
        """Under the directory lock, before anything is written: clear a replaced run and stale temp files."""
        if self.overwrite:
            for f in held_run_files(self.out):
                (self.out / f).unlink()
            self.overwrite = False
        io.remove_stale_temps(self.out, RUN_FILES)

    # -- checkpoint ---------------------------------------------------------------------------------------
    def _state(self) -> dict:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "step": self.step,
                "model": self.exp.model.trainable_state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "algorithm": self.algorithm.state_dict(), "hooks": {h.name: h.state_dict() for h in self.hooks},
                "rng": rng, "rows": self.rows, "accum": self._fold_logs(agree=False), "skipped": self.skipped,
                "best": self.best, "elapsed": self.elapsed}

    def _restore(self, s: dict) -> None:
        self.exp.model.load_trainable_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        self.algorithm.load_state_dict(s["algorithm"])
        missing = [h.name for h in self.hooks if h.name not in s["hooks"]]
        if missing:
            raise UserError(f"checkpoint has no state for hook(s) {missing}; valid hooks in it: {sorted(s['hooks'])}")
        for h in self.hooks:
            h.load_state_dict(s["hooks"][h.name])
        random.setstate(s["rng"]["python"])
        np.random.set_state(s["rng"]["numpy"])
        torch.set_rng_state(s["rng"]["torch"])
        if "cuda" in s["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])
        self.step, self.rows, self.accum = s["step"], s["rows"], s["accum"]
        self.skipped, self.best, self.elapsed = s["skipped"], s["best"], s["elapsed"]
        self.checkpoint_step = self.step

    def save_checkpoint(self) -> Path | None:
        self.accum = distributed.mean_dict(self.accum)  # every rank saves / resumes the same epoch logs
        if self.out is None:
            return None
        path = io.save_checkpoint(self.out / CHECKPOINT, self._state())
        self.checkpoint_step = self.step
        return path

    def _last_checkpoint(self) -> str:
        if self.out is None:
            return "none (no out_dir)"
        if self.checkpoint_step is None:
            return "none (no checkpoint written yet)"
        return f"{self.out / CHECKPOINT} (after step {self.checkpoint_step})"

    # -- one step -----------------------------------------------------------------------------------------
    def _train_step(self, batch) -> StepRecord | None:
        e, cfg = self.exp, self.cfg
        if _off_device(batch, e.device):
            batch = batch.to(e.device, non_blocking=True)
        batch = batch.normalized(getattr(e.transforms, "mean", None), getattr(e.transforms, "std", None))  # uint8 views
        if self._autocast:
            with autocast(e.device, e.precision):
                out = self._forward(batch)
        else:  # (entering the nullcontext cost two Python frames per step)
            out = self._forward(batch)
        # one host sync per step, only with nan_policy=skip; every rank skips the same step under torchrun
        if cfg.run.nan_policy == "skip" and not distributed.all_true(torch.isfinite(out.loss)):
            if self._ddp is not None:
                out.loss.backward()  # DDP expects a backward after each forward; the NaN grads are dropped
            self.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return None
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():  # fp16: loss scaling
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:  # (what the disabled scaler's calls reduce to)
            out.loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        self._logs.add(self.step, out.loss, out.logs, cfg.run.steps_per_epoch)  # on the device: no sync
        return StepRecord(self.step, self.step // cfg.run.steps_per_epoch, out.logs, batch.u_index,
                          out.probs_main, out.probs_aux, out.pseudo_label, out.mask, out.weight,
                          batch.u_true, batch.u_ood)

    def _forward(self, batch):
        """The step's forward: the algorithm's losses on the batch's views (features, or images through the
        backbone), inside DDP under torchrun."""
        e = self.exp
        model = e.model
        labeled_only = batch.u_weak is None
        views = [batch.x] if labeled_only else [batch.x, batch.u_weak, batch.u_strong1, batch.u_strong2]
        wd = weight_dtype(e.precision)
        if self._ddp is not None:  # torchrun: the same step inside DDP, which averages the gradients
            return self._ddp(torch.cat(views).to(wd), [v.shape[0] for v in views], batch.y, batch.u_index)
        if model.backbone is None:  # feature-cache mode: the views are the features (no copy into one batch)
            feats = [v if v.dtype == wd else v.to(wd) for v in views]
        else:
            feats = model.features(torch.cat(views).to(wd)).split([v.shape[0] for v in views])
        u = None if labeled_only else UnlabeledViews(feats[1], [feats[2], feats[3]])
        return self.algorithm.step(Heads(model.main, model.aux), feats[0], batch.y, u, batch.u_index)

    def _fold_logs(self, agree: bool = True) -> dict:
        """Read this window's step logs (one host read) into ``accum``; nan_policy=stop raises NonFiniteLoss for the
        first step of the window whose loss was NaN/Inf (the last checkpoint on disk predates it)."""
        sums, n, bad = self._logs.read()
        for k, v in sums.items():
            self.accum[k] = self.accum.get(k, 0.0) + v
        if n:
            self.accum["_n"] = self.accum.get("_n", 0.0) + n
        # torchrun: every rank stops at the same read (agree=False inside rank 0's checkpoint, where the loop has
        # just folded and agreed: a collective there would wait for ranks that write no checkpoint)
        if (distributed.any_flag(bad is not None) if agree else bad is not None):
            step, loss = bad if bad is not None else (self.step - 1, "NaN/Inf on another rank")
            hint = (f"continue from it with --resume {self.out} --set run.nan_policy=skip (Python: "
                    f"cfg.run.nan_policy='skip'; train(cfg, out, resume=True)) to skip such steps, or lower optim.lr "
                    f"and start again" if self.checkpoint_step is not None else
                    "lower optim.lr (or check the data and model.logit_scale) and start again, or set "
                    "run.nan_policy=skip to skip such steps")
            raise NonFiniteLoss(f"loss is {loss} at step {step + 1} of {self.cfg.total_steps}; training stopped; "
                                f"last good checkpoint: {self._last_checkpoint()}; {hint} (seen when the logs were read "
                                f"after step {self.step})")
        return self.accum

    # -- rounds (FPL / IFPL / GRIP) --------------------------------------------------------------------------
    def _round_context(self) -> RoundContext:
        e = self.exp

        def predict_unlabeled() -> Tensor:
            if e.unlabeled_eval is None:
                raise UserError(f"algorithm {self.cfg.algorithm.name!r} needs the unlabeled set, which this "
                                "experiment was built without")
            e.model.eval()
            logits = predict(e.model, e.unlabeled_eval, e.device, e.precision, self.cfg.run.eval_batch_size,
                             self._eval_head())
            return torch.softmax(logits, dim=1)

        def reset_parameters() -> None:
            e.reset_model()
            self.optimizer.state.clear()

        return RoundContext(predict_unlabeled, reset_parameters)

    # -- evaluation & bookkeeping ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Top-1 of the main head on every evaluation set; the logits stay in ``self.eval_logits`` for hooks."""
        e = self.exp
        self.eval_logits = {name: predict(e.model, s, e.device, e.precision, self.cfg.run.eval_batch_size,
                                          self._eval_head()) for name, s in e.eval_sets.items()}
        return {f"{name}_top1": top1(self.eval_logits[name], s.targets) for name, s in e.eval_sets.items()}

    def _eval_head(self):
        """The algorithm's evaluation logits (``Algorithm.eval_logits``; the main head for all but ULFine)."""
        heads = Heads(self.exp.model.main, self.exp.model.aux)
        return lambda f: self.algorithm.eval_logits(heads, f)

    def _end_epoch(self, epoch: int) -> dict:
        self._fold_logs()
        n = self.accum.pop("_n", 0.0)
        self.accum = distributed.mean_dict(self.accum)  # the global batch's losses (mean of the ranks' means)
        row = {"epoch": epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update({k: float(v) / n for k, v in self.accum.items()} if n else {})
        self.accum = {}
        row.update(self.evaluate())
        row["skipped_steps"] = self.skipped
        for h in self.hooks:
            row.update(self._call_hook(h, "on_epoch_end", epoch, row) or {})
        if "val_top1" in row and row["val_top1"] > self.best.get("val_top1", -1.0):
            self.best = {"val_top1": row["val_top1"], "test_top1_at_best_val": row["test_top1"], "epoch": epoch}
        self.rows.append(row)
        return row

    def summary(self) -> dict:
        last = self.rows[-1] if self.rows else {}
        s = {"test_top1": last.get("test_top1"), "algorithm": self.cfg.algorithm.name, "steps": self.step,
             "epochs_completed": len(self.rows), "seed": self.cfg.run.seed, "dataset": self.cfg.data.dataset,
             "labels_per_class": self.cfg.data.labels_per_class, "backbone": self.cfg.model.backbone,
             "pretrained": self.cfg.model.pretrained, "peft": self.cfg.model.peft,
             "trainable_params": self._trained_params(), "skipped_steps": self.skipped,
             "feature_cache": self.cfg.run.feature_cache, "wall_time_s": round(self.elapsed, 2),
             "device": str(self.exp.device), "precision": self.exp.precision}
        if distributed.is_distributed():
            s["processes"] = distributed.world_size()
        if "val_top1" in last:
            s.update(val_top1=last["val_top1"], best_val=self.best)
        return s

    def _trained_params(self) -> int:
        """Trainable parameters the algorithm actually trains (the aux head counts only if it is used)."""
        n = self.exp.model.num_trainable()
        if not getattr(self.algorithm, "uses_aux", False):
            n -= sum(p.numel() for p in self.exp.model.aux.parameters())
        return n

    def _call_hook(self, h: Hook, method: str, *args):
        """``h.method(*args)``; an exception becomes a :class:`HookError` naming the hook, the step, the last
        checkpoint and how to resume (a UserError or a stop request passes unchanged)."""
        try:
            return getattr(h, method)(*args)
        except (Stopped, UserError):
            raise
        except Exception as exc:  # noqa: BLE001  (re-raised with the hook, the step and the resume hint)
            raise HookError(f"hook {h.name!r} ({type(h).__name__}.{method}) raised {type(exc).__name__}: {exc} "
                            f"at step {self.step + (method == 'on_step')} of {self.cfg.total_steps}; last "
                            f"checkpoint: {self._last_checkpoint()}{self._resume_hint()}") from exc

    def _call_hooks(self, method: str, *args) -> None:
        for h in self.hooks:
            self._call_hook(h, method, *args)

    def _write_outputs(self, final: bool) -> None:
        if self.out is None:
            return
        io.write_csv(self.out / METRICS, self.metrics())
        if final:
            io.write_json(self.out / SUMMARY, self.summary())

    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> dict:
        with ExitStack() as stack:
            if self.out is not None:
                self.out.mkdir(parents=True, exist_ok=True)
                stack.enter_context(io.dir_lock(self.out))
                self._prepare_out_dir()
            return self._fit()

    def _resume_hint(self) -> str:
        return (f"; continue with: finessl-lab train --resume {self.out} (Python: train(cfg, {str(self.out)!r}, "
                f"resume=True))" if self.out is not None else "")

    def _fit(self) -> dict:
        cfg, total, spe = self.cfg, self.cfg.total_steps, self.cfg.run.steps_per_epoch
        every = cfg.run.checkpoint_every or spe
        if self.out is not None:
            io.write_text(self.out / CONFIG, cfg.to_yaml())
        self._call_hooks("on_train_start", self)
        flag: dict = {}
        t0 = time.perf_counter() - self.elapsed
        bar = progress_bar(total=total, initial=self.step, desc=f"{cfg.algorithm.name} seed {cfg.run.seed}",
                           unit="step", disable=not self.progress, leave=True)
        single = 1 if self.cfg.run.feature_cache and self.exp.device.type == "cpu" else None
        single = single or getattr(self.exp, "intra_op_threads", None)  # image mode: the cores workers leave
        describe = lambda: f"; last checkpoint: {self._last_checkpoint()}" + self._resume_hint()  # noqa: E731
        self._ddp = distributed.wrap(self.exp.model, self.algorithm)
        try:
            with _catch_signals(flag, describe), _intra_op_threads(single):
                for batch in self.exp.batches(self.step, total):
                    if self.step % spe == 0:
                        self.algorithm.on_epoch_start(self.step // spe)
                        self.algorithm.on_round_start(self.step // spe, self._round_context())
                    self.exp.model.train()
                    batch = batch if self.exp.sharded else distributed.shard_batch(batch)  # this rank's slice
                    record = self._train_step(batch)
                    if record is not None:
                        self._call_hooks("on_step", distributed.gather_record(record))  # the global batch
                    self.step += 1
                    bar.update(1)
                    epoch_end = self.step % spe == 0 or self.step == total
                    if epoch_end or self.step % every == 0 or flag:
                        self._fold_logs()  # before any checkpoint is written: a NaN loss stops here
                    if epoch_end:
                        row = self._end_epoch((self.step - 1) // spe)
                        bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}", test=f"{row['test_top1']:.2f}")
                    self.elapsed = time.perf_counter() - t0
                    if distributed.any_flag(bool(flag)) and not flag:  # another rank was signalled
                        flag["signal"] = signal.SIGTERM
                    if epoch_end or self.step % every == 0 or flag:
                        path = self.save_checkpoint()
                        if epoch_end and self.step < total:  # the last epoch's files are written below
                            self._write_outputs(final=False)
                    if flag:
                        signum = flag["signal"]
                        saved = (f"checkpoint saved to {path}" if path is not None else
                                 "no checkpoint (no out_dir)")
                        raise Interrupted(f"stopped by {_signal_name(signum)} after step {self.step} of {total}; "
                                          f"{saved}{self._resume_hint()}", signum, self.step, path, total, self.out)
        finally:
            bar.close()
        self.elapsed = time.perf_counter() - t0
        self._write_outputs(final=True)
        self._call_hooks("on_train_end", self)
        distributed.barrier()  # the other ranks wait until rank 0 has written the run's files
        return self.summary()


def train(cfg: Config, out_dir: str | Path | None = None, hooks: list[Hook] | tuple = (), resume: bool = False,
          progress: bool | None = None, *, overwrite: bool = False) -> tuple[dict, pd.DataFrame]:
    """Train one run; return (summary, metrics DataFrame). The Python twin of ``finessl-lab train``.

    ``out_dir`` must not hold another run unless ``overwrite=True`` (replace it) or ``resume=True`` (continue it
    from its checkpoint). SIGINT/SIGTERM (Ctrl-C, "interrupt kernel") save a checkpoint and raise
    :class:`Interrupted`; a NaN/Inf loss raises :class:`NonFiniteLoss` (or is skipped with run.nan_policy=skip)."""
    trainer = Trainer(cfg, out_dir, hooks=hooks, resume=resume, progress=progress, overwrite=overwrite)
    summary = trainer.fit()
    return summary, trainer.metrics()
