"""load_run / Run.predict in image mode: a tiny randomly initialised open_clip ViT with
VPT-deep (a test fixture, not a pretrained model), weights restored from the checkpoint."""
import numpy as np
import open_clip
import torch

import finessl_lab as fl
from finessl_lab.hooks import Hook
from finessl_lab.trainer import predict

TINY = ["data.subsample_per_class=3", "data.labels_per_class=1", "data.image_size=32", "data.resize=32",
        "data.crop_padding=4", "data.num_workers=0", "model.peft=vpt_deep", "model.vpt_tokens=2",
        "optim.batch_size=4", "run.epochs=1", "run.steps_per_epoch=4", "data.val_per_class=1", "run.eval_batch_size=128",
        "run.progress=false", "run.feature_cache=false", "algorithm.name=finessl"]


class Last(Hook):
    name = "last"

    def on_train_end(self, trainer):
        e = trainer.exp  # the main head's logits of the last evaluation, and one pass for the aux head (on the
        self.logits = {"main": trainer.eval_logits["val"],  # small validation split: image mode is slow on CPU)
                       "aux": predict(e.model, e.eval_sets["val"], e.device, e.precision, 128, head="aux")}


def test_load_run_predicts_like_the_trained_model_in_image_mode(tmp_path, tiny_clip_configs):
    torch.manual_seed(0)
    name = tiny_clip_configs[0]
    path = tmp_path / "tiny_vit.pt"
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), path)
    cfg = fl.resolve("embedded", sets=TINY + [f"model.backbone={name}", f"model.pretrained={path}"])
    last = Last()
    fl.train(cfg, tmp_path / "run", hooks=[last])
    run = fl.load_run(tmp_path / "run")
    assert run.experiment.features is None  # image mode
    for head in ("main", "aux"):
        assert np.allclose(run.predict_proba("val", head), torch.softmax(last.logits[head], 1).numpy(), atol=1e-5)
    weak = run.predict("unlabeled", "aux", view="weak")
    clean = run.predict("unlabeled", "aux", view="clean")
    assert len(weak) == len(run.experiment.split.unlabeled) and not np.allclose(weak.confidence, clean.confidence)
    assert np.allclose(run.predict("unlabeled", view="weak").confidence,
                       run.predict("unlabeled", view="weak").confidence)  # the weak view is seeded
