"""Train several head-level runs together: one stacked step for runs that differ only in seed or scalars.

A head-level step is a few small matrix products; on a CPU (and even more on a GPU) its time goes to dispatching
~500 tiny ops, not to arithmetic. K runs that share the data, the feature cache and the algorithm's code can share
those dispatches: their heads are stacked into [K, ...] tensors and the algorithm's own ``step`` runs once under
``torch.func.vmap`` for all of them. Everything that makes a run *that* run stays per run:

  * each run is a normal :class:`~finessl_lab.trainer.Trainer` (its own Experiment: split, batches, head init from
    its seed), so its initial weights and its sampling stream are exactly those of a sequential run;
    :func:`build_experiments` loads the data set, backbone and feature cache once for all of them (a run's own
    build is mostly that: ~0.25 s of a 0.4 s short run) and builds each run's split and heads from its seed;
  * all runs read one bank of the cached views in fp32, unit rows for cosine heads (normalised once instead of
    every step, and kept for the next stacked runs on the same features); each run draws its rows by row number
    with a FeatureBatches of its own split view, and a step gathers every run's rows with one index_select into
    one [K, n, D] buffer kept across steps (no per-run gather, stack or normalisation; FineSSL's concatenation
    of the two strong views is a slice of it); the paired main / aux products' backward reads those rows in
    order (:class:`_Product`);
  * the algorithm's tensor state (``Algorithm.stack_state``: FineSSL's pace slots, class counts and margins) is
    stacked per run; runs whose algorithm options differ are vmapped in separate groups (one call each);
  * each run's own SGD and lr schedule step its own parameters (which are views of the stacked tensors), so lr,
    momentum, weight decay and schedule may differ between runs; while the runs share this step's SGD scalars,
    one update by torch SGD's own ops on the stacked tensors gives every run the same bits;
  * per-epoch evaluation, hooks, metrics.csv, summary.json and checkpoint.pt are each run's own, written by its
    Trainer: a stacked run directory is a normal run directory (``load_run``, ``--resume``).

Results equal sequential runs up to float rounding of the batched matrix products (tests/test_stacked.py: the
same test accuracy, losses within 1e-5; the shared build, the bank's rows and the stacked SGD are bit-identical
to each run's own). Stacking needs feature-cache mode with linear heads (no backbone), fp32, and an algorithm
that declares its ``stack_state`` (supervised, fixmatch, finessl); :func:`stackable` says why not otherwise.
"""
from __future__ import annotations

import random
import time
import weakref
from contextlib import ExitStack

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from . import io
from .algorithms import Heads, UnlabeledViews
from .errors import UserError
from .hooks import StepRecord
from .models.heads import CosineHead
from .progress import progress_bar
from .rundir import CONFIG
from .trainer import Interrupted, Trainer, _catch_signals, _intra_op_threads, _signal_name

# keys that may differ between stacked runs (everything else must be equal): seeds and scalar hyper-parameters
STACK_FREE = ("run.seed", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.nesterov",
              "optim.warmup_steps", "algorithm.")


def stackable(trainers: list[Trainer]) -> str | None:
    """None if these trainers can train stacked, else the reason in one line."""
    if len(trainers) < 2:
        return "fewer than 2 runs"
    from .config import diff_leaves, leaves

    t0 = trainers[0]
    first = leaves(t0.cfg)
    for t in trainers:
        e, cfg = t.exp, t.cfg
        if e.model.backbone is not None or not cfg.run.feature_cache:
            return f"run {cfg.run.seed}: not head-level (needs run.feature_cache=true and model.peft=linear)"
        if e.precision != "fp32":
            return f"run {cfg.run.seed}: precision {e.precision} (stacking needs fp32)"
        if type(t.algorithm).stack_state is None:
            return f"algorithm {cfg.algorithm.name!r} declares no stack_state (stackable: supervised, fixmatch, finessl)"
        if t.step != 0:
            return f"run {cfg.run.seed}: resumes at step {t.step} (only fresh runs are stacked)"
        changed = diff_leaves(first, leaves(cfg), STACK_FREE)
        if changed:
            return f"runs differ in {', '.join(changed)} (stacked runs may differ only in {', '.join(STACK_FREE)})"
        if type(t.algorithm) is not type(t0.algorithm) or e.device != t0.exp.device:
            return "runs differ in algorithm or device"
        shapes = [tuple(p.shape) for p in e.model.trainable_parameters()]
        if shapes != [tuple(p.shape) for p in t0.exp.model.trainable_parameters()]:
            return "runs have heads of different shapes"
    return None


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, path: str, value) -> None:
    *head, last = path.split(".")
    for part in head:
        obj = getattr(obj, part)
    setattr(obj, last, value)


class _Bound(nn.Module):
    """A head evaluated with one run's slice of the stacked tensors (inside vmap)."""

    def __init__(self, head: nn.Module, tensors: dict):
        super().__init__()
        self.head, self.tensors = head, tensors

    def forward(self, x: Tensor) -> Tensor:
        return functional_call(self.head, self.tensors, (x,))


class _Unit(nn.Module):
    """A cosine head on inputs that already are unit rows: ``scale * (x @ w.T)`` with ``w`` the head's unit rows
    (both normalised once per step, outside vmap, by the same ops as CosineHead.forward)."""

    def __init__(self, w: Tensor, scale: Tensor):
        super().__init__()
        self.w, self.scale = w, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * (x @ self.w.t())


def _storage_key(x: Tensor) -> tuple:
    """Where ``x``'s rows live (its unbatched tensor inside vmap): ``f`` and ``f.detach()`` share the key (without
    functorch's unwrapping, each tensor object is its own key: still correct, one product more per detached view)."""
    try:
        from torch._C._functorch import get_unwrapped, is_batchedtensor
    except ImportError:  # pragma: no cover (torch without these internals)
        return ("object", id(x))
    while is_batchedtensor(x):
        x = get_unwrapped(x)
    return x.data_ptr(), tuple(x.shape), x.stride()


class _Product(torch.autograd.Function):
    """``x @ w.T`` for constant rows ``x`` (cached features: no gradient), whose backward forms ``dY.T @ x``
    ([C, n] x [n, D], the rows of ``x`` read in order) instead of autograd's ``(x.T @ dY).T`` (a transposed walk
    over ``x``: ~1.8x slower for [K, 256, 1280] rows under vmap); the same sums, the same gradient
    (tests/test_stacked.py compares them). Under vmap it is applied once to the stacked [K, n, D] and
    [K, C, D] tensors (its own ``vmap`` rule: generated rules cost ~0.3 ms a call)."""

    @staticmethod
    def forward(x: Tensor, w: Tensor) -> Tensor:
        return x @ w.transpose(-1, -2)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, = ctx.saved_tensors
        return None, gy.transpose(-1, -2) @ x

    @staticmethod
    def vmap(info, in_dims, x: Tensor, w: Tensor):
        x, w = (t.movedim(d, 0) if d is not None else t.expand(info.batch_size, *t.shape)
                for t, d in zip((x, w), in_dims))
        return _Product.apply(x, w), 0


def _product(x: Tensor, w: Tensor) -> Tensor:
    return _Product.apply(x, w) if torch.is_grad_enabled() and not x.requires_grad else x @ w.t()


class _UnitPair:
    """The main and aux cosine heads on unit rows, one product per input for both: ``x @ [W_main; W_aux].T``
    (the algorithm calls both heads on the same views: weak, strong, labeled; the input is read once, and the
    backward is one product too). Columns equal the separate products (a product's columns do not depend on
    the other columns); the gradient of each head's rows is its own (the features are constants)."""

    def __init__(self, main_t: tuple[Tensor, Tensor], aux_t: tuple[Tensor, Tensor]):
        (wm, sm), (wa, sa) = main_t, aux_t
        self.w, self.c, self.scales = torch.cat([wm, wa]), wm.shape[0], (sm, sa)
        self.cache: dict = {}

    def logits(self, x: Tensor, which: int) -> Tensor:
        key = (_storage_key(x), torch.is_grad_enabled())
        hit = self.cache.get(key)
        if hit is None:  # holding x keeps its memory (and so the key) from being reused within the step
            hit = self.cache[key] = (x, _product(x, self.w))
        y = hit[1]
        return self.scales[which] * (y[..., :self.c] if which == 0 else y[..., self.c:])


class _PairHead(nn.Module):
    def __init__(self, pair: _UnitPair, which: int):
        super().__init__()
        self.pair, self.which = pair, which

    def forward(self, x: Tensor) -> Tensor:
        return self.pair.logits(x, self.which)


def _unit_head(head: nn.Module, tensors: dict) -> tuple[Tensor, Tensor]:
    """[K, C, D] unit rows and [K] scales of stacked CosineHead tensors, as CosineHead.normalised computes them."""
    w = torch.nn.functional.normalize(tensors["weight"].float(), dim=-1)
    scale = tensors["log_scale"].float().exp() if head.scale_param == "log" else tensors["logit_scale"].float()
    return w, scale


# the last bank built (one at most, <= StackedRuns._BANK_KEEP bytes): the next StackedRuns on the same cached
# features (the in-process feature cache hands out the same tensors; ``compare --stack`` stacks each algorithm's
# seeds in turn) reuses it instead of filling 82 MB again (~45 ms for the embedded preset); it is read, never
# written, and is dropped when the features are freed or modified (their version counters)
_BANK_KEPT: list = []


def _kept_bank(weak: Tensor, strong: Tensor, unit: bool, dev) -> Tensor | None:
    for w, s, wv, sv, u, d, bank in _BANK_KEPT:
        if w() is weak and s() is strong and (wv, sv, u, d) == (weak._version, strong._version, unit, dev):
            return bank
    return None


class StackedRuns:
    """Train ``trainers`` (fresh runs, see :func:`stackable`) together; ``fit()`` returns their summaries."""

    def __init__(self, trainers: list[Trainer]):
        why = stackable(trainers)
        if why is not None:
            raise UserError(f"these runs cannot be trained stacked: {why}; valid: train them one by one (compare "
                            "without --stack)")
        self.trainers = trainers
        # each run's RNG state right after its Trainer seeded it (head-level steps draw no random numbers): its
        # checkpoints record it, as a sequential run's would
        self.rng = []
        for t in trainers:
            from .trainer import seed_everything

            seed_everything(t.cfg.run.seed)
            self.rng.append((random.getstate(), np.random.get_state(), torch.get_rng_state()))
        self.K = len(trainers)
        # the heads' tensors, stacked [K, ...]; each run's parameters become views of them (its optimiser updates
        # them in place, so the stacked tensors always hold every run's current weights)
        self.heads = {}
        for h in ("main", "aux"):
            mods = [getattr(t.exp.model, h) for t in trainers]
            tensors = {}
            for name, _ in list(mods[0].named_parameters()) + list(mods[0].named_buffers()):
                stacked = torch.stack([_get(m, name).detach() for m in mods])
                for k, m in enumerate(mods):
                    _get(m, name).data = stacked[k]
                tensors[name] = stacked.requires_grad_(_get(mods[0], name).requires_grad)
            self.heads[h] = tensors
        # groups of runs sharing the algorithm config: one vmapped call each
        groups: dict = {}
        for k, t in enumerate(trainers):
            groups.setdefault(repr(t.cfg.algorithm), []).append(k)
        self.groups = list(groups.values())  # (groups of 1, 3 or 5 of 9 runs measured slower: dispatch counts)
        self.state_paths = type(trainers[0].algorithm).stack_state
        self.state: list[dict[str, Tensor]] = [{} for _ in self.groups]
        self._state_in()
        self.bank, self.row_sources = self._shared_bank()
        self._buffers: dict = {}
        self._sgd = None  # the stacked SGD's plan (see _sgd_stacked); False: the runs' own optimizers

    # -- the shared feature bank -------------------------------------------------------------------------
    pair_heads = True  # main and aux heads share one product per input (_UnitPair); False: one product each
    _BANK_LIMIT = 2 << 30  # bytes of the fp32 bank; larger banks are gathered per run and normalised per step
    _BANK_BLOCK = 256  # rows normalised at a time (1.3 MB at D = 1280)
    _BANK_KEEP = 256 << 20  # a bank up to this size is kept for the next stacked runs on the same features

    def _shared_bank(self):
        """When all runs read one feature cache: the weak and strong views as one fp32 bank [rows, D], unit rows
        for cosine heads (normalised once here, by CosineHead's own op, instead of every step), and per run a
        FeatureBatches over a bank of *row numbers*, so each run draws exactly the rows (and labels, indices) its
        own FeatureBatches draws; a step then gathers all runs' rows straight into one [K, n, D] tensor.
        (None, None) otherwise."""
        from .data.batches import FeatureBatches

        exps = [t.exp for t in self.trainers]
        feats = exps[0].features
        if feats is None or any(e.features is not feats for e in exps):
            return None, None
        weak, strong = feats["weak"], feats["strong"]
        rows = weak.shape[0] * weak.shape[1] + strong.shape[0] * strong.shape[1]
        if rows >= 2 ** 24 or rows * weak.shape[-1] * 4 > self._BANK_LIMIT:  # row numbers must be exact in fp32
            return None, None
        dev = exps[0].device
        model = exps[0].model
        unit = all(isinstance(getattr(model, h), CosineHead) for h in ("main", "aux"))
        bank = _kept_bank(weak, strong, unit, dev)
        if bank is None:
            bank = self._fill_bank(weak, strong, rows, unit, dev)
            if bank.numel() * 4 <= self._BANK_KEEP:
                _BANK_KEPT[:] = [(weakref.ref(weak), weakref.ref(strong), weak._version, strong._version, unit,
                                  dev, bank)]
        ids = torch.arange(rows, dtype=torch.float32)
        n_weak = weak.shape[0] * weak.shape[1]
        wid = ids[:n_weak].view(weak.shape[0], weak.shape[1], 1)
        sid = ids[n_weak:].view(strong.shape[0], strong.shape[1], 1)
        return bank, [FeatureBatches(wid, sid, e.split_view, torch.device("cpu")) for e in exps]

    def _fill_bank(self, weak: Tensor, strong: Tensor, rows: int, unit: bool, dev) -> Tensor:
        bank = torch.empty(rows, weak.shape[-1], device=dev)
        with _intra_op_threads(1 if dev.type == "cpu" else None):  # as the sequential step normalises its rows
            # filled in blocks of rows that stay in cache: fp16 -> fp32, then F.normalize's own ops in place
            # (x / max(||x||, eps), row by row: bit-identical to normalising the whole, tests/test_stacked.py)
            start = 0
            for src in (weak.reshape(-1, weak.shape[-1]), strong.reshape(-1, strong.shape[-1])):
                for a in range(0, src.shape[0], self._BANK_BLOCK):
                    blk = bank[start + a:start + min(a + self._BANK_BLOCK, src.shape[0])]
                    blk.copy_(src[a:a + blk.shape[0]])
                    if unit:
                        blk.div_(blk.norm(2, -1, keepdim=True).clamp_min(1e-12))
                start += src.shape[0]
        return bank

    # -- algorithm state: per-run attributes <-> stacked tensors -----------------------------------------
    def _state_in(self) -> None:
        for g, runs in enumerate(self.groups):
            self.state[g] = {p: torch.stack([_get(self.trainers[k].algorithm, p) for k in runs])
                             for p in self.state_paths}

    def _state_out(self) -> None:
        for g, runs in enumerate(self.groups):
            for i, k in enumerate(runs):
                for p in self.state_paths:
                    _set(self.trainers[k].algorithm, p, self.state[g][p][i].clone())

    # -- one stacked step --------------------------------------------------------------------------------
    def _gather(self, g: int, bs: list, fields: tuple) -> list[Tensor]:
        """Every run's rows of ``fields`` (row numbers into the bank) gathered by one index_select into one
        [K, n_x + n_weak + ..., D] buffer kept from step to step (a fresh 20 MB tensor per step costs its page
        faults; the step's backward has run before the next gather overwrites it); returns each field's
        [K, n, D] slice. The strong views lie side by side, so their concatenation is a slice too."""
        ids = torch.cat([torch.stack([getattr(b, f) for b in bs]) for f in fields], 1).squeeze(-1)
        key = (g, tuple(ids.shape))
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(*ids.shape, self.bank.shape[-1], device=self.bank.device)
        torch.index_select(self.bank, 0, ids.reshape(-1).to(self.bank.device, torch.long),
                           out=buf.view(-1, buf.shape[-1]))
        out, start = [], 0
        for f in fields:
            n = getattr(bs[0], f).shape[0]
            out.append(buf[:, start:start + n])
            start += n
        return out

    def _group_step(self, g: int, runs: list[int], batches: list):
        alg = self.trainers[runs[0]].algorithm  # the code carrier: runs of a group share the algorithm config
        model = self.trainers[runs[0]].exp.model
        paths = self.state_paths
        idx = torch.tensor(runs, device=self.heads["main"][next(iter(self.heads["main"]))].device)
        heads = {h: {n: t.index_select(0, idx) if len(runs) < self.K else t for n, t in ts.items()}
                 for h, ts in self.heads.items()}
        bs = [batches[k] for k in runs]
        cosine = all(isinstance(getattr(model, h), CosineHead) for h in ("main", "aux"))
        has_u = bs[0].u_weak is not None and alg.uses_unlabeled
        fields = ("x", "u_weak", "u_strong1", "u_strong2") if has_u else ("x",)
        if self.bank is not None:  # the batches hold row numbers of the bank (its rows already unit for cosine)
            x, *u = self._gather(g, bs, fields)
        else:
            unit = (lambda t: torch.nn.functional.normalize(t.float(), dim=-1)) if cosine else (lambda t: t)
            x, *u = [unit(torch.stack([getattr(b, f) for b in bs])) for f in fields]
        y = torch.stack([b.y for b in bs])
        u = u + [torch.stack([b.u_index for b in bs])] if has_u else [None] * 4
        if cosine:  # features and weights normalised once per step for all runs (CosineHead's own ops)
            heads = {h: _unit_head(getattr(model, h), ts) for h, ts in heads.items()}

        pair = getattr(alg, "uses_aux", False) and self.pair_heads  # an unused aux head: no product for it

        def one(main_t, aux_t, state, x, y, uw, us1, us2, us12, uidx):
            for p in paths:
                _set(alg, p, state[p])
            if cosine and pair:
                both = _UnitPair(main_t, aux_t)
                hs = Heads(_PairHead(both, 0), _PairHead(both, 1))
            elif cosine:
                hs = Heads(_Unit(*main_t), _Unit(*aux_t))
            else:
                hs = Heads(_Bound(model.main, main_t), _Bound(model.aux, aux_t))
            views = None
            if uw is not None:
                views = UnlabeledViews(uw, [us1, us2])
                if us12 is not None:  # FineSSL's concatenation of the two strong views: already one slice
                    views._both = us12
            out = alg.step(hs, x, y, views, uidx)
            extra = {k: v for k, v in (("probs_main", out.probs_main), ("probs_aux", out.probs_aux),
                                      ("pseudo_label", out.pseudo_label), ("mask", out.mask),
                                      ("weight", out.weight)) if v is not None}
            logs = {k: torch.as_tensor(v, device=out.loss.device) for k, v in out.logs.items()}
            return out.loss, logs, extra, {p: _get(alg, p) for p in paths}

        both = None
        if has_u and self.bank is not None:  # adjacent in the buffer: their concatenation is a view
            s1, s2 = u[1], u[2]
            both = s1.as_strided((s1.shape[0], s1.shape[1] + s2.shape[1], s1.shape[2]), s1.stride())
        dims = (0, 0, 0, 0, 0) + ((0, 0, 0, 0 if both is not None else None, 0) if has_u else (None,) * 5)
        loss, logs, extra, state = vmap(one, in_dims=dims, randomness="error")(
            heads["main"], heads["aux"], self.state[g], x, y, *u[:3], both, u[3])
        self.state[g] = state
        return loss, logs, extra

    def _step(self, batches: list) -> Tensor:
        losses = []
        for ts in self.heads.values():
            for t in ts.values():
                t.grad = None
        for g, runs in enumerate(self.groups):
            loss, logs, extra = self._group_step(g, runs, batches)
            losses.append(loss.sum())
            self._pending.append((runs, loss, logs, extra))
            # backward per group, while its features are still in cache; the groups' runs are disjoint, so the
            # accumulated gradient of run k's head is d(loss_k)/d(head_k) (plus exact zeros from other groups)
            losses[-1].backward()
        for h, ts in self.heads.items():
            for name, t in ts.items():
                if t.grad is None:
                    continue
                for k, tr in enumerate(self.trainers):
                    _get(getattr(tr.exp.model, h), name).grad = t.grad[k]
        if not self._sgd_stacked():
            for t in self.trainers:
                t.optimizer.step()
        for t in self.trainers:
            t.scheduler.step()
        return torch.stack(losses).sum()

    # -- SGD on the stacked tensors ----------------------------------------------------------------------
    _SGD_KEYS = ("lr", "weight_decay", "momentum", "dampening", "nesterov", "maximize")

    def _sgd_plan(self) -> list | None:
        """Per stacked tensor: [tensor, each run's parameter (its view), the param group holding it, momentum
        buffers] when every run trains with a plain torch SGD holding its view; None otherwise."""
        plan = []
        for ts in self.heads.values():
            for t in ts.values():
                if not t.requires_grad:
                    continue
                views, groups = [], []
                for k, tr in enumerate(self.trainers):
                    opt = tr.optimizer
                    if type(opt) is not torch.optim.SGD or any(opt.defaults.get(n) for n in
                                                               ("differentiable", "fused", "foreach")):
                        return None
                    hit = [(q, g) for g in opt.param_groups for q in g["params"]
                           if q.data_ptr() == t[k].data_ptr() and q.shape == t.shape[1:]]
                    if len(hit) != 1:
                        return None
                    views.append(hit[0][0])
                    groups.append(hit[0][1])
                plan.append([t, views, groups, None])
        return plan

    def _sgd_stacked(self) -> bool:
        """One SGD update of each stacked tensor for all runs, by torch SGD's own formula and ops (so each run's
        rows get the bits its own ``optimizer.step()`` would give them), when all runs share this step's SGD
        scalars (lr after its schedule, weight decay, momentum, ...); False: each run steps its own optimizer.
        The first step is the runs' own (it creates their momentum buffers); the buffers are then moved into
        one stacked buffer per tensor, of which each run's optimizer state holds its view (for checkpoints and
        for steps taken by the runs' own optimizers)."""
        if self._sgd is None:  # first call: the runs' own optimizers create their state
            self._sgd = self._sgd_plan() or False
            return False
        if self._sgd is False:
            return False
        todo = []
        for entry in self._sgd:
            t, views, groups, buf = entry
            if t.grad is None:  # SGD skips a parameter without a gradient
                continue
            hp = {tuple(g[n] for n in self._SGD_KEYS) for g in groups}
            if len(hp) != 1:
                return False
            hp = hp.pop()
            if hp[2] != 0 and buf is None:
                bufs = [tr.optimizer.state.get(v, {}).get("momentum_buffer") for tr, v in zip(self.trainers, views)]
                if any(b is None for b in bufs):
                    return False
                entry[3] = torch.stack(bufs)
                for k, (tr, v) in enumerate(zip(self.trainers, views)):
                    tr.optimizer.state[v]["momentum_buffer"] = entry[3][k]
            todo.append((t, entry[3], hp))
        with torch.no_grad():
            for t, buf, (lr, wd, momentum, dampening, nesterov, maximize) in todo:
                grad = -t.grad if maximize else t.grad
                if wd != 0:
                    grad = grad.add(t, alpha=wd)
                if momentum != 0:
                    buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                    grad = grad.add(buf, alpha=momentum) if nesterov else buf
                t.add_(grad, alpha=-lr)
        return True

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        with ExitStack() as stack:
            for t in self.trainers:
                if t.out is not None:
                    t.out.mkdir(parents=True, exist_ok=True)
                    stack.enter_context(io.dir_lock(t.out))
                    t._prepare_out_dir()
            return self._fit()

    def _checkpoint(self, k: int):
        t = self.trainers[k]
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.setstate(self.rng[k][0])
        np.random.set_state(self.rng[k][1])
        torch.set_rng_state(self.rng[k][2])
        try:
            return t.save_checkpoint()
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])

    def _fit(self) -> list[dict]:
        ts = self.trainers
        cfg = ts[0].cfg
        total, spe = cfg.total_steps, cfg.run.steps_per_epoch
        every = cfg.run.checkpoint_every or spe
        for t in ts:
            if t.out is not None:
                io.write_text(t.out / CONFIG, t.cfg.to_yaml())
            t._call_hooks("on_train_start", t)
        iters = [iter(t.exp.batches(0, total)) for t in ts] if self.row_sources is None else \
            [map(src.__getitem__, range(total)) for src in self.row_sources]
        flag: dict = {}
        t0 = time.perf_counter()
        progress = any(t.progress for t in ts)
        bar = progress_bar(total=total, desc=f"{self.K} stacked {cfg.algorithm.name} runs", unit="step",
                           disable=not progress, leave=True)
        threads = 1 if ts[0].exp.device.type == "cpu" else None
        try:
            with _catch_signals(flag), _intra_op_threads(threads):
                for step in range(total):
                    batches = [next(it) for it in iters]
                    batches = [b.to(ts[0].exp.device, non_blocking=True) for b in batches]
                    if step % spe == 0:
                        self._state_out()
                        for t in ts:
                            t.algorithm.on_epoch_start(step // spe)
                        self._state_in()
                    for t in ts:
                        t.exp.model.train()
                    self._pending = []
                    self._step(batches)
                    for runs, loss, logs, extra in self._pending:
                        # each run's rows as views, one unbind per tensor (not K indexing ops each)
                        loss = loss.detach().unbind(0)
                        logs = {n: v.detach().unbind(0) for n, v in logs.items()}
                        extra = {n: v.unbind(0) for n, v in extra.items()}
                        for i, k in enumerate(runs):
                            t, b = ts[k], batches[k]
                            t._logs.add(step, loss[i], {n: v[i] for n, v in logs.items()}, spe)
                            ex = {n: v[i] for n, v in extra.items()}
                            rec = StepRecord(step, step // spe, {n: v[i] for n, v in logs.items()}, b.u_index,
                                             ex.get("probs_main"), ex.get("probs_aux"), ex.get("pseudo_label"),
                                             ex.get("mask"), ex.get("weight"), b.u_true, b.u_ood)
                            t._call_hooks("on_step", rec)
                    for t in ts:
                        t.step += 1
                    bar.update(1)
                    epoch_end = (step + 1) % spe == 0 or step + 1 == total
                    if epoch_end or (step + 1) % every == 0 or flag:
                        self._state_out()
                        for k, t in enumerate(ts):
                            t._fold_logs()
                            if epoch_end:
                                t._end_epoch(step // spe)
                            t.elapsed = time.perf_counter() - t0
                            self._checkpoint(k)
                            if epoch_end and step + 1 < total:
                                t._write_outputs(final=False)
                    if flag:
                        signum = flag["signal"]
                        raise Interrupted(f"stopped by {_signal_name(signum)} after step {step + 1} of {total}; "
                                          f"checkpoints saved in each run directory; continue each run with "
                                          f"finessl-lab train --resume <run dir>", signum, step + 1)
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        out = []
        for t in ts:
            t.elapsed = elapsed  # the runs trained together: each summary names the shared wall time
            t._write_outputs(final=True)
            t._call_hooks("on_train_end", t)
            out.append({**t.summary(), "stacked_runs": self.K})
        return out


# config keys that build a different experiment even when the runs may stack: none of these may differ for the
# runs to share one data set, backbone and feature cache (the seed only changes the split and the heads' init)
_SHARED_BUILD_FREE = ("run.seed", "optim.", "algorithm.", "run.epochs", "run.steps_per_epoch", "run.max_steps",
                      "run.checkpoint_every", "run.nan_policy", "run.record", "run.tensorboard", "run.progress")


def _shares_build(base, cfg, cfg_leaves: tuple[dict, dict] | None = None) -> bool:
    """Can ``cfg``'s experiment (``cfg`` validated and resolved) reuse ``base``'s data set and feature cache?
    Only head-level runs whose backbone does not depend on the seed (not scratch_cnn) and whose heads need no text
    prototypes. ``cfg_leaves``: the :func:`~finessl_lab.config.leaves` of ``base.cfg`` and ``cfg`` if already
    computed."""
    from .config import diff_leaves, leaves
    from .models.backbones import SCRATCH_CNN

    c = base.cfg
    return (base.features is not None and base.model.backbone is None and c.run.feature_cache
            and c.model.peft == "linear" and c.model.backbone != SCRATCH_CNN
            and c.model.head_init not in ("prototype", "text")
            and not diff_leaves(*(cfg_leaves or (leaves(c), leaves(cfg, resolved=True))), _SHARED_BUILD_FREE))


def _sibling_experiment(base, cfg, clean: Tensor | None = None):
    """``build_experiment(cfg)`` for a head-level run that differs from ``base``'s only in seed / scalars
    (:func:`_shares_build`): the data set, the feature cache and the test sets are ``base``'s (not loaded again);
    the split, the batches and the heads are built from ``cfg``'s seed exactly as build.py builds them.
    ``cfg`` is validated and resolved (build_experiments does it once per config); ``clean``: the clean train
    features in fp32 if already converted (build_experiments converts them once for all siblings)."""
    from .algorithms import REGISTRY
    from .build import EvalSet, Experiment, _needs_unlabeled_pass, make_split_view
    from .data.batches import FeatureBatches
    from .data.settings import make_setting_split
    from .device import weight_dtype
    from .io import cache_dir
    from .models import build_model

    uses_unlabeled = REGISTRY[cfg.algorithm.name].uses_unlabeled
    bundle, feats, device = base.bundle, base.features, base.device
    split = make_setting_split(cfg.data, bundle.train.targets, bundle.num_classes, cfg.run.seed,
                               cache_dir(cfg.run.cache_dir), bundle.key, given=bundle.split)
    targets = np.asarray(bundle.train.targets)
    view = make_split_view(cfg, targets, split, uses_unlabeled)
    clean = feats["train_clean"].float() if clean is None else clean
    n_out = base.num_classes
    model = build_model(cfg.model, n_out, bundle.classes[:n_out], feature_dim=clean.shape[1], text_prototypes=None,
                        labeled_features=clean[split.labeled],
                        labeled_targets=torch.as_tensor(targets[split.labeled], dtype=torch.long),
                        generator=torch.Generator().manual_seed(cfg.run.seed)).to(device, weight_dtype(base.precision))
    source = FeatureBatches(feats["weak"], feats["strong"], view, device)
    batches = lambda first, total: (source[s] for s in range(first, total))  # noqa: E731
    evals = {name: s for name, s in base.eval_sets.items() if name != "val"}  # the test sets: the seed's not in them
    if len(split.val):
        evals["val"] = EvalSet(clean[split.val].to(device), torch.as_tensor(targets[split.val]))
    unl = (EvalSet(clean[split.unlabeled], torch.as_tensor(targets[split.unlabeled]))
           if _needs_unlabeled_pass(cfg) else None)
    return Experiment(cfg, device, base.precision, bundle, split, view, model, batches, evals, base.feature_path,
                      transforms=base.transforms, features=feats, unlabeled_eval=unl)


def build_experiments(cfgs: list, progress: bool = True) -> list:
    """The Experiments of ``cfgs``: the first built by build.py; each other one that differs from it only in seed
    or scalar hyper-parameters reuses its data set, feature cache and test sets (:func:`_sibling_experiment`),
    any other is built on its own."""
    from .algorithms import REGISTRY
    from .build import build_experiment
    from .config import leaves

    exps: list = []
    built_leaves: dict = {}  # config.leaves of each built experiment's config (a resolve deep-copies the tree)

    def _leaves_of(e) -> dict:
        if id(e) not in built_leaves:
            built_leaves[id(e)] = leaves(e.cfg)
        return built_leaves[id(e)]

    clean: dict = {}  # fp32 clean train features per base (20 MB at 4,000 x 1,280: converted once, not per run)
    for c in cfgs:
        resolved = c.validate().resolved() if exps else None  # once per config (validation, fidelity, copies)
        mine = leaves(resolved, resolved=True) if exps else None
        base = next((e for e in exps if _shares_build(e, resolved, (_leaves_of(e), mine))), None)
        if base is None:
            exps.append(build_experiment(c, uses_unlabeled=REGISTRY[c.algorithm.name].uses_unlabeled,
                                         progress=progress))
            continue
        # a sibling's build is a few small row-wise ops (split, class means of the labeled rows, head init): one
        # intra-op thread, as the training step uses (2 threads were 7-10x slower on the busy 2-core machine);
        # tests/test_stacked.py checks that its heads, split and batches equal build_experiment's bit for bit
        with _intra_op_threads(1 if base.device.type == "cpu" else None):
            if id(base) not in clean:
                clean[id(base)] = base.features["train_clean"].float()
            exps.append(_sibling_experiment(base, resolved, clean[id(base)]))
    return exps


def train_stacked(cfgs: list, out_dirs: list | None = None, progress: bool | None = None,
                  overwrite: bool = False) -> list[dict]:
    """Train the runs of ``cfgs`` (head-level, differing only in seed / scalar hyper-parameters) together;
    each writes its normal run directory ``out_dirs[k]`` (None: no files). Returns their summaries."""
    out_dirs = out_dirs if out_dirs is not None else [None] * len(cfgs)
    if len(out_dirs) != len(cfgs):
        raise UserError(f"out_dirs has {len(out_dirs)} entries for {len(cfgs)} configs; valid: one per config")
    exps = build_experiments(cfgs, progress=bool(progress if progress is not None else cfgs[0].run.progress))
    trainers = [Trainer(c, d, progress=progress, overwrite=overwrite, experiment=e)
                for c, d, e in zip(cfgs, out_dirs, exps)]
    return StackedRuns(trainers).fit()
