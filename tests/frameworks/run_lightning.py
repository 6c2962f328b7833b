"""Lightning run: python run_lightning.py OUT TAG --epochs E [--max-steps S] [--resume CKPT] (under torchrun for DDP)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import curriculum as cl  # noqa: E402
from curriculum.integrations.lightning import CurriculumCallback  # noqa: E402
from _fixture import BATCH, CLASSES, DIM, N, SCORES, X, Y, close_group_and_exit, pacing, parse_args, write  # noqa: E402


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(DIM, CLASSES)
        self.recorder = cl.Recorder(N, CLASSES, labels=Y)
        self.batches = []

    def train_dataloader(self):
        ds = TensorDataset(torch.from_numpy(X), torch.from_numpy(Y), torch.arange(N))
        return cl.wrap(DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=1), difficulty=SCORES,
                       pacing=pacing(), recorder=self.recorder, seed=0)

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        self.batches.append(idx.tolist())
        loss = F.cross_entropy(self.net(x), y, reduction="none")
        return {"loss": loss.mean(), "per_sample_loss": loss.detach()}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main():
    a = parse_args()
    world = int(os.environ.get("WORLD_SIZE", 1))
    ckpt = ModelCheckpoint(dirpath=os.path.join(a.out, f"{a.tag}-ckpt"), every_n_train_steps=max(a.max_steps, 0) or None,
                           save_top_k=-1, save_on_train_epoch_end=False) if a.max_steps > 0 else None
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
                        max_epochs=a.epochs, max_steps=a.max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=ckpt is not None,
                        callbacks=[CurriculumCallback()] + ([ckpt] if ckpt else []))
    model = Model()
    trainer.fit(model, ckpt_path=a.resume)
    write(a.out, a.tag, model.batches, model.recorder)


if __name__ == "__main__":
    main()
    close_group_and_exit()
