"""Data-parallel training on 2 CPU processes (gloo, 127.0.0.1), launched with torchrun.

One job (tests/dist_scripts/train_ddp.py) trains on 2 ranks with 4 items per rank and batch; the
tests here run the same training in this single process with batches of 8 in the same order and
compare: final weights, the Recorder's values, predictions, which files were written, who printed.
"""
import sys, time
from pathlib import Path

import pytest
import torch
import fastcore.test as fct

from learnerlab.distributed import run_torchrun
from learnerlab.training import CSVLogger, SaveModelCallback, GradientAccumulation
from learnerlab.mixed_precision import MixedPrecision

SCRIPTS = Path(__file__).parent/'dist_scripts'
sys.path.insert(0, str(SCRIPTS))
import train_ddp as job

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "The 2-rank job's process and results (rank 0's)."
    out = tmp_path_factory.mktemp('ddp')
    proc = run_torchrun(SCRIPTS/'train_ddp.py', 'train', out, nproc=2, timeout=150)
    return proc, torch.load(out/'results.pt', weights_only=False), out


def single_learner(tmp_path, bs=8, cbs=None):
    learn = job.make_learner(bs, tmp_path, cbs=cbs)
    return learn


def test_torch_ddp_reference_matches_one_process(run):
    "Plain torch: DDP with 4 items per rank ends with the weights of 1 process with batches of 8."
    _, res, _ = run
    single = job.torch_reference(bs=8)
    for k in single: fct.test_close(res['torch'][k], single[k], eps=1e-5)


def test_learner_weights_and_metrics_match_one_process(run, tmp_path):
    _, res, _ = run
    learn = single_learner(tmp_path, cbs=[CSVLogger(), SaveModelCallback(fname='best')])
    with learn.no_bar(), learn.no_logging(): learn.fit(job.N_EPOCH)
    # one smoothed, rank-averaged training loss per global batch of 8, equal to the single-process ones
    fct.test_eq(len(res['losses']), job.N_EPOCH * job.N_TRAIN // 8)
    fct.test_close(res['losses'], torch.stack(learn.recorder.losses), eps=1e-5)
    for k, v in learn.model.state_dict().items(): fct.test_close(res['weights'][k], v, eps=1e-5)
    fct.test_eq(len(res['values']), job.N_EPOCH)
    for dist_row, row in zip(res['values'], learn.recorder.values):
        fct.test_close(torch.tensor(dist_row), torch.tensor(row), eps=1e-5)   # train_loss, valid_loss, accuracy
    preds, targs = learn.get_preds()
    fct.test_eq(res['preds'].shape, (job.N_VALID, 3))                 # the padding item was dropped
    fct.test_close(res['preds'], preds, eps=1e-5)
    fct.test_eq(res['targs'], targs)


def test_gradient_accumulation_skips_sync_and_matches(run, tmp_path):
    _, res, _ = run
    learn = single_learner(tmp_path, cbs=[GradientAccumulation(n_acc=16)])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    for k, v in learn.model.state_dict().items(): fct.test_close(res['ga_weights'][k], v, eps=1e-5)
    fct.test_eq(res['ga_syncs'], [False, True] * 3)      # gradients averaged only before each optimizer step


def test_shuffling_is_shared_and_changes_each_epoch(run):
    "With shuffle=True, set_epoch is called each epoch: the ranks split every epoch's items, in a new order."
    _, res, _ = run
    fct.test_eq(res['sampler_epochs'], [0, 1])
    x_all = job.make_data()[0].tensors[0]
    key = lambda rows: sorted(map(tuple, rows.tolist()))
    for epoch in (0, 1):
        rank0, rank1 = res['shuffled'][0][epoch], res['shuffled'][1][epoch]
        fct.test_eq(len(rank0), job.N_TRAIN // 2)
        fct.test_eq(key(torch.cat([rank0, rank1])), key(x_all))      # together: every item once
    fct.test_ne(res['shuffled'][0][0].tolist(), res['shuffled'][0][1].tolist())


def test_mixed_precision_keeps_ranks_identical(run, tmp_path):
    "Under autocast the ranks still take identical steps, close to one process's (bfloat16 rounding)."
    _, res, _ = run
    rank0, rank1 = res['mp_weights']
    for k in rank0: fct.test_eq(rank0[k], rank1[k])
    learn = single_learner(tmp_path, cbs=MixedPrecision(dtype=torch.bfloat16))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    for k, v in learn.model.state_dict().items(): fct.test_close(rank0[k], v, eps=2e-3)
    fct.test_close(torch.tensor(res['mp_values'][0]), torch.tensor(learn.recorder.values[0]), eps=2e-3)


def test_only_rank0_writes_and_prints(run):
    proc, res, out = run
    files = sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file())
    fct.test_eq(files, ['cache.txt', 'history.csv', 'models/best.pth', 'models/from_rank0.pth', 'results.pt'])
    fct.test_eq(res['created'], [True, False])                      # rank0_first: rank 0 created it, rank 1 found it
    fct.test_eq((out/'cache.txt').read_text(), 'written by rank 0')
    fct.test_eq(len((out/'history.csv').read_text().strip().splitlines()), 1 + job.N_EPOCH)
    fct.test_eq(proc.stdout.count('train_loss'), 2)   # one results table per fit that finished, not one per rank
    fct.test_eq(res['after_error'], 'unwrapped')


def test_empty_shard_is_a_clear_error(run):
    "6 items, 3 per rank, bs=4 with drop_last=True: no rank has a batch; the error says why and what to change."
    _, res, _ = run
    msg = res.get('empty_shard_error', '')
    for part in ('2 ranks gets 3 training items', 'bs=4', 'drop_last'): assert part in msg, msg


def test_checkpoint_from_ddp_fit_loads_in_one_process(run):
    "SaveModelCallback saved while the model was wrapped in DDP: the checkpoint holds the plain model."
    _, res, out = run
    learn = job.make_learner(8, out)
    learn.load('best', with_opt=False)           # a 'module.'-prefixed state dict would not fit
    for k, v in learn.model.state_dict().items(): fct.test_eq(v, res['weights'][k])   # best = last epoch here


def test_failing_rank_stops_the_job(tmp_path):
    "Rank 1 raises mid-fit while rank 0 waits for it in DDP: the job ends, with rank 1's error, well before the timeout."
    start = time.time()
    with pytest.raises(RuntimeError, match='boom on rank 1'):
        run_torchrun(SCRIPTS/'train_ddp.py', 'fail', tmp_path, nproc=2, timeout=90)
    assert time.time() - start < 60
