"""Property tests of the pure functions under learnerlab's widgets, and headless tests of the explorers."""
import math

import fastcore.test as fct
import pytest
from hypothesis import given, settings, strategies as st

from learnerlab.widgets import ewma, ewma_table, make_signal, check_beta, ewma_explorer, one_cycle_curves, schedule_explorer

values = st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), max_size=40)
betas = st.floats(min_value=0., max_value=0.99)
fast = settings(max_examples=60, deadline=None)

@fast
@given(c=st.floats(min_value=-1e3, max_value=1e3), n=st.integers(1, 60), beta=betas)
def test_debiased_constant_is_constant(c, n, beta):
    "Debiasing removes the cold start exactly: a constant input gives that constant at every step."
    fct.test_close(ewma([c]*n, beta), [c]*n, eps=1e-9*max(1., abs(c)))

@fast
@given(c=st.floats(min_value=-1e3, max_value=1e3), n=st.integers(1, 60), beta=betas)
def test_plain_constant_is_biased_by_debias_factor(c, n, beta):
    "Without debiasing, step i of a constant input has reached the fraction 1-beta**(i+1) of it."
    fct.test_close(ewma([c]*n, beta, debias=False), [c*(1 - beta**(i+1)) for i in range(n)], eps=1e-9*max(1., abs(c)))

@fast
@given(xs=values, beta=betas)
def test_debias_divides_by_one_minus_beta_power(xs, beta):
    plain, unbiased = ewma(xs, beta, debias=False), ewma(xs, beta)
    fct.test_close([u*(1 - beta**(i+1)) for i, u in enumerate(unbiased)] or [0.], plain or [0.], eps=1e-6)

@fast
@given(xs=values, beta=betas)
def test_matches_closed_form(xs, beta):
    "avg_i = (1-beta) * sum_j beta**(i-j) * x_j."
    want = [(1-beta)*sum(beta**(i-j)*xs[j] for j in range(i+1)) for i in range(len(xs))]
    fct.test_close(ewma(xs, beta, debias=False) or [0.], want or [0.], eps=1e-6)

@fast
@given(xs=values.filter(bool), beta=betas)
def test_debiased_is_a_weighted_mean_of_the_prefix(xs, beta):
    "The debiased average is a convex combination of the values so far, so it stays within their range."
    for i, u in enumerate(ewma(xs, beta)):
        assert min(xs[:i+1]) - 1e-6 <= u <= max(xs[:i+1]) + 1e-6

@fast
@given(xs=values, beta=betas, a=st.floats(-10, 10), b=st.floats(-10, 10))
def test_linear(xs, beta, a, b):
    ys = [x/2 + 1 for x in xs]
    combined = ewma([a*x + b*y for x, y in zip(xs, ys)], beta)
    separate = [a*p + b*q for p, q in zip(ewma(xs, beta), ewma(ys, beta))]
    fct.test_close(combined or [0.], separate or [0.], eps=1e-5)

@fast
@given(xs=values)
def test_beta_zero_is_identity(xs):
    fct.test_close(ewma(xs, 0.) or [0.], xs or [0.])
    fct.test_close(ewma(xs, 0., debias=False) or [0.], xs or [0.])

@fast
@given(xs=values, beta=betas)
def test_table_agrees_with_ewma(xs, beta):
    rows = ewma_table(xs, beta)
    fct.test_eq([r[0] for r in rows], list(range(len(xs))))
    fct.test_eq([r[2] for r in rows], ewma(xs, beta, debias=False))
    fct.test_eq([r[3] for r in rows], ewma(xs, beta))

def test_chapter_questionnaire_numbers():
    rows = ewma_table([1., 2., 3., -1.], 0.9)
    fct.test_close([r[2] for r in rows], [0.1, 0.29, 0.561, 0.4049])
    fct.test_close([r[3] for r in rows], [1., 1.526316, 2.070111, 1.177377])

@pytest.mark.parametrize('bad', [1., 1.2, -0.01, float('nan'), 'x', None, True])
def test_bad_beta_is_refused_with_its_name(bad):
    with pytest.raises(ValueError, match=r'beta must be a number in \[0, 1\)'): ewma([1.], bad)
    with pytest.raises(ValueError, match='sqr_mom must be'): check_beta(bad, 'sqr_mom')

@fast
@given(kind=st.sampled_from(['noisy', 'step', 'flip']), n=st.integers(1, 300), seed=st.integers(0, 10))
def test_signals_have_length_n_and_are_reproducible(kind, n, seed):
    xs = make_signal(kind, n, seed)
    fct.test_eq(len(xs), n)
    fct.test_eq(xs, make_signal(kind, n, seed))
    assert all(math.isfinite(x) for x in xs)

def test_ewma_explorer_headless_redraws_on_control_change():
    w = ewma_explorer(beta=0.9, signal='flip', n=50)
    line = w.fig.axes[0].lines[1]
    fct.test_close(list(line.get_ydata()), ewma(make_signal('flip', 50), 0.9, debias=False))
    png = w.image.value
    w.beta.value = 0.5
    fct.test_close(list(w.fig.axes[0].lines[1].get_ydata()), ewma(make_signal('flip', 50), 0.5, debias=False))
    assert w.image.value != png
    w.signal.value = 'step'
    fct.test_eq(w.data['x'], make_signal('step', 50))

@fast
@given(lr_max=st.floats(1e-5, 10.), div=st.floats(1., 100.), div_final=st.floats(1., 1e6), pct=st.floats(0.05, 0.95),
       lo=st.floats(0., 0.9), n=st.integers(2, 200))
def test_one_cycle_curves_ends_peak_and_bounds(lr_max, div, div_final, pct, lo, n):
    hi = lo + 0.05
    c = one_cycle_curves(lr_max, div, div_final, pct, (hi, lo, hi), n)
    fct.test_eq([len(c[k]) for k in ('pos', 'lr', 'mom')], [n]*3)
    fct.test_close([c['lr'][0], c['lr'][-1]], [lr_max/div, lr_max/div_final], eps=1e-9*lr_max)
    assert max(c['lr']) <= lr_max*(1 + 1e-9) and min(c['lr']) >= min(lr_max/div, lr_max/div_final)*(1 - 1e-9)
    assert all(lo - 1e-12 <= m <= hi + 1e-12 for m in c['mom'])
    # the learning rate rises until pct_start and falls after it
    up = [l for p, l in zip(c['pos'], c['lr']) if p <= pct]
    down = [l for p, l in zip(c['pos'], c['lr']) if p >= pct]
    assert all(a <= b*(1 + 1e-12) for a, b in zip(up, up[1:])) and all(a >= b*(1 - 1e-12) for a, b in zip(down, down[1:]))

def test_schedule_explorer_headless_redraws_on_control_change():
    w = schedule_explorer()
    before = list(w.fig.axes[0].lines[0].get_ydata())
    w.div.value = 5.
    after = list(w.fig.axes[0].lines[0].get_ydata())
    assert before != after
    fct.test_close(after[0], 1e-3/5)

def test_ewma_explorer_live_in_a_jupyter_kernel():
    """The live path, at the Jupyter protocol level: in a real ipykernel the explorer opens widget comms and
    displays as a widget view; a frontend message that drags `beta` makes the kernel send a new PNG to the image."""
    manager = pytest.importorskip('jupyter_client.manager')
    import queue
    km, kc = manager.start_new_kernel(kernel_name='python3')
    try:
        def iopub_until_idle(msg_id=None):
            msgs = []
            while True:
                m = kc.get_iopub_msg(timeout=60)
                if msg_id and m['parent_header'].get('msg_id') != msg_id: continue
                msgs.append(m)
                if m['msg_type'] == 'status' and m['content']['execution_state'] == 'idle': return msgs
        msgs = iopub_until_idle(kc.execute("from learnerlab.widgets import ewma_explorer\nw = ewma_explorer()\nw"))
        opens = [m['content'] for m in msgs if m['msg_type'] == 'comm_open']
        result = [m['content']['data'] for m in msgs if m['msg_type'] == 'execute_result'][0]
        assert 'application/vnd.jupyter.widget-view+json' in result and 'image/png' in result
        beta_id = [o['comm_id'] for o in opens if o['data']['state'].get('description') == 'beta'][0]
        image_id = [o['comm_id'] for o in opens if o['data']['state'].get('_model_name') == 'ImageModel'][0]
        kc.shell_channel.send(kc.session.msg('comm_msg', {'comm_id': beta_id, 'data': {
            'method': 'update', 'state': {'value': 0.5}, 'buffer_paths': []}}))
        image_updates = []
        while not image_updates:
            try: m = kc.get_iopub_msg(timeout=30)
            except queue.Empty: break
            if m['msg_type'] == 'comm_msg' and m['content']['comm_id'] == image_id: image_updates.append(m)
        assert image_updates and image_updates[0]['buffers'][0][:8] == b'\x89PNG\r\n\x1a\n'
        out = iopub_until_idle(kc.execute("print(w.beta.value, w.n_draws)"))
        fct.test_eq([m['content']['text'].split() for m in out if m['msg_type'] == 'stream'], [['0.5', '2']])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

@fast
@given(x0=st.floats(-5, 5), y0=st.floats(-2, 2), lr=st.floats(0.001, 0.19), steps=st.integers(0, 30))
def test_sgd_path_on_canyon_is_geometric(x0, y0, lr, steps):
    "On 0.5*(0.1*x**2 + 10*y**2) each SGD step multiplies x by 1-0.1*lr and y by 1-10*lr."
    from learnerlab.optimizer import SGD
    from learnerlab.widgets import optimize_path
    import torch
    path = optimize_path(SGD, (x0, y0), steps, lr=lr)
    k = torch.arange(steps + 1, dtype=torch.float64)
    fct.test_close(path[:, 0].double(), x0*(1 - 0.1*lr)**k, eps=1e-4)
    fct.test_close(path[:, 1].double(), y0*(1 - 10*lr)**k, eps=1e-4)

@fast
@given(x0=st.floats(-5, 5).filter(lambda v: abs(v) > 0.5), y0=st.floats(-2, 2).filter(lambda v: abs(v) > 0.5),
       lr=st.floats(0.001, 0.5), mom=st.floats(0., 0.99), sqr_mom=st.floats(0.5, 0.999))
def test_adam_first_step_has_size_lr_in_each_coordinate(x0, y0, lr, mom, sqr_mom):
    "Debiasing makes Adam's first step lr*sign(grad) per coordinate, whatever mom, sqr_mom and the gradient's size."
    from learnerlab.optimizer import Adam
    from learnerlab.widgets import optimize_path
    import torch
    step = optimize_path(Adam, (x0, y0), 1, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=1e-8, wd=0.)
    fct.test_close(step[1] - step[0], -lr*torch.tensor([math.copysign(1, x0), math.copysign(1, y0)]), eps=1e-4)

def test_optimizer_path_explorer_headless_redraws_on_control_change():
    from learnerlab.widgets import optimizer_path_explorer
    w = optimizer_path_explorer(steps=10)
    lines = {l.get_label(): l for l in w.fig.axes[0].lines}
    before = list(lines['SGD+momentum'].get_ydata())
    w.mom.value = 0.5
    after = list({l.get_label(): l for l in w.fig.axes[0].lines}['SGD+momentum'].get_ydata())
    assert before != after
    fct.test_close(after, w.data['SGD+momentum'][:, 1].tolist())

def test_schedule_explorer_curves_are_what_fit_one_cycle_does():
    "The explorer's curves, sampled at each batch's position, are the lr and mom the Recorder saw in a real fit_one_cycle."
    import torch
    from torch import nn
    import learnerlab.schedule  # attaches Learner.fit_one_cycle
    from learnerlab.learner import Learner, DataLoaders
    from learnerlab.optimizer import SGD
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    ds = list(zip(x, x.sum(1, keepdim=True)))
    learn = Learner(DataLoaders.from_dsets(ds, ds[:16], bs=8), nn.Linear(3, 1), loss_func=nn.MSELoss(), opt_func=SGD)
    with learn.no_logging(), learn.no_bar(): learn.fit_one_cycle(2, 0.1, pct_start=0.3, div=10., moms=(0.9, 0.8, 0.9))
    n_batches = len(learn.recorder.hps['lr'])
    fct.test_eq(n_batches, 16)
    curves = one_cycle_curves(0.1, div=10., pct_start=0.3, moms=(0.9, 0.8, 0.9), n=n_batches + 1)   # positions i/16
    fct.test_close(learn.recorder.hps['lr'], curves['lr'][:n_batches], eps=1e-9)
    fct.test_close(learn.recorder.hps['mom'], curves['mom'][:n_batches], eps=1e-9)

@settings(max_examples=8, deadline=None)
@given(ticked=st.sets(st.sampled_from(('SGD', 'SGD+momentum', 'RMSProp', 'Adam'))))
def test_optimizer_path_colours_do_not_depend_on_what_is_ticked(ticked):
    "Whichever optimizers are ticked, each path and loss curve has its optimizer's colour, and the top panel names them."
    from matplotlib.colors import to_hex
    from learnerlab.widgets import optimizer_path_explorer, PATH_COLORS, PATH_OPTIMIZERS
    w = optimizer_path_explorer(steps=3)
    for n in PATH_OPTIMIZERS: w.show[n].value = n in ticked
    top, loss = w.fig.axes[0], w.fig.axes[1]
    paths = {l.get_label(): to_hex(l.get_color()) for l in top.lines if l.get_label() != 'start'}
    fct.test_eq(paths, {n: to_hex(PATH_COLORS[n]) for n in ticked})
    fct.test_eq(sorted(to_hex(l.get_color()) for l in loss.lines), sorted(paths.values()))
    fct.test_eq({t.get_text() for t in top.get_legend().get_texts()}, set(ticked) | {'start'})

@settings(max_examples=10, deadline=None)
@given(lr=st.floats(1e-4, 1.), name=st.sampled_from(('SGD', 'SGD+momentum', 'RMSProp', 'Adam')))
def test_a_starting_learning_rate_is_a_slider_position(lr, name):
    "The learning-rate slider starts exactly on the rate asked for, which is one of its positions; moving it sets the run's lr."
    from learnerlab.widgets import optimizer_path_explorer
    w = optimizer_path_explorer(steps=1, lrs={name: lr})
    slider, positions = w.lr[name], [v for _, v in w.lr[name].options]
    assert lr in positions and slider.value == lr
    assert positions == sorted(positions) and len(positions) >= 25
    slider.index = 0
    fct.test_eq(w.runs()[name][1]['lr'], positions[0])

def test_shared_sliders_sit_apart_from_the_optimizers():
    "The panel has one box per group: the optimizers' rows (tick box and lr each) and the shared sliders."
    from learnerlab.widgets import optimizer_path_explorer, PATH_OPTIMIZERS
    w = optimizer_path_explorer(steps=1)
    per_opt, shared = w.ui.children[0].children
    rows = [c for c in per_opt.children if hasattr(c, 'children')]
    fct.test_eq([row.children[1:] for row in rows], [(w.show[n], w.lr[n]) for n in PATH_OPTIMIZERS])
    fct.test_eq(list(shared.children[1:]), [w.mom, w.sqr_mom, w.eps, w.steps])
    assert 'Shared' in shared.children[0].value and per_opt.layout.border and shared.layout.border

def test_schedule_explorer_shows_both_momentum_ends():
    w = schedule_explorer(moms=(0.9, 0.8, 0.9))
    assert not w.moms.readout and w.moms_readout in w.ui.children[0].children[-1].children
    fct.test_eq(w.moms_readout.value, '0.80 to 0.90')
    w.moms.value = (0.7, 0.95)
    fct.test_eq(w.moms_readout.value, '0.70 to 0.95')
