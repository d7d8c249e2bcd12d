"""Run under ``torchrun`` by tests/test_distributed.py (not a test module itself).

    torchrun --standalone --nproc_per_node=2 tests/ddp_entry.py CRASHED FULL STEP SETS...
    torchrun --standalone --nproc_per_node=2 tests/ddp_entry.py --image OPEN_CLIP_CONFIG.json OUT SETS...

1. trains CRASHED with a hook that raises at step STEP (a simulated crash), and dumps each rank's algorithm
   state at that step to CRASHED.rank<r>.pt (to compare the ranks' class pace);
2. trains FULL uninterrupted through the CLI code path (``finessl_lab.cli.main(["train", ...])``);
every file write (finessl_lab.io) is logged per rank to CRASHED.writes<r>.txt, so the test can check that only
rank 0 wrote. With ``--image``: registers a tiny random open_clip config (a test fixture) and trains OUT in image
mode through the CLI code path.
"""
import sys
from pathlib import Path

import torch

from finessl_lab import distributed, io
from finessl_lab.cli import main
from finessl_lab.hooks import Hook
from finessl_lab.presets import resolve
from finessl_lab.trainer import HookError, Trainer


def log_writes(path: Path) -> None:
    for name in ("atomic_write", "save_checkpoint", "write_csv", "write_json", "write_text"):
        fn = getattr(io, name)

        def logged(target, *a, _fn=fn, _name=name, **k):
            with open(path, "a") as f:
                f.write(f"{_name} {target}\n")
            return _fn(target, *a, **k)

        setattr(io, name, logged)


class DumpAndCrash(Hook):
    name = "dump_and_crash"

    def __init__(self, step: int, dump: Path):
        self.at, self.dump = step, dump

    def on_step(self, record):
        if record.step == self.at:
            torch.save(self.trainer.algorithm.state_dict(), self.dump)
            raise RuntimeError("simulated crash")

    def on_train_start(self, trainer):
        self.trainer = trainer


if __name__ == "__main__":
    if sys.argv[1] == "--image":
        import open_clip

        config, out, *sets = sys.argv[2:]
        open_clip.add_model_config(config)
        sys.exit(main(["train", "--preset", "embedded", "--out", out] + sum((["--set", s] for s in sets), [])))
    crashed, full, step, *sets = sys.argv[1:]
    distributed.init()
    r = distributed.rank()
    log_writes(Path(f"{crashed}.writes{r}.txt"))
    try:
        Trainer(resolve("embedded", sets=sets), crashed,
                hooks=[DumpAndCrash(int(step), Path(f"{crashed}.rank{r}.pt"))]).fit()
    except HookError:
        pass
    else:
        sys.exit("the crash hook did not fire")
    argv = ["train", "--preset", "embedded", "--out", full] + sum((["--set", s] for s in sets), [])
    sys.exit(main(argv))
