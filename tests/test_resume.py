"""Exact resume in a new process: a one-cycle fit with Adam, dropout, shuffled data and random augmentations is
killed with SIGKILL while SaveModelCallback(every_n_batches=4) keeps its checkpoint, then resumed in a fresh
interpreter with `resume=`; the weights, recorded losses, learning rates and results equal those of a fit that ran
through, bit for bit (CPU). With worker processes too.
"""
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch

from learnerlab.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import random, sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from torch.utils.data import Dataset, DataLoader
    from learnerlab.all import *

    mode, folder, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)

    class Jittered(Dataset):
        "Points whose augmentation draws from the global generators (of the process, or of the worker)."
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 8, generator=g); self.y = (self.x[:, :4].sum(1) > 0).long()
        def __len__(self): return len(self.x)
        def __getitem__(self, i): return self.x[i] + 0.1 * torch.randn(8) * (random.random() < 0.5), self.y[i]

    class HangAt(Callback):
        "Stand for a process that stops for good after `n` training batches: the test kills it there."
        order = 70
        def __init__(self, n): self._n = n
        def after_batch(self):
            if self.training and self.epoch * self.n_iter + self.iter + 1 == self._n:
                print('hanging', flush=True); time.sleep(600)

    seed = 7 if mode == 'resume' else 0                  # the resumed process starts from other states
    torch.manual_seed(seed); random.seed(seed)
    dls = DataLoaders(DataLoader(Jittered(480, 0), batch_size=32, shuffle=True, num_workers=workers),
                      DataLoader(Jittered(96, 1), batch_size=32, num_workers=workers), device='cpu')
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=Adam, metrics=accuracy, path=folder)
    learn.remove_cb(ProgressCallback); learn.logger = noop_logger
    cbs = [SaveModelCallback(every_n_batches=4, fname=mode if mode == 'straight' else 'run')]
    if mode == 'killed': cbs.append(HangAt(27))            # 15 batches an epoch: in the middle of the second
    learn.fit_one_cycle(3, 1e-2, cbs=cbs, resume='run_last' if mode == 'resume' else None)
    rec = learn.recorder
    torch.save({'params': [p.detach().clone() for p in learn.model.parameters()], 'losses': torch.stack(rec.losses),
                'values': rec.values, 'lrs': rec.lrs, 'moms': rec.hps['mom'], 'train_iter': learn.train_iter},
               folder / f'{mode}.pt')
''')


def run(mode, folder, workers, wait=True):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    cmd = [sys.executable, '-c', SCRIPT, mode, str(folder), str(workers)]
    if wait:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return torch.load(folder / f'{mode}.pt', weights_only=True)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize('workers', [0, 2])
def test_killed_fit_resumes_bit_for_bit_in_a_new_process(tmp_path, workers):
    straight = run('straight', tmp_path, workers)
    killed = run('killed', tmp_path, workers, wait=False)
    assert killed.stdout.readline().strip() == 'hanging', killed.stderr.read()[-3000:]
    os.kill(killed.pid, signal.SIGKILL); killed.wait()
    pos = read_checkpoint(tmp_path / 'models' / 'run_last.pth')['pos']
    assert (pos['event'], pos['epoch'], pos['iter'], pos['training']) == ('after_batch', 1, 8, True)   # batch 24 of 45
    resumed = run('resume', tmp_path, workers)
    assert len(resumed['params']) == len(straight['params'])
    for a, b in zip(resumed['params'], straight['params']): assert torch.equal(a, b)
    assert resumed['losses'].shape == (45,) and torch.equal(resumed['losses'], straight['losses'])
    for k in ('values', 'lrs', 'moms', 'train_iter'): assert resumed[k] == straight[k], k


def test_every_seconds_keeps_the_last_batch(tmp_path):
    "With every_seconds smaller than a batch, the checkpoint is rewritten at each batch end: it holds the last one."
    from torch import nn
    from learnerlab.all import Learner, DataLoaders, SaveModelCallback, ProgressCallback, noop_logger
    torch.manual_seed(0)
    batches = [(torch.randn(4, 2), torch.randint(0, 2, (4,))) for _ in range(3)]
    learn = Learner(DataLoaders(batches, batches[:1], device='cpu'), nn.Linear(2, 2), loss_func=nn.CrossEntropyLoss(),
                    path=tmp_path, cbs=SaveModelCallback(every_seconds=1e-9, fname='t'))
    learn.remove_cb(ProgressCallback); learn.logger = noop_logger

    class Peek(SaveModelCallback.__mro__[-2]):      # a plain Callback, run after the saver
        order = 60
        def __init__(self): self.seen = []
        def after_batch(self):
            if self.training: self.seen.append(read_checkpoint(tmp_path / 'models' / 't_last.pth')['pos']['iter'])
    peek = Peek()
    learn.fit(2, cbs=peek)
    assert peek.seen == [0, 1, 2, 0, 1, 2]
    last = read_checkpoint(tmp_path / 'models' / 't_last.pth')['pos']
    assert (last['event'], last['epoch']) == ('after_epoch', 1)
