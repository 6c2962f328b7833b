"""Hugging Face Trainer run: python run_hf.py OUT TAG --epochs E [--max-steps S] [--resume DIR] (under torchrun for DDP)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

import curriculum as cl  # noqa: E402
from curriculum.integrations.transformers import CurriculumTrainer, with_index  # noqa: E402
from _fixture import BATCH, CLASSES, DIM, N, SCORES, X, Y, close_group_and_exit, pacing, parse_args, write  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(DIM, CLASSES)

    def forward(self, x, labels=None):
        logits = self.lin(x)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class Recording(CurriculumTrainer):
    batches = []

    def compute_loss(self, model, inputs, return_outputs=False, **kw):
        if model.training:
            self.batches.append(inputs["index"].tolist())
        return super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)


def main():
    a = parse_args()
    ds = datasets.Dataset.from_dict({"x": X, "labels": Y}).with_format("torch")
    args = TrainingArguments(output_dir=os.path.join(a.out, f"{a.tag}-ckpt"), per_device_train_batch_size=BATCH,
                             num_train_epochs=a.epochs, max_steps=a.max_steps, learning_rate=0.1,
                             lr_scheduler_type="constant", optim="sgd", report_to=[], use_cpu=True,
                             ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None, save_strategy="steps" if a.max_steps > 0 else "no",
                             save_steps=max(a.max_steps, 1), logging_strategy="no", seed=0,
                             dataloader_num_workers=0, disable_tqdm=True)
    rec = cl.Recorder(N, CLASSES, labels=Y)
    trainer = Recording(model=Net(), args=args, train_dataset=with_index(ds), difficulty=SCORES, pacing=pacing(),
                        recorder=rec)
    trainer.train(resume_from_checkpoint=a.resume)
    write(a.out, a.tag, Recording.batches, rec)


if __name__ == "__main__":
    main()
    close_group_and_exit()
