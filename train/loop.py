"""The training loop shared by the three tasks: steps, evaluation, export, resume states.

One optimizer step per ``--grad-accum`` batches; every ``eval_every`` steps the recipe
evaluates on val, and when its metric improves the main process exports the weights (or,
with ``--ema-decay``, their moving average, :mod:`train.ema`) as a checkpoint (atomic swap,
:func:`segdemo.checkpoint.save_checkpoint`). Every ``save_every`` steps all processes write
a resume state (model, optimizer, scheduler, EMA, RNGs, sampler position) that the next run
with the same ``--output-dir`` continues from.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from segdemo.checkpoint import save_checkpoint
from train import outputs
from train.memory_format import channels_last_batch


@dataclass
class Progress:
    """Where a run stands; saved with every resume state (``trainer_state.json``)."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # of the current epoch
    best: dict | None = None  # {"step", metric: value}
    history: dict = field(default_factory=lambda: {"train": [], "eval": []})

    @classmethod
    def read(cls, state_dir: Path) -> Progress:
        saved = outputs.read_trainer_state(state_dir)
        return cls(**{k: saved[k] for k in ("step", "epoch", "batches_done", "best", "history")})

    def as_dict(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "best": self.best,
            "history": self.history,
        }


@dataclass
class Trainer:
    """Everything the loop touches, prepared by ``train/run.py``."""

    args: Any
    accelerator: Any
    recipe: Any  # train.semantic.SemanticRecipe or train.universal.UniversalRecipe
    model: Any
    processor: Any
    optimizer: Any
    scheduler: Any
    ema: Any  # train.ema.make_ema's AveragedModel (--ema-decay), or None
    train_loader: Any
    val_loader: Any
    total_steps: int
    eval_every: int
    save_every: int
    run_config: dict
    output_dir: Path
    progress: Progress = field(default_factory=Progress)

    # ------------------------------------------------------------------ resume
    def resume(self) -> None:
        """Continue from ``--resume`` or the newest state in ``OUTPUT/state`` (``--no-resume``:
        delete the states and start over)."""
        args, accelerator = self.args, self.accelerator
        state_root = self.output_dir / outputs.STATE_DIR
        if args.no_resume and accelerator.is_main_process and state_root.exists():
            shutil.rmtree(state_root)
        accelerator.wait_for_everyone()
        if args.resume:
            source = Path(args.resume)
        else:
            source = None if args.no_resume else outputs.latest_state(self.output_dir)
        if source is None:
            return
        accelerator.load_state(str(source))
        self.progress = Progress.read(source)
        accelerator.print(
            f"resumed from {source} at step {self.progress.step} (epoch {self.progress.epoch})"
        )

    # ------------------------------------------------------------------ loop
    def fit(self) -> None:
        """Train until ``total_steps``, evaluating, exporting and saving states on schedule."""
        args, accelerator, p = self.args, self.accelerator, self.progress
        bar = tqdm(
            total=self.total_steps,
            initial=p.step,
            disable=not accelerator.is_local_main_process,
            desc="train",
        )
        loss_sum = torch.zeros((), device=accelerator.device)
        loss_count, started = 0, time.perf_counter()
        self.model.train()
        while p.step < self.total_steps:
            self.train_loader.set_epoch(p.epoch)
            skip = p.batches_done
            batches = (
                accelerator.skip_first_batches(self.train_loader, skip)
                if skip
                else self.train_loader
            )
            for batch_index, batch in enumerate(batches, start=skip):
                if args.channels_last:
                    batch = channels_last_batch(batch)
                with accelerator.accumulate(self.model):
                    loss = self.recipe.loss(self.model, batch)
                    accelerator.backward(loss)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                loss_sum += loss.detach()
                loss_count += 1
                if not accelerator.sync_gradients:
                    continue
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(accelerator.unwrap_model(self.model))
                p.step += 1
                bar.update()
                epoch_done = batch_index + 1 == len(self.train_loader)
                last = p.step >= self.total_steps
                if p.step % args.log_every == 0 or last:
                    mean_loss = accelerator.gather(loss_sum / max(loss_count, 1)).mean().item()
                    self._log_train(mean_loss, started)
                    bar.set_postfix(loss=f"{mean_loss:.3f}")
                    loss_sum.zero_()
                    loss_count = 0
                if (
                    p.step % self.eval_every == 0
                    or (args.eval_every is None and epoch_done)
                    or last
                ):
                    self.evaluate_and_export(epoch_done)
                if (
                    p.step % self.save_every == 0
                    or (args.save_every is None and args.eval_every is None and epoch_done)
                    or last
                ):
                    position = (p.epoch + 1, 0) if epoch_done else (p.epoch, batch_index + 1)
                    self.save_state(position)
                if last:
                    break
            if p.step < self.total_steps:  # the epoch ran out: the next starts at batch 0
                p.epoch, p.batches_done = p.epoch + 1, 0
        bar.close()
        accelerator.wait_for_everyone()
        accelerator.print(
            f"done: {p.step} steps in {time.perf_counter() - started:.0f}s; best {p.best}; "
            f"model in {self.output_dir}"
        )

    def _log_train(self, mean_loss: float, started: float) -> None:
        self.progress.history["train"].append(
            {
                "step": self.progress.step,
                "epoch": self.progress.epoch,
                "loss": mean_loss,
                "lr": self.scheduler.get_last_lr()[0],
                # wall seconds since this process started training (bench/bench_train.py)
                "elapsed": time.perf_counter() - started,
                "cpu": time.process_time(),  # this process's CPU seconds (all threads)
            }
        )

    # ------------------------------------------------------------------ evaluation + export
    def served_model(self) -> Any:
        """The weights a checkpoint holds, evaluated and exported: the moving average with
        ``--ema-decay``, else the trained model (unwrapped from DDP; autocast kept)."""
        if self.ema is not None:
            return self.ema.module
        return self.accelerator.unwrap_model(self.model)

    def evaluate_and_export(self, epoch_done: bool) -> None:
        """Evaluate on val; export when the recipe's metric improved; write history + curves."""
        accelerator, p, metric = self.accelerator, self.progress, self.recipe.metric
        evaluated = self.served_model()
        _share_buffers(evaluated, accelerator)
        evaluated.eval()  # BatchNorm statistics and dropout as at inference
        report = self.recipe.evaluate(evaluated, self.val_loader, accelerator)
        self.model.train()
        p.history["eval"].append({"step": p.step, "epoch": p.epoch + int(epoch_done), **report})
        value = report[metric]
        improved = p.best is None or (value is not None and value > p.best[metric])
        if self.args.export == "last":  # no selection on val: OUTPUT follows the last step
            improved = True
        accelerator.print(
            f"step {p.step}: val {self.recipe.metric_title} {value:.4f}"
            + (
                (" (exported)" if self.args.export == "last" else " (best, exported)")
                if improved
                else ""
            )
        )
        if improved:
            p.best = {"step": p.step, metric: value}
            if accelerator.is_main_process:
                self.export(report)
        if accelerator.is_main_process:
            p.history["best"] = p.best
            p.history["metric"] = metric
            outputs.write_json(self.output_dir / "history.json", p.history)
            outputs.write_bytes(self.output_dir / "curves.png", outputs.curves_png(p.history))
        accelerator.wait_for_everyone()

    def export(self, report: dict) -> None:
        """Main process: OUTPUT becomes a checkpoint of the current weights (atomic swap)."""
        args, step = self.args, self.progress.step
        extra = {k: v for k, v in {"palette": args.palette, "title": args.title}.items() if v}
        extra.update(self.recipe.segdemo_json())
        save_checkpoint(
            self.output_dir,
            self.served_model(),
            self.processor,
            extra_files={
                "training_config.json": json.dumps(outputs.clean(self.run_config), indent=2),
                "eval_results.json": json.dumps(outputs.clean({"step": step, **report}), indent=2),
                self.recipe.per_class_chart: (
                    outputs.per_class_png(
                        self.recipe.per_class(report),
                        f"val {self.recipe.metric_title} per class, step {step}",
                        xlabel=self.recipe.metric_title,
                    )
                ),
                "segdemo.json": json.dumps(extra),
            },
            keep=outputs.KEEP,
            weights_dtype=getattr(torch, args.save_dtype),
        )

    # ------------------------------------------------------------------ resume states
    def save_state(self, position: tuple[int, int]) -> None:
        """All processes write ``state/step-N.tmp``; the main process publishes it as ``step-N``.

        ``position``: ``(epoch, batches done in it)`` where a resumed run continues.
        """
        accelerator, p = self.accelerator, self.progress
        tmp = outputs.temp_state_path(self.output_dir, p.step)
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)  # left by a killed run
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            saved = {**p.as_dict(), "epoch": position[0], "batches_done": position[1]}
            outputs.publish_state(self.output_dir, p.step, saved, self.args.save_total_limit)
        accelerator.wait_for_everyone()


def _share_buffers(model: Any, accelerator: Any) -> None:
    """Every process gets the main process's buffers (BatchNorm running statistics).

    Under DDP each process updates its statistics from its own batches; DDP's forward
    broadcasts them before the next training step, so evaluation must do the same: every
    process then scores exactly the weights the main process exports, EMA or not.
    """
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)
