"""Plot the loss curves of training runs into one PNG: python plot.py out-a [out-b ...] [--output=compare.png]
Each run's metrics.jsonl (train.py's) gives its train and val loss against iterations (left) and wall time (right):
a faint line for each logged batch's training loss, markers for the evaluations' train and val losses."""

import argparse
import os
import sys

from configurator import run_cli
from errors import UserError
from metrics import read_metrics


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, `error: ...`, like the other scripts
        raise UserError(message)


def import_pyplot():
    try:
        import matplotlib  # imported here so that training does not need it
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    matplotlib.use('Agg')  # draw into a file: no window, no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_runs(folders, output):
    runs = [(os.path.basename(os.path.normpath(folder)), *read_metrics(folder)) for folder in folders]
    plt = import_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for axis, x, xlabel in ((axes[0], 'iter', 'iteration'), (axes[1], 'time', 'wall time (s)')):
        for i, (name, logs, evals) in enumerate(runs):
            color = f'C{i % 10}'  # matplotlib's ten default colours; one per run, in both panels
            axis.plot([r[x] for r in logs], [r['loss'] for r in logs], color=color, alpha=0.3, linewidth=1,
                      label=f'{name} batch loss')
            axis.plot([r[x] for r in evals], [r['train_loss'] for r in evals], 'o--', color=color, markersize=4,
                      label=f'{name} train')
            axis.plot([r[x] for r in evals], [r['val_loss'] for r in evals], 's-', color=color, markersize=4,
                      label=f'{name} val')
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel('loss')
    axes[0].legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = ArgumentParser(description="Plot the loss curves of training runs (their metrics.jsonl) into one PNG.")
    parser.add_argument('folders', nargs='+', metavar='out_dir', help="a training run's out_dir")
    parser.add_argument('--output', default='loss.png', help='the PNG to write (default: loss.png)')
    args = parser.parse_args(argv)
    plot_runs(args.folders, args.output)
    print(f"wrote {args.output}")


if __name__ == '__main__':
    run_cli(lambda: main(sys.argv[1:]))
