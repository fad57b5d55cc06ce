"""Per-batch overhead of `Learner.fit` over a raw PyTorch loop.

    python bench/loop.py                                  # fastai too if this python can import it
    python bench/loop.py --fastai-python /tmp/venv/bin/python   # fastai from a throw-away venv

Both loops train the same model with the same optimizer object type (learnerlab's Adam) on the same
batches from the same torch DataLoader (batches sliced straight out of tensors, so loading costs little),
training only (no validation set), one CPU thread. `Learner.fit` runs with its default callbacks
(TrainEvalCallback, Recorder) and the progress bar and table off. We report the best over repeats
of the time per batch (by default CPU time of the process, best of interleaved runs: on a shared
machine both are the least disturbed measures), and the overhead (learner - raw) per batch. With fastai importable (it is never a
dependency: install it in a throw-away venv), its Learner.fit is measured against a raw loop with fastai's
own Adam, so each overhead compares a learner with the raw loop over the same optimizer.
"""
import argparse, json, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
from torch import nn
from torch.utils.data import TensorDataset, DataLoader, BatchSampler, SequentialSampler



def batches(x, y, bs):
    "A DataLoader yielding `(x[i:i+bs], y[i:i+bs])` with one indexing op per batch."
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=None, sampler=BatchSampler(SequentialSampler(ds), bs, drop_last=False))


def mlp(): return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

def cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

CASES = {'mlp 32-32-2': (mlp, (32,), 2), 'cnn 1x28x28': (cnn, (1, 28, 28), 10)}


def raw_fit(model, dl, opt, loss_func, n_epoch):
    "The chapter's five-line loop."
    model.train()
    for _ in range(n_epoch):
        for xb, yb in dl:
            loss = loss_func(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()


CLOCK = time.process_time   # CPU time of this process (set by --clock)

def best_per_batch(fns, n_batches, repeats):
    "For each name -> function in `fns`: the best seconds per batch over `repeats` interleaved runs (after a warm-up)."
    for fn in fns.values(): fn()
    best = {name: float('inf') for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():          # interleaved, so a burst of load on the machine hits every loop
            t0 = CLOCK(); fn()
            best[name] = min(best[name], (CLOCK() - t0) / n_batches)
    return best


def make_data(name, n_batches, bs):
    make_model, shape, n_cls = CASES[name]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n_batches * bs, *shape, generator=g), torch.randint(0, n_cls, (n_batches * bs,), generator=g)
    return make_model, x, y


def bench_learnerlab(name, n_batches, bs, n_epoch, repeats):
    "us/batch of the raw loop and of Learner.fit (default callbacks, no bar, no table)."
    from learnerlab.learner import Learner, DataLoaders
    from learnerlab.optimizer import Adam
    make_model, x, y = make_data(name, n_batches, bs)
    dl, loss_func = batches(x, y, bs), nn.CrossEntropyLoss()
    torch.manual_seed(0); model = make_model(); opt = Adam(list(model.parameters()), lr=1e-3)
    torch.manual_seed(0)
    learn = Learner(DataLoaders(dl, None, device='cpu'), make_model(), loss_func=loss_func, lr=1e-3,
                    wd_bn_bias=True)   # decay every parameter, as the raw loop's optimizer does: same optimizer work
    def fit():
        with learn.no_bar(), learn.no_logging(): learn.fit(n_epoch)
    return best_per_batch({'raw loop': lambda: raw_fit(model, dl, opt, loss_func, n_epoch),
                           'learnerlab Learner.fit': fit}, n_batches * n_epoch, repeats)


def bench_fastai(name, n_batches, bs, n_epoch, repeats):
    "us/batch of the raw loop with fastai's Adam and of fastai's Learner.fit (default callbacks, no bar, no table)."
    from fastai.data.core import DataLoaders as FDataLoaders
    from fastai.learner import Learner as FLearner
    from fastai.optimizer import Adam as FAdam
    import fastai.callback.progress   # noqa: F401 (adds ProgressCallback to the defaults, and no_bar)
    make_model, x, y = make_data(name, n_batches, bs)
    dl, loss_func = batches(x, y, bs), nn.CrossEntropyLoss()
    torch.manual_seed(0); model = make_model(); opt = FAdam(list(model.parameters()), lr=1e-3)
    torch.manual_seed(0)
    # fastai needs a validation DataLoader: one batch, so it adds ~1/(n_batches*n_epoch) of a batch to its time
    flearn = FLearner(FDataLoaders(dl, batches(x[:bs], y[:bs], bs)), make_model(), loss_func=loss_func)
    def fit():
        with flearn.no_bar(), flearn.no_logging(): flearn.fit(n_epoch, lr=1e-3)
    return best_per_batch({'raw loop, fastai Adam': lambda: raw_fit(model, dl, opt, loss_func, n_epoch),
                           'fastai Learner.fit': fit}, n_batches * n_epoch, repeats)


class NoOpOptimizer:
    "An optimizer that does nothing, with the hyper-parameters the Recorder reads."
    def __init__(self, params, lr): self.hypers = [{'lr': lr, 'mom': 0.9, 'sqr_mom': 0.99, 'eps': 1e-5, 'wd': 0.01}]
    def set_hyper(self, name, value): self.hypers[-1][name] = value
    def step(self): pass
    def zero_grad(self): pass


def bench_machinery(n_batches, bs, n_epoch, repeats):
    "The loop machinery alone: a model that returns its input, a one-weight loss, an optimizer that does nothing."
    from learnerlab.learner import Learner, DataLoaders
    x, y = torch.randn(bs, 2), torch.zeros(bs, dtype=torch.long)
    w = torch.zeros(1, requires_grad=True)
    dl, model = [(x, y)] * n_batches, nn.Identity()
    loss_func = lambda pred, targ: (w * 2).sum()
    opt = NoOpOptimizer(None, 1e-3)
    learn = Learner(DataLoaders(dl, None, device='cpu'), model, loss_func=loss_func, opt_func=NoOpOptimizer)
    def fit():
        with learn.no_bar(), learn.no_logging(): learn.fit(n_epoch)
    return best_per_batch({'raw loop': lambda: raw_fit(model, dl, opt, loss_func, n_epoch),
                           'learnerlab Learner.fit': fit}, n_batches * n_epoch, repeats)


def fastai_rows(args):
    "fastai's rows, measured in a separate process (importing fastai patches torch, which must not affect ours)."
    py = args.fastai_python or sys.executable
    cmd = [py, __file__, '--fastai-only', '--batches', str(args.batches), '--epochs', str(args.epochs),
           '--repeats', str(args.repeats), '--bs', str(args.bs), '--threads', str(args.threads), '--clock', args.clock]
    if subprocess.run([py, '-c', 'import fastai'], capture_output=True).returncode != 0: return None, {}
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print('fastai run failed:', out.stderr.strip().splitlines()[-1:]); return None, {}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res.pop('version'), res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batches', type=int, default=100, help='batches per epoch')
    ap.add_argument('--epochs', type=int, default=1)
    ap.add_argument('--repeats', type=int, default=15)
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--clock', choices=['cpu', 'wall'], default='cpu',
                    help="cpu: this process's CPU time (robust on a shared machine); wall: elapsed time")
    ap.add_argument('--fastai-python', default=None, help='a python that can import fastai (default: this one, if it can)')
    ap.add_argument('--fastai-only', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == 'cpu' else time.perf_counter
    torch.set_num_threads(args.threads)
    if args.fastai_only:
        import fastai
        res = {name: bench_fastai(name, args.batches, args.bs, args.epochs, args.repeats) for name in CASES}
        print(json.dumps({'version': fastai.__version__, **res})); return

    fastai_version, fres = fastai_rows(args)
    print(f'torch {torch.__version__}, {args.threads} thread(s), batch {args.bs}, {args.batches} batches x '
          f'{args.epochs} epochs, {args.clock} time, best of {args.repeats} interleaved runs, training only; '
          + (f'fastai {fastai_version} (separate process)' if fastai_version else 'fastai not installed'))
    print(f"{'model':<14}{'loop':<28}{'us/batch':>10}{'overhead us':>13}{'ratio':>8}")
    for name in CASES:
        res = {**bench_learnerlab(name, args.batches, args.bs, args.epochs, args.repeats), **fres.get(name, {})}
        for loop, t in res.items():
            base = res['raw loop, fastai Adam' if loop.startswith('fastai') else 'raw loop']
            over = '' if loop.startswith('raw') else f'{(t - base) * 1e6:13.1f}'
            print(f'{name:<14}{loop:<28}{t * 1e6:10.1f}{over:>13}{t / base:8.2f}')
    res = bench_machinery(args.batches * 5, args.bs, args.epochs, args.repeats)
    for loop, t in res.items():
        over = '' if loop == 'raw loop' else f'{(t - res["raw loop"]) * 1e6:13.1f}'
        print(f'{"no-op model":<14}{loop:<28}{t * 1e6:10.1f}{over:>13}{t / res["raw loop"]:8.2f}')
    print('no-op model: identity model, one-weight loss, an optimizer that does nothing: the loop machinery alone.')


if __name__ == '__main__':
    main()
