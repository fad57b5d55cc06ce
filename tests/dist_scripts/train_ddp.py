"""Jobs for tests/test_distributed.py, run on 2 ranks with torchrun: `python train_ddp.py MODE OUTDIR`.

MODE `train`: a plain-torch DDP reference run, then learnerlab runs under `learn.distrib_ctx()` (plain,
with gradient accumulation, and one that raises); rank 0 writes the results to OUTDIR/results.pt.
MODE `fail`: rank 1 raises in the middle of a fit while rank 0 goes on (the job must stop, not hang).
The single-process side of each comparison is computed by the test itself with the same helpers.
"""
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from learnerlab.callback import Callback
from learnerlab.learner import Learner, DataLoaders, accuracy
import learnerlab.predict  # Learner.get_preds
from learnerlab.optimizer import Adam
from learnerlab.training import CSVLogger, SaveModelCallback, GradientAccumulation
from learnerlab.mixed_precision import MixedPrecision

N_TRAIN, N_VALID, N_EPOCH = 48, 21, 2     # 21 validation items: 2 ranks see 11 each, one is padding


def make_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_VALID, 5, generator=g)
    y = (x[:, 0] - x[:, 1] + 0.5 * x[:, 2] > 0).long() + (x[:, 3] > 1).long()
    return TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:])


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def make_learner(bs, path, cbs=None):
    "A learner whose training data come in a fixed order (no shuffling), `bs` items per batch per process."
    train_ds, valid_ds = make_data()
    dls = DataLoaders(DataLoader(train_ds, batch_size=bs), DataLoader(valid_ds, batch_size=bs), device='cpu')
    return Learner(dls, make_model(), loss_func=nn.CrossEntropyLoss(), opt_func=Adam, lr=1e-2,
                   metrics=accuracy, path=path, cbs=cbs)


def torch_reference(bs, n_epoch=N_EPOCH):
    "Plain torch: SGD with momentum on the training set in order, `bs` items per batch (DDP when launched)."
    import torch.distributed as dist
    model = make_model()
    if dist.is_initialized(): model = nn.parallel.DistributedDataParallel(model)
    train_ds, _ = make_data()
    sampler = torch.utils.data.DistributedSampler(train_ds, shuffle=False) if dist.is_initialized() else None
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(n_epoch):
        for x, y in DataLoader(train_ds, batch_size=bs, sampler=sampler):
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step(); opt.zero_grad()
    return {k: v.detach().clone() for k, v in getattr(model, 'module', model).state_dict().items()}


class SyncProbe(Callback):
    "Record, for each training batch, whether DDP will average this batch's gradients."
    order = 90
    def before_fit(self): self.syncs = []
    def after_pred(self):
        if self.learn.training: self.syncs.append(bool(getattr(self.learn.model, 'require_backward_grad_sync', True)))


class EpochProbe(Callback):
    "Record, per epoch, the training inputs this rank saw and the epoch its sampler was set to."
    order = 90
    def before_fit(self): self.rows, self.sampler_epochs = {}, []
    def before_train(self): self.sampler_epochs.append(self.learn.dl.sampler.epoch)
    def before_batch(self):
        if self.learn.training: self.rows.setdefault(self.learn.epoch, []).append(self.learn.x.clone())


class Boom(Callback):
    "Raise at training batch `at` of the first epoch, on the ranks in `ranks`."
    def __init__(self, at, ranks): self.at, self.ranks = at, ranks
    def before_batch(self):
        from learnerlab.distributed import rank_distrib
        if self.learn.training and self.learn.iter == self.at and rank_distrib() in self.ranks:
            raise ValueError(f"boom on rank {rank_distrib()}")


def train(out):
    from learnerlab.distributed import setup_distrib, teardown_distrib, rank_distrib, num_distrib
    setup_distrib(timeout=60)
    rank = rank_distrib()
    assert num_distrib() == 2, num_distrib()
    res = {'torch': torch_reference(bs=4)}

    # 0. work done once: rank 0 creates the file, the others find it
    from learnerlab.distributed import rank0_first
    def make_once(path):
        if path.exists(): return False
        path.write_text(f'written by rank {rank}'); return True
    created = [None, None]
    torch.distributed.all_gather_object(created, rank0_first(make_once, Path(out)/'cache.txt'))
    res['created'] = created

    # 1. the main run: per-rank batch 4, a CSV log, the best model saved, one checkpoint per rank
    learn = make_learner(4, out, cbs=[CSVLogger(), SaveModelCallback(fname='best')])
    with learn.distrib_ctx():
        inside_path = learn.path
        assert (inside_path == Path(out)) == (rank == 0), (rank, inside_path)
        learn.fit(N_EPOCH)
        learn.save(f'from_rank{rank}')
        preds, targs = learn.get_preds()
        torch.distributed.barrier()                      # rank 0's checkpoint is complete
        learn.load('from_rank0')                         # rank 1 finds it in the shared folder
        assert not (inside_path/'models'/'from_rank0.pth').exists() or rank == 0
    assert learn.path == Path(out) and type(learn.model) is nn.Sequential
    assert rank == 0 or not inside_path.exists(), f"rank {rank}'s private folder {inside_path} was not removed"
    res.update(values=learn.recorder.values, weights=learn.model.state_dict(), preds=preds, targs=targs,
               losses=torch.stack(learn.recorder.losses))

    # 2. gradient accumulation: 8 items per rank and step (16 in all), without gradient averaging in between
    learn = make_learner(4, out, cbs=[GradientAccumulation(n_acc=8), SyncProbe()])
    with learn.distrib_ctx(), learn.no_bar(): learn.fit(1)
    res.update(ga_weights=learn.model.state_dict(), ga_syncs=learn.sync_probe.syncs)

    # 3. a shuffled training set: each epoch, the ranks share all items between them, in a new order
    learn = make_learner(4, out, cbs=EpochProbe())
    train_ds = learn.dls.train.dataset
    learn.dls.train = DataLoader(train_ds, batch_size=4, shuffle=True)
    with learn.distrib_ctx(), learn.no_bar(), learn.no_logging(): learn.fit(2)
    mine = {e: torch.cat(rows) for e, rows in learn.epoch_probe.rows.items()}
    everyone = [None, None]
    torch.distributed.all_gather_object(everyone, mine)
    res.update(shuffled=everyone, sampler_epochs=learn.epoch_probe.sampler_epochs)

    # 4. mixed precision (bfloat16 autocast on the CPU): the ranks stay identical
    learn = make_learner(4, out, cbs=MixedPrecision(dtype=torch.bfloat16))
    with learn.distrib_ctx(), learn.no_bar(), learn.no_logging(): learn.fit(1)
    both = [None, None]
    torch.distributed.all_gather_object(both, learn.model.state_dict())
    res.update(mp_weights=both, mp_values=learn.recorder.values)

    # 5. an exception on every rank: it reaches the script, and the model is unwrapped all the same
    learn = make_learner(4, out)
    dls = learn.dls
    try:
        with learn.distrib_ctx(), learn.no_bar(): learn.fit(1, cbs=Boom(at=2, ranks=(0, 1)))
    except ValueError as e: assert f'boom on rank {rank}' in str(e)
    else: raise AssertionError("the exception did not reach the script")
    assert type(learn.model) is nn.Sequential and learn.dls is dls and 'distributed_trainer' not in learn.__dict__
    res['after_error'] = 'unwrapped'

    # 6. a shard too small for one batch: a clear error before anything is wrapped or replaced
    learn = make_learner(4, out)
    dls = learn.dls
    learn.dls.train = DataLoader(TensorDataset(torch.randn(6, 5), torch.zeros(6).long()), batch_size=4, drop_last=True)
    try:
        with learn.distrib_ctx(), learn.no_bar(): learn.fit(1)
    except ValueError as e: res['empty_shard_error'] = str(e)
    assert type(learn.model) is nn.Sequential and learn.dls is dls

    if rank == 0: torch.save(res, Path(out)/'results.pt')
    print(f"rank {rank} done", flush=True)
    teardown_distrib()


def fail(out):
    from learnerlab.distributed import setup_distrib
    setup_distrib(timeout=60)
    learn = make_learner(4, out)
    with learn.distrib_ctx(), learn.no_bar(): learn.fit(1, cbs=Boom(at=2, ranks=(1,)))


if __name__ == '__main__':
    mode, out = sys.argv[1], sys.argv[2]
    {'train': train, 'fail': fail}[mode](out)
