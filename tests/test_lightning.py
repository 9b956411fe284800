"""SelfSupModule trains a selfsup method under lightning.Trainer exactly as selfsup's own trainer does."""
import json

import pytest
import torch

from selfsup.config import load_config
from selfsup.data import load_images
from selfsup.errors import ConfigError
from selfsup.run import load_run
from selfsup.train import pretrain

lightning = pytest.importorskip("lightning")
from selfsup.lightning import SelfSupModule  # noqa: E402  (needs lightning)


class Losses(lightning.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.values.append(outputs["loss"].item())


@pytest.mark.parametrize("method", ["simclr", "byol"])     # byol: an EMA teacher updated after each step
def test_lightning_gives_the_losses_and_weights_of_selfsups_trainer(method, tiny_fashion, tmp_path):
    """Equal to float rounding: clip_grad_norm_ is computed in another order under Lightning (1e-7 apart),
    which a large learning rate amplifies over the steps (at lr 0.5 they reached 6e-5 in the stem's batch-norm
    weight after 4 steps on an AVX-512 CPU), so the test's lr is moderate."""
    settings = [f"method.name={method}", "train.steps=4", "train.batch_size=32", "train.precision=fp32",
                "train.channels_last=false", "backbone.width=0.125", "train.log_every=1", "eval.online_every=0",
                "optim.warmup_epochs=0.5", "optim.grad_clip=1.0", "optim.lr=0.1", "train.threads=1"]
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(128)
    pretrain(load_config(overrides=settings), tmp_path / "run", data=data, progress=False)
    ours = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]

    module = SelfSupModule(load_config(overrides=settings), data)
    losses = Losses()
    trainer = lightning.Trainer(max_steps=module.total_steps, gradient_clip_val=module.gradient_clip_val,
                                accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[losses])
    trainer.fit(module)
    assert losses.values == pytest.approx(ours, rel=1e-5)
    trained = load_run(tmp_path / "run").method.state_dict()
    for name, value in module.method.state_dict().items():
        torch.testing.assert_close(value, trained[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_a_wall_clock_budget_is_refused(tiny_fashion):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(64)
    with pytest.raises(ConfigError, match="train.steps or train.epochs"):
        SelfSupModule(load_config(overrides=["train.minutes=1", "train.batch_size=16"]), data)
