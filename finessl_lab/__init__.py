"""finessl_lab: reproduce, explore and extend FineSSL (Gan & Wei, ICML 2024) and its relatives.

    import finessl_lab as fl
    cfg = fl.resolve("embedded", sets=["run.epochs=2"])      # typed Config: preset < YAML < flags < sets
    summary, metrics = fl.train(cfg, "runs/demo")            # train one run (hooks=[...] for your own Hook)
    run = fl.load_run("runs/demo")                           # config, metrics, summary, trained model
    test = run.predict("test", head="main")                  # one row per sample: y_true, pred, confidence, probs
    fl.diagnostics.metrics.expected_calibration_error(test.confidence, test.correct)
"""
__version__ = "0.1.0"

from .config import Config  # noqa: E402
from .hooks import Hook, StepRecord  # noqa: E402
from .presets import resolve  # noqa: E402
from .runs import Run, load_run  # noqa: E402
from .trainer import train  # noqa: E402
from . import diagnostics  # noqa: E402

__all__ = ["Config", "Hook", "Run", "StepRecord", "__version__", "diagnostics", "load_run", "resolve", "train"]
