"""A run's metrics, out_dir/metrics.jsonl: what train.py writes as it goes (RunLog), one JSON object a line (a
log line's loss, lr, gradient norm, speed, MFU; an evaluation's losses), and plot.py reads back (read_metrics)."""

import json
import os
import sys

from errors import UserError


class RunLog:
    """What a run reports: lines on rank 0's stdout, records in out_dir/metrics.jsonl and, with wandb_log,
    in wandb. A new run (no checkpoint) starts the file anew: its curves must not mix with an earlier run's."""

    def __init__(self, out_dir, master):
        self.master, self.path, self.running_mfu, self.wandb = master, os.path.join(out_dir, 'metrics.jsonl'), -1.0, None

    def start(self, cfg, checkpoint, config):
        """A resumed run (a checkpoint) goes on with its file and its wandb run; a new run starts them anew."""
        if checkpoint is None and self.master and not cfg.eval_only and os.path.exists(self.path):
            os.remove(self.path)
        if cfg.wandb_log and self.master:
            try:
                import wandb
            except ImportError:
                raise UserError("wandb_log=True needs wandb: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=config,
                                    id=(checkpoint or {}).get('wandb_id'), resume='allow')

    def line(self, message):
        if self.master:
            print(message, flush=True)

    def record(self, iter_num, elapsed, **metrics):
        if not self.master:
            return
        metrics = {'iter': iter_num, 'time': round(elapsed, 3), **metrics}
        with open(self.path, 'a') as f:
            f.write(json.dumps(metrics) + '\n')
        if self.wandb is not None:
            self.wandb.log(metrics, step=iter_num)

    def evaluation(self, iter_num, elapsed, train_loss, val_loss, **metrics):
        """The "step N: train loss, val loss" line (and the other figures of the evaluation), and its record."""
        shown = {'val_bpb': 'val bpb {:.4f}', 'val_acc': 'val acc {:.2%}', 'bleu': 'val bleu {:.2f}'}
        self.line(', '.join([f"step {iter_num}: train loss {train_loss:.4f}", f"val loss {val_loss:.4f}",
                             *(text.format(metrics[key]) for key, text in shown.items() if key in metrics)]))
        lr = metrics.pop('lr')
        self.record(iter_num, elapsed, train_loss=train_loss, val_loss=val_loss, lr=lr, **metrics)

    def progress(self, iter_num, elapsed, loss, tokens, dt, mfu, first, **metrics):
        """The "iter N: loss" line and its record; the MFU averaged (0.9 old, 0.1 new) from this process's first."""
        self.running_mfu = mfu if first else 0.9 * self.running_mfu + 0.1 * mfu
        self.line(f"iter {iter_num}: loss {loss:.4f}, time {dt * 1000:.2f}ms, "
                  f"{tokens / dt:,.0f} tok/s, mfu {self.running_mfu * 100:.2f}%")
        self.record(iter_num, elapsed, loss=loss, **metrics, ms_per_iter=dt * 1000, tokens_per_sec=tokens / dt,
                    mfu=self.running_mfu)

    def finish(self):
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(folder):
    """(log records, eval records) of a run, each sorted by iteration. A resumed run logs again the
    iterations after its checkpoint: the last record of an iteration is the one that counts."""
    path = os.path.join(folder, 'metrics.jsonl')
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: give the out_dir of a training run")
    latest = {}  # (kind, iteration) -> record
    unreadable = 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # e.g. a line cut short when a run was killed
                unreadable += 1
                continue
            latest['eval' if 'val_loss' in record else 'log', record['iter']] = record
    if unreadable:
        print(f"warning: skipped {unreadable} unreadable line(s) of {path}", file=sys.stderr)
    records = [latest[key] for key in sorted(latest, key=lambda key: key[1])]
    return [r for r in records if 'loss' in r], [r for r in records if 'val_loss' in r]
