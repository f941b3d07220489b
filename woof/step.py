"""What a method trains, its optimiser, and one training step: the one definition that the
training loop (woof.train), the benchmark (woof.bench) and the cost stage (woof.analysis) share,
so that a change to training cannot drift away from the speed and cost tables.

    method = Method.of(cfg.lora)                  # or Method(("head",)), Method(freeze_blocks=4)
    model = method.prepare(model)                 # requires_grad set, adapters added
    optimizer, scheduler = make_optimizer(model, cfg.lora, steps_per_epoch)
    forward = compiled(model, cfg.train.compile)  # precision and compilation: woof.evaluate
    loss, logits = train_step(forward, x, y, loss_fn, optimizer, scheduler, precision)
"""
import math
from dataclasses import dataclass

import torch
from timm.optim import create_optimizer_v2

from woof.evaluate import autocast
from woof.models import set_trainable, trainable_prefixes


@dataclass(frozen=True)
class Method:
    """What trains. Without `lora`: full fine-tuning of `trainable` (["all"], or name prefixes:
    ["head"] is linear probing) with the embeddings and the first `freeze_blocks` blocks frozen
    (woof.models.set_trainable). With `lora` (apply_lora's targets, rank, alpha, dropout,
    rslora, dora): the adapters, plus `trainable` in full."""
    trainable: tuple[str, ...] = ("all",)
    freeze_blocks: int = 0
    lora: dict | None = None

    @classmethod
    def of(cls, recipe):
        """The method of a params section: woof.config.Full or woof.config.Lora."""
        if hasattr(recipe, "rank"):
            return cls(tuple(recipe.trainable), 0, {"targets": recipe.targets, "rank": recipe.rank,
                                                    "alpha": recipe.alpha, "dropout": recipe.dropout,
                                                    "rslora": recipe.rslora, "dora": recipe.dora})
        return cls(tuple(recipe.trainable), recipe.freeze_blocks)

    def prepare(self, model):
        """Make a fresh model train what this method trains, in place -> model."""
        for p in model.parameters():
            p.requires_grad_(True)
        if self.lora:
            from woof.lora import apply_lora  # only LoRA needs it: lora.py is no dependency of train_full
            return apply_lora(model, **self.lora, trainable=trainable_prefixes(model, self.trainable))
        return set_trainable(model, self.trainable, self.freeze_blocks)


def make_optimizer(model, recipe, steps_per_epoch):
    """timm's AdamW, without weight decay on 1-d parameters (biases, norms) and on what the model
    itself exempts (timm's no_weight_decay(): position embedding, class token); then linear
    warmup and cosine decay to 0, stepped every batch. The schedule stays a LambdaLR: timm's
    CosineLRScheduler warms up from warmup_lr_init by another formula, and every recorded run
    would change.

    recipe.layer_decay (full fine-tuning; None: off): timm's layer-wise lr decay through the
    model's group_matcher, the BEiT/MAE recipe: the head trains at lr, block k of D at
    lr * decay^(D - k), the embeddings lowest."""
    layer_decay = getattr(recipe, "layer_decay", None)
    opt = create_optimizer_v2(model, "adamw", lr=recipe.lr, weight_decay=recipe.weight_decay,
                              **({"layer_decay": layer_decay} if layer_decay else {}))
    if layer_decay:  # timm leaves lr_scale to its own schedulers; LambdaLR scales each group's own lr
        for group in opt.param_groups:
            group["lr"] = recipe.lr * group["lr_scale"]
    total = recipe.epochs * steps_per_epoch
    warmup = round(recipe.warmup_epochs * steps_per_epoch)

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def train_step(forward, x, y, loss_fn, optimizer, scheduler=None, precision="fp32"):
    """Forward, loss, backward, optimiser step (and schedule step): the one training step.
    forward: the model, or its compiled / DDP wrapper; x: (B, 3, S, S), y: (B,).
    -> (loss (), logits (B, C)), detached. The loss is taken in fp32 whatever the autocast."""
    with autocast(x.device, precision):
        logits = forward(x)  # (B, C)
        loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach(), logits.detach()
