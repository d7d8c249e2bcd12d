"""The ``finessl-lab`` command line: train, compare, features, info.

Every bad input exits with status 2 and one line ``error: ...`` on stderr naming the value and what is valid
(``--debug`` shows the traceback instead). Nothing is written before the inputs are validated.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .errors import UserError

RUN_FILES = ("config.yaml", "checkpoint.pt", "metrics.csv", "summary.json")
FLAG_KEYS = {"algorithm": "algorithm.name", "max_steps": "run.max_steps", "labels_per_class": "data.labels_per_class",
             "dataset": "data.dataset", "backbone": "model.backbone", "pretrained": "model.pretrained",
             "data_root": "data.root", "seed": "run.seed", "device": "run.device", "peft": "model.peft",
             "cache_dir": "run.cache_dir"}
EMBEDDED_NOTE = ("note: the embedded default is 5,000 real MNIST digits + an ImageNet-pretrained EfficientNet-Lite0 "
                 "(frozen, cached features, head-level training) - NOT CLIP; paper numbers need the CLIP presets on a GPU.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2
        raise UserError(f"{message} (see '{self.prog} --help')")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named setting (see 'finessl-lab info --presets')")
    p.add_argument("--config", help="YAML config file (e.g. a run's config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    for flag, typ in (("--algorithm", str), ("--max-steps", int), ("--labels-per-class", int), ("--dataset", str),
                      ("--backbone", str), ("--pretrained", str), ("--data-root", str), ("--seed", int),
                      ("--device", str), ("--peft", str), ("--cache-dir", str)):
        p.add_argument(flag, type=_typed(flag, typ))
    p.add_argument("--feature-cache", action="store_true", default=None, help="train heads on cached features")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _typed(flag: str, typ):
    def conv(value: str):
        try:
            return typ(value)
        except ValueError:
            raise UserError(f"{flag} {value!r} is not {'an integer' if typ is int else 'valid'}") from None
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
    f = sub.add_parser("features", help="compute the frozen-backbone feature cache")
    _common(f)
    i = sub.add_parser("info", help="versions, device, locally available weights and datasets")
    i.add_argument("--cache-dir", default="")
    i.add_argument("--data-root", default="")
    i.add_argument("--debug", action="store_true")
    return parser


def config_from_args(args, extra_config: str | None = None):
    from .presets import resolve

    flags = {FLAG_KEYS[k]: getattr(args, k, None) for k in FLAG_KEYS}
    if getattr(args, "feature_cache", None):
        flags["run.feature_cache"] = True
    if getattr(args, "no_progress", False):
        flags["run.progress"] = False
    return resolve(args.preset, args.config or extra_config, flags, args.set)


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; valid: a new or empty directory")
    held = [f for f in RUN_FILES if (out / f).exists()]
    if held and not overwrite:
        raise UserError(f"--out {str(out)!r} already holds a run ({', '.join(held)}); valid: a new directory, "
                        f"--overwrite to replace it, or --resume {out} to continue it")
    if held:
        for f in held:
            (out / f).unlink()


def cmd_train(args) -> int:
    from .trainer import train

    resume_dir = Path(args.resume) if args.resume else None
    if resume_dir is not None:
        if not (resume_dir / "checkpoint.pt").is_file():
            raise UserError(f"--resume {str(resume_dir)!r} holds no checkpoint.pt; valid: a run directory written by 'finessl-lab train'")
        if args.out and Path(args.out).resolve() != resume_dir.resolve():
            raise UserError(f"--out {args.out!r} differs from --resume {str(resume_dir)!r}; a run resumes in its own directory")
        base = None if (args.preset or args.config) else str(resume_dir / "config.yaml")
        cfg = config_from_args(args, base)
        out = resume_dir
    else:
        if not args.out:
            raise UserError("train needs --out DIR (or --resume DIR)")
        cfg = config_from_args(args)
        out = Path(args.out)
        check_out_dir(out, args.overwrite)
    summary, _ = train(cfg, out, resume=resume_dir is not None)
    _print_summary(summary, cfg)
    return 0


def _print_summary(summary: dict, cfg) -> None:
    print(f"{summary['algorithm']}: test top-1 {summary['test_top1']:.2f}% after {summary['steps']} steps "
          f"({summary['trainable_params']:,} trainable parameters, {summary['wall_time_s']:.1f} s)")
    if cfg.model.backbone == "efficientnet_lite0":
        print(EMBEDDED_NOTE)


def cmd_compare(args) -> int:
    from .compare import compare

    cfg = config_from_args(args)
    table = compare(cfg, args.algorithms, args.seeds, Path(args.out), overwrite=args.overwrite)
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


def cmd_info(args) -> int:
    from .info import info_lines

    print("\n".join(info_lines(args.cache_dir, args.data_root)))
    return 0


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "features": cmd_features, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001
        from .trainer import Interrupted

        if debug:
            raise
        if isinstance(exc, Interrupted):
            print(f"interrupted: {exc}", file=sys.stderr)
            return 130
        msg = " ".join(str(exc).split())[:300]
        print(f"error: internal error {type(exc).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
