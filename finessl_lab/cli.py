"""The ``finessl-lab`` command line: train, compare, features, info, diagnose.

Every bad input exits with status 2 and one line ``error: ...`` on stderr naming the value and what is valid
(``--debug`` adds the traceback). Nothing is written before the inputs are validated.

SIGINT / SIGTERM during training save a checkpoint at the current step and exit with 130 / 143 and one line
``interrupted: ...`` saying how to resume; a second signal stops at once.
"""
from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path

from .errors import Stopped, UserError
from .rundir import check_new_run_dir

FLAG_KEYS = {"algorithm": "algorithm.name", "max_steps": "run.max_steps", "labels_per_class": "data.labels_per_class",
             "dataset": "data.dataset", "backbone": "model.backbone", "pretrained": "model.pretrained",
             "data_root": "data.root", "seed": "run.seed", "device": "run.device", "peft": "model.peft",
             "cache_dir": "run.cache_dir", "fidelity": "fidelity"}
EMBEDDED_NOTE = ("note: the embedded default is 5,000 real MNIST digits + an ImageNet-pretrained EfficientNet-Lite0 "
                 "(frozen, cached features, head-level training) - NOT CLIP; paper numbers need the CLIP presets on a GPU.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2
        raise UserError(f"{message} (see '{self.prog} --help')")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named setting (listed by 'finessl-lab info')")
    p.add_argument("--config", help="YAML config file (e.g. a run's config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    for flag, typ in (("--algorithm", str), ("--max-steps", int), ("--labels-per-class", int), ("--dataset", str),
                      ("--backbone", str), ("--pretrained", str), ("--data-root", str), ("--seed", int),
                      ("--device", str), ("--peft", str), ("--cache-dir", str)):
        p.add_argument(flag, type=_typed(flag, typ))
    p.add_argument("--fidelity", choices=("official", "clean"),
                   help="official = the authors' code, clean = our fixes (fills every fidelity item left at auto)")
    p.add_argument("--feature-cache", action="store_true", default=None, help="train heads on cached features")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _typed(flag: str, typ):
    def conv(value: str):
        try:
            return typ(value)
        except ValueError:
            what = "an integer" if typ is int else f"a valid {typ.__name__}"
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}; valid: a whole number, e.g. {flag} 3"
                                             if typ is int else f"{value!r} is not {what}") from None
    conv.__name__ = typ.__name__
    return conv


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finessl-lab", description="Reproduce and explore FineSSL (ICML 2024).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)
    t = sub.add_parser("train", help="train one run")
    _common(t)
    t.add_argument("--out", help="run directory (config.yaml, metrics.csv, summary.json, checkpoint.pt)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in --out")
    c = sub.add_parser("compare", help="several algorithms x seeds on one setting, with a results table")
    _common(c)
    c.add_argument("--algorithms", nargs="+", default=["supervised", "fixmatch", "finessl"])
    c.add_argument("--seeds", nargs="+", type=_typed("--seeds", int), default=[1, 2, 3])
    c.add_argument("--out", required=True, help="directory for runs and results.csv")
    c.add_argument("--overwrite", action="store_true", help="redo runs that already finished")
    c.add_argument("--jobs", type=_typed("--jobs", int), default=1,
                   help="runs trained at the same time, each in its own process (same results as --jobs 1)")
    c.add_argument("--stack", action="store_true",
                   help="train the seeds of each head-level algorithm together, stacked (same results; "
                        "supervised, fixmatch, finessl)")
    f = sub.add_parser("features", help="compute the frozen-backbone feature cache")
    _common(f)
    dg = sub.add_parser("diagnose", help="per-run diagnostics of finished runs: top-1, ECE and AUROC of both heads, "
                                         "pseudo-label entropy (finessl_lab.diagnostics.summarize_runs)")
    dg.add_argument("runs", nargs="+", help="run directories, or directories of runs (e.g. a compare --out)")
    dg.add_argument("--out", help="also write the per-run table to this CSV file")
    dg.add_argument("--device", help="device for the predictions (default: each run's run.device)")
    i = sub.add_parser("info", help="versions, device, locally available weights and datasets")
    i.add_argument("--cache-dir", default="")
    i.add_argument("--data-root", default="")
    i.add_argument("--debug", action="store_true")
    pr = sub.add_parser("presets", help="list every preset with one line each")
    pr.add_argument("--debug", action="store_true")
    r = sub.add_parser("reproduce", help="run the paper's figure/table notebooks (papermill) and write the claims report")
    r.add_argument("--profile", default="embedded", help="embedded (offline, CPU) or paper (CLIP presets, GPU)")
    r.add_argument("--only", help="comma-separated notebooks, e.g. fig2,table6 (default: all)")
    r.add_argument("--runs-dir", default="runs/store", help="run store shared by the notebooks")
    r.add_argument("--out", default="figures", help="figures, CSVs, executed notebooks and REPORT.md")
    r.add_argument("--quick", action="store_true", help="1 seed, 300 steps per run (CI and smoke tests)")
    r.add_argument("--jobs", type=_typed("--jobs", int), default=1, help="notebooks executed at the same time")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    lb = sub.add_parser("lab", help="JupyterLab on notebooks/ (builds the embedded feature cache first if missing)")
    lb.add_argument("--port", type=_typed("--port", int), default=8888, help="port (0 = a free one)")
    lb.add_argument("--ip", default="127.0.0.1", help="address to listen on")
    lb.add_argument("--no-browser", action="store_true", help="do not open a browser; just print the URL")
    lb.add_argument("--no-cache-build", action="store_true",
                    help="start at once, without checking (and if missing building) the embedded feature cache")
    lb.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.subcommands = {"train": t, "compare": c, "features": f, "diagnose": dg, "info": i, "presets": pr,
                          "reproduce": r, "lab": lb}
    return parser


def _unknown_arguments(parser: argparse.ArgumentParser, command: str | None, extra: list[str]) -> UserError:
    """One line for arguments argparse did not recognise, with the closest valid option."""
    sub = parser.subcommands.get(command, parser)
    first = next((a for a in extra if a.startswith("-")), extra[0])
    if first.startswith("-"):
        name = first.split("=", 1)[0]
        options = sorted(o for o in sub._option_string_actions if o.startswith("--"))
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return UserError(f"unknown option {name!r}{hint}; valid options: {', '.join(options)} "
                         f"(see '{sub.prog} --help')")
    return UserError(f"unexpected argument {first!r}; '{sub.prog}' takes options only (see '{sub.prog} --help')")


def _apply_overrides(cfg, args):
    """Dedicated flags < --set items, on top of an existing config (the layers above the preset / file)."""
    from .config import parse_set

    for key, value in _flag_values(args).items():
        if value is not None:
            cfg.set(key, value)
    for item in args.set:
        cfg.set(*parse_set(item))
    return cfg.validate()


def _flag_values(args) -> dict:
    flags = {FLAG_KEYS[k]: getattr(args, k, None) for k in FLAG_KEYS}
    if getattr(args, "feature_cache", None):
        flags["run.feature_cache"] = True
    if getattr(args, "no_progress", False):
        flags["run.progress"] = False
    return flags


def config_from_args(args, extra_config: str | None = None):
    from .presets import resolve

    return resolve(args.preset, args.config or extra_config, _flag_values(args), args.set)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """--out must be new, or hold a run only with --overwrite."""
    check_new_run_dir(out, overwrite, ("--out", "--overwrite", f"--resume {out}"))


def _resume_config(args, resume_dir: Path):
    """The config to resume with: --preset/--config if given, else the run's config.yaml, else the config stored in
    its checkpoint; then flags and --set items (only keys that change no result may differ, see RESUME_IGNORED)."""
    from . import io
    from .config import Config

    if args.preset or args.config:
        return config_from_args(args)
    if (resume_dir / "config.yaml").is_file():
        return config_from_args(args, str(resume_dir / "config.yaml"))
    return _apply_overrides(Config.from_dict(io.load_checkpoint(resume_dir / "checkpoint.pt")["config"]), args)


def cmd_train(args) -> int:
    from .trainer import Trainer

    if args.resume:
        resume_dir = Path(args.resume)
        if args.overwrite:
            raise UserError(f"--overwrite cannot be combined with --resume {str(resume_dir)!r}; valid: --resume DIR to "
                            "continue a run, or --out DIR --overwrite to replace it")
        if not resume_dir.is_dir():
            raise UserError(f"--resume {str(resume_dir)!r} does not exist; valid: a run directory written by "
                            "'finessl-lab train'")
        if not (resume_dir / "checkpoint.pt").is_file():
            why = (" (it stopped before its first checkpoint; start it again with --out DIR --overwrite)"
                   if (resume_dir / "config.yaml").is_file() else "")
            raise UserError(f"--resume {str(resume_dir)!r} holds no checkpoint.pt{why}; valid: a run directory "
                            "written by 'finessl-lab train'")
        if args.out and Path(args.out).resolve() != resume_dir.resolve():
            raise UserError(f"--out {args.out!r} differs from --resume {str(resume_dir)!r}; a run resumes in its own "
                            "directory (leave out --out)")
        trainer = Trainer(_resume_config(args, resume_dir), resume_dir, resume=True)
    else:
        if not args.out:
            raise UserError("train needs --out DIR (a new run directory) or --resume DIR (continue a run)")
        cfg = config_from_args(args)
        out = Path(args.out)
        check_out_dir(out, args.overwrite)
        trainer = Trainer(cfg, out, overwrite=args.overwrite)
    from . import distributed

    model, main = trainer.exp.model, distributed.is_main()
    if main:  # under torchrun only rank 0 prints (and writes)
        print(f"{trainer.cfg.algorithm.name}: {model.num_trainable():,} trainable parameters "
              f"(PEFT {trainer.cfg.model.peft} + main and aux heads) of {sum(p.numel() for p in model.parameters()):,}"
              + (f"; {distributed.world_size()} processes, each 1/{distributed.world_size()} of the global batch"
                 if distributed.is_distributed() else ""), flush=True)
    try:
        summary = trainer.fit()
    finally:
        distributed.destroy()
    if main:
        _print_summary(summary, trainer.cfg)
    return 0


def _print_summary(summary: dict, cfg) -> None:
    print(f"{summary['algorithm']}: test top-1 {summary['test_top1']:.2f}% after {summary['steps']} steps "
          f"({summary['trainable_params']:,} trainable parameters, {summary['wall_time_s']:.1f} s)")
    if summary.get("skipped_steps"):
        print(f"note: {summary['skipped_steps']} step(s) with a NaN/Inf loss were skipped (run.nan_policy=skip)")
    if cfg.model.backbone == "efficientnet_lite0":
        print(EMBEDDED_NOTE)


def cmd_compare(args) -> int:
    from .compare import compare

    cfg = config_from_args(args)
    table = compare(cfg, args.algorithms, args.seeds, Path(args.out), overwrite=args.overwrite,
                    jobs=args.jobs, stack=args.stack)
    print()
    print(table.to_string(index=False))
    print(f"\nresults: {Path(args.out) / 'results.csv'} (per run) and {Path(args.out) / 'summary.csv'}")
    if cfg.model.backbone == "efficientnet_lite0":
        print(EMBEDDED_NOTE)
    return 0


def cmd_features(args) -> int:
    from .build import build_experiment

    cfg = config_from_args(args)
    cfg.run.feature_cache = True
    exp = build_experiment(cfg.validate(), progress=cfg.run.progress)
    print(f"feature cache: {exp.feature_path}")
    return 0


def cmd_diagnose(args) -> int:
    import pandas as pd

    from . import io
    from .diagnostics.summary import aggregate, summarize_runs
    from .runs import as_runs, load_run

    runs = [load_run(r.dir, device=args.device) for r in as_runs(args.runs)] if args.device else as_runs(args.runs)
    table = summarize_runs(runs)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.round(4).to_string(index=False))
        print()
        print(aggregate(table).round(4).set_index("algorithm").T.to_string())
    if args.out:
        io.write_csv(Path(args.out), table)
        print(f"\nper-run table: {args.out}")
    if any(r.config.model.backbone == "efficientnet_lite0" for r in runs):
        print(EMBEDDED_NOTE)
    return 0


def cmd_info(args) -> int:
    from .info import info_lines

    print("\n".join(info_lines(args.cache_dir, args.data_root)))
    return 0


def cmd_presets(args) -> int:
    from .presets import PRESETS, describe_preset

    width = max(map(len, PRESETS))
    print("\n".join(f"{name:<{width}}  {describe_preset(name)}" for name in PRESETS))
    return 0


def cmd_reproduce(args) -> int:
    import time

    from .reproduce import reproduce

    t0 = time.perf_counter()
    outcomes = reproduce(args.profile, args.only, args.runs_dir, args.out, args.quick, jobs=args.jobs)
    failed = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} notebooks ran in {time.perf_counter() - t0:.0f} s; "
          f"report: {Path(args.out) / 'REPORT.md'}")
    for o in failed:
        print(f"failed: {o.name}: {o.error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_lab(args) -> int:
    from .lab import lab

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not valid; valid: 0 (a free port) to 65535")
    return lab(port=args.port, ip=args.ip, open_browser=not args.no_browser, build_cache=not args.no_cache_build)


COMMANDS = {"lab": cmd_lab, "train": cmd_train, "compare": cmd_compare, "features": cmd_features, "info": cmd_info,
            "diagnose": cmd_diagnose, "presets": cmd_presets, "reproduce": cmd_reproduce}


@contextmanager
def _sigterm_stops():
    """Outside the training loop (which saves a checkpoint first), SIGTERM raises Stopped, so that atomic writes
    clean up their temp files and the process exits with 143 and one line instead of dying silently."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return

    def handler(signum, frame):
        raise Stopped("stopped by SIGTERM outside the training loop (while loading or writing results); a "
                      "checkpoint already written stays valid", signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def _interrupted_line(exc: Stopped) -> str:
    step, total, ckpt, out = (getattr(exc, k, None) for k in ("step", "total", "checkpoint", "out"))
    if step is None or out is None:
        return f"interrupted: {exc}"
    name = signal.Signals(exc.signum).name
    return (f"interrupted: {name} after step {step} of {total}; checkpoint saved to {ckpt}; "
            f"continue with: finessl-lab train --resume {out}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        with _sigterm_stops():
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            if extra:
                raise _unknown_arguments(parser, getattr(args, "command", None), extra)
            return COMMANDS[args.command](args)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        if debug:
            traceback.print_exc()
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 says where its checkpoint is
            print(_interrupted_line(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted: SIGINT outside the training loop (while loading or writing results); a checkpoint "
              "already written stays valid", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001
        if debug:
            traceback.print_exc()
        msg = " ".join(str(exc).split())[:300]
        print(f"error: internal error {type(exc).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
