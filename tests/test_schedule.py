"Schedules, lr_find, mixed precision and the standard callbacks: properties and end-to-end checks on the CPU."
import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
import fastcore.test as fct
from hypothesis import given, settings, strategies as st

from learnerlab.callback import Callback
from learnerlab.learner import Learner, DataLoaders
from learnerlab.progress import ProgressCallback
import learnerlab.predict, learnerlab.checkpoint   # Learner.validate, Learner.save/load
from learnerlab.optimizer import SGD, Adam
from learnerlab.schedule import (SchedLin, SchedCos, SchedExp, SchedNo, SchedPoly, combine_scheds, combined_cos,
                                 ParamScheduler, minimum, steep, valley, slide, SuggestedLRs)
from learnerlab.mixed_precision import MixedPrecision
from learnerlab.training import (GradientAccumulation, SaveModelCallback, TerminateOnNaNCallback,
                                 EarlyStoppingCallback, CSVLogger, ReduceLROnPlateau)

torch.set_num_threads(1)
pos_st = st.floats(0, 1, allow_nan=False)


# -- annealers against their formulas ------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(pos_st, st.floats(-10, 10), st.floats(-10, 10))
def test_annealer_formulas(pos, a, b):
    fct.test_close(SchedLin(a, b)(pos), a + pos*(b - a), eps=1e-9)
    fct.test_close(SchedCos(a, b)(pos), a + (b - a)*(1 - math.cos(math.pi*pos))/2, eps=1e-9)
    fct.test_eq(SchedNo(a, b)(pos), a)
    fct.test_close(SchedPoly(a, b, 2)(pos), a + (b - a)*pos**2, eps=1e-9)


@settings(max_examples=60, deadline=None)
@given(pos_st, st.floats(1e-6, 10), st.floats(1e-6, 10))
def test_sched_exp_is_linear_in_log(pos, a, b):
    fct.test_close(math.log(SchedExp(a, b)(pos)), math.log(a) + pos*(math.log(b) - math.log(a)), eps=1e-9)


@settings(max_examples=60, deadline=None)
@given(pos_st, st.floats(0.01, 0.99))
def test_one_cycle_curve(pos, pct):
    "combined_cos: cosine warm-up over `pct`, cosine down after; continuous at the junction."
    f = combined_cos(pct, 1., 10., 0.)
    if pos < pct: expected = 1 + 9*(1 - math.cos(math.pi*pos/pct))/2
    else: expected = 10 - 10*(1 - math.cos(math.pi*(pos - pct)/(1 - pct)))/2
    fct.test_close(f(pos), expected, eps=1e-7)
    fct.test_close(f(pct), 10.)
    fct.test_close(f(0), 1.); fct.test_close(f(1), 0.)


def test_combine_scheds_bad_input():
    fct.test_fail(lambda: combine_scheds([0.5, 0.4], [SchedNo(0, 0)]*2), contains='add up to 1')
    fct.test_fail(lambda: SchedExp(0, 1), contains='SchedExp needs start and end > 0')
    fct.test_fail(lambda: SchedLin(0, 1)(2), contains='pos must be in [0, 1]')


# -- suggestions on synthetic curves ---------------------------------------------------------------------------------

def _curve(n=200, centre=-3.):
    xs = torch.linspace(-7, 1, n, dtype=torch.float64)
    losses = 2/(1 + torch.exp(3*(xs - centre))) + 0.3 + 0.05*torch.exp(3*(xs + 1))
    return (10**xs).tolist(), losses.tolist()


@pytest.mark.parametrize('centre', [-5., -4., -3., -2.])
def test_suggestions_follow_the_curve(centre):
    "Moving the fall of the loss moves `steep` with it; the order steep < slide < minimum*10 holds."
    lrs, losses = _curve(centre=centre)
    fct.test_close(math.log10(steep(lrs, losses)), centre, eps=0.05)
    i_min = min(range(len(losses)), key=losses.__getitem__)
    fct.test_close(minimum(lrs, losses), lrs[i_min]/10)
    assert steep(lrs, losses) < slide(lrs, losses) < lrs[i_min]
    assert lrs[0] < valley(lrs, losses) < lrs[i_min]


# -- a small learner -------------------------------------------------------------------------------------------------

def _spirals(n, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * math.pi + 0.5
    cls = torch.randint(0, 2, (n,), generator=g)
    sign = 1 - 2 * cls.float()
    x = torch.stack([sign * t * torch.cos(t), sign * t * torch.sin(t)], 1) / 5
    return TensorDataset(x + 0.04 * torch.randn(n, 2, generator=g), cls)


def _learner(path=None, **kwargs):
    torch.manual_seed(0)
    dls = DataLoaders.from_dsets(_spirals(128, 0), _spirals(64, 1), bs=32, device='cpu')
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), path=path, **kwargs)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda row: None
    return learn


def _state(learn):
    "Everything lr_find promises to restore, as plain copies."
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt = None
    if learn.opt is not None:
        sd = learn.opt.state_dict()
        opt = (repr(sd), [dict(h) for h in learn.opt.hypers],
               [t.clone() for p in learn.model.parameters() for t in learn.opt.state.get(p, {}).values()
                if isinstance(t, torch.Tensor)])
    return weights, opt, torch.get_rng_state().clone()


def test_lr_find_leaves_learner_unchanged():
    learn = _learner(opt_func=Adam, lr=1e-2)
    learn.fit(1)                                   # optimizer state (moving averages) to preserve
    opt_before = learn.opt
    w0, o0, r0 = _state(learn)
    values_before = [list(v) for v in learn.recorder.values]
    sugg = learn.lr_find(num_it=30, show_plot=False, suggest_funcs=(minimum, steep, valley, slide))
    w1, o1, r1 = _state(learn)
    assert learn.opt is opt_before
    for k in w0: assert torch.equal(w0[k], w1[k]), k            # bitwise
    fct.test_eq(o0[:2], o1[:2])
    for a, b in zip(o0[2], o1[2]): assert torch.equal(a, b)
    assert torch.equal(r0, r1)
    fct.test_eq(learn.recorder.values, values_before)
    assert isinstance(sugg, SuggestedLRs) and all(v is not None and v > 0 for v in sugg)


@pytest.mark.parametrize('half', [None, 'fp16'])
def test_lr_find_then_fit_is_fit(half):
    "Training after lr_find gives exactly the losses of training without it (fp16: the loss scale is kept too)."
    a, b = _learner(opt_func=Adam), _learner(opt_func=Adam)
    if half: a.to_fp16(on_cpu='fp16', init_scale=2.**20, growth_interval=3); b.to_fp16(on_cpu='fp16', init_scale=2.**20, growth_interval=3)
    torch.manual_seed(3); a.fit(1, 1e-2); a.fit_one_cycle(2, 1e-2)
    torch.manual_seed(3); b.fit(1, 1e-2); b.lr_find(num_it=20, show_plot=False); b.fit_one_cycle(2, 1e-2)
    fct.test_eq(a.recorder.values, b.recorder.values)
    if half: fct.test_eq(a.mixed_precision.scaler.get_scale(), b.mixed_precision.scaler.get_scale())


def test_lr_find_with_tracking_callbacks(tmp_path):
    "A sweep longer than an epoch with trackers and a CSV log attached: they stay idle, nothing is written."
    learn = _learner(path=tmp_path, cbs=[EarlyStoppingCallback(patience=1), SaveModelCallback(), CSVLogger(),
                                         ReduceLROnPlateau()])
    learn.fit(2)
    log = (tmp_path/'history.csv').read_text()
    best = learn.save_model.best
    learn.lr_find(num_it=3*len(learn.dls.train), show_plot=False)
    fct.test_eq((tmp_path/'history.csv').read_text(), log)
    fct.test_eq(learn.save_model.best, best)
    fct.test_eq(sorted(p.name for p in (tmp_path/'models').iterdir()), ['model.pth'])


def test_lr_find_stops_on_divergence():
    learn = _learner(opt_func=SGD)
    learn.lr_find(start_lr=1e-3, end_lr=1e5, num_it=100, show_plot=False)
    lrs, losses = learn.lr_finder_results
    assert len(lrs) < 100 and lrs[-1] < 1e5
    fct.test_close(lrs[1]/lrs[0], 10**(8/99))


# -- schedules applied by the learner --------------------------------------------------------------------------------

def test_fit_one_cycle_values_and_chapter_calls(tmp_path):
    import matplotlib; matplotlib.use('Agg')
    learn = _learner(opt_func=SGD)
    learn.fit_one_cycle(3, 0.03, moms=(0, 0, 0))               # the chapter's call
    n = 3 * len(learn.dls.train)
    lrs, moms = learn.recorder.hps['lr'], learn.recorder.hps['mom']
    f = combined_cos(0.25, 0.03/25, 0.03, 0.03/1e5)
    fct.test_close(lrs, [f(i/n) for i in range(n)], eps=1e-12)
    fct.test_eq(set(moms), {0.})
    learn.recorder.plot_sched()                                # the chapter's call
    learn.lr_find()                                            # the chapter's call, default arguments
    learn.fit_one_cycle(2, 0.01)                               # default moms: learn.moms
    g = combined_cos(0.25, *learn.moms)
    fct.test_close(learn.recorder.hps['mom'], [g(i/8) for i in range(8)], eps=1e-12)


def test_discriminative_one_cycle():
    def splitter(m): return [list(m[0].parameters()), list(m[3].parameters())]
    learn = _learner(opt_func=SGD, splitter=splitter)
    seen = []
    class Watch(Callback):
        order = 5
        def before_batch(self): seen.append([h['lr'] for h in self.learn.opt.hypers])
    learn.fit_one_cycle(1, slice(1e-4, 1e-2), cbs=Watch())
    for lo, hi in seen: fct.test_close(hi/lo, 100.)
    fct.test_close(max(hi for _, hi in seen), 1e-2)


def test_param_scheduler_any_hyper():
    "Any hyper-parameter of the optimizer is scheduled like lr, by name; an unknown name is refused."
    learn = _learner(opt_func=SGD)
    learn.fit(2, cbs=ParamScheduler({'wd': SchedLin(0., 0.8)}))
    fct.test_close(learn.recorder.hps['wd'], [i/10 for i in range(8)])
    fct.test_fail(lambda: learn.fit(1, cbs=ParamScheduler({'bogus': SchedLin(0., 1.)})), contains="cannot schedule 'bogus'")


# -- resume == uninterrupted -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('half', [None, 'bf16', 'fp16'])
def test_resume_equals_uninterrupted(tmp_path, half):
    def make():
        learn = _learner(path=tmp_path, opt_func=partial(SGD, mom=0.9), lr=0.1)
        if half == 'bf16': learn.to_bf16()
        if half == 'fp16': learn.to_fp16(on_cpu='fp16', init_scale=2.**20, growth_interval=3)
        return learn
    full = make()
    full.fit_one_cycle(4, 0.1, cbs=SaveModelCallback(every_epoch=True, with_opt=True, fname='ck'))
    resumed = make()
    torch.manual_seed(1234)
    resumed.load('ck_1')
    resumed.fit_one_cycle(4, 0.1, start_epoch=resumed.epoch + 1)
    fct.test_eq(resumed.recorder.values, full.recorder.values)
    fct.test_eq(resumed.recorder.hps['lr'], full.recorder.hps['lr'])
    for p, q in zip(full.model.parameters(), resumed.model.parameters()): assert torch.equal(p, q)
    if half == 'fp16':
        fct.test_eq(resumed.mixed_precision.scaler.get_scale(), full.mixed_precision.scaler.get_scale())


# -- mixed precision, accumulation, NaN guard ------------------------------------------------------------------------

def test_mixed_precision_cleans_up_after_errors():
    class Boom(Callback):
        order = 20
        def before_step(self): raise KeyboardInterrupt
    for half in ('fp16', 'bf16'):
        learn = _learner()
        learn.to_fp16(on_cpu='fp16') if half == 'fp16' else learn.to_bf16()
        learn.add_cb(Boom())
        with pytest.raises(KeyboardInterrupt): learn.fit(1)
        assert not torch.is_autocast_enabled('cpu')
        assert {p.dtype for p in learn.model.parameters()} == {torch.float32}
        assert learn.pred.dtype == torch.float32 and learn.loss.dtype == torch.float32
        learn.remove_cb(learn.boom)
        learn.to_fp32()
        assert not any(isinstance(cb, MixedPrecision) for cb in learn.cbs)
        learn.fit(1)
        assert {p.dtype for p in learn.model.parameters()} == {torch.float32}


def test_fp16_skipped_steps_do_not_advance_schedule():
    learn = _learner(opt_func=SGD).to_fp16(on_cpu='fp16', init_scale=2.**40, backoff_factor=2.**-8)
    learn.fit_one_cycle(2, 0.05)
    skipped = learn.mixed_precision.skipped
    n = 2 * len(learn.dls.train)
    assert 1 <= skipped < n
    fct.test_eq(learn.train_iter, n - skipped)
    # the lr of batch i is the one-cycle value at (steps done before it)/n: skipped batches repeat their position
    f = combined_cos(0.25, 0.05/25, 0.05, 0.05/1e5)
    lrs = learn.recorder.hps['lr']
    fct.test_close(lrs[:skipped + 1], [f(0)] * (skipped + 1), eps=1e-12)
    fct.test_close(lrs[-1], f((n - skipped - 1)/n), eps=1e-12)


def test_gradient_accumulation_reaches_schedule_end():
    learn = _learner(opt_func=SGD)
    steps = []
    class Count(Callback):
        def after_step(self): steps.append(self.learn.train_iter)
    learn.fit_one_cycle(2, 0.05, cbs=[GradientAccumulation(64), Count()])
    fct.test_eq(len(steps), 4)                                  # 2 epochs x 128 items / 64
    f = combined_cos(0.25, 0.05/25, 0.05, 0.05/1e5)
    fct.test_close(learn.recorder.hps['lr'][-1], f(7/8), eps=1e-12)
    assert all(p.grad is None or not p.grad.any() for p in learn.model.parameters())


def test_terminate_on_nan_and_early_stopping():
    learn = _learner(opt_func=SGD, lr=1e8, cbs=TerminateOnNaNCallback())
    learn.fit(5)
    assert all(torch.isfinite(l) for l in learn.recorder.losses)
    assert learn.train_iter < 5 * len(learn.dls.train)
    learn = _learner(lr=0., cbs=EarlyStoppingCallback(patience=3))
    learn.fit(20)
    fct.test_eq(len(learn.recorder.values), 4)


def test_show_training_loop_after_fit_one_cycle_shows_the_scheduler(capsys):
    learn = _learner(opt_func=SGD)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 0.05)
    capsys.readouterr()
    learn.show_training_loop()
    out = capsys.readouterr().out
    assert 'ParamScheduler*' in out and '* for one fit only' in out
    assert 'param_scheduler' not in learn.__dict__             # shown, but not attached any more
