"""learnerlab's optimizers against torch.optim: same parameters after 100 steps, on every execution strategy.

Property tests (hypothesis) draw shapes, parameter groups and hyper-parameters; each learnerlab optimizer
runs with every `impl` that can run its chain ('loop', 'foreach', 'fused' where it declares a kernel,
'auto', and 'compile' with fewer examples where torch.compile can build CPU code), on the same fixed random
gradients as the torch.optim optimizer with the matching settings. Then the bad-input errors, state round
trips, freezing and weight-decay exclusion.
"""
import io, math, warnings
from functools import partial

import pytest
import torch
import fastcore.test as fct
from hypothesis import given, settings, strategies as st, HealthCheck

from learnerlab.optimizer import Optimizer, SGD, RMSProp, Adam, sgd_step, average_grad, momentum_step, norm_bias_params
from learnerlab.optim_impl import PerParameterWarning, compile_error
from learnerlab.optim_extra import RAdam, QHAdam, LAMB, Larc, Lookahead, ranger, OptimWrapper

N_STEPS = 100
FUSED_PATHS = ('fused', 'foreach', 'loop', 'auto')   # optimizers that declare a fused kernel
PATHS = ('foreach', 'loop', 'auto')
prop_settings = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _inductor_works():
    "Can torch.compile build CPU code on this machine at all (a C++ compiler and its headers)?"
    try: return bool(torch.equal(torch.compile(lambda x: x * 2 + 1)(torch.ones(3)), torch.full((3,), 3.)))
    except Exception: return False

HAS_CXX = _inductor_works()
compile_settings = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason='torch.compile cannot build CPU code here (needs a C++ compiler)')


def _make_groups(shapes_per_group, seed):
    "Random parameters, one list per group, and an identical copy of them."
    g = torch.Generator().manual_seed(seed)
    groups = [[torch.randn(s, generator=g, dtype=torch.float32).requires_grad_() for s in shapes] for shapes in shapes_per_group]
    copy = [[p.detach().clone().requires_grad_() for p in ps] for ps in groups]
    return groups, copy


def _run_both(ll_func, ll_group_kw, torch_cls, torch_group_kw, shapes_per_group, path, seed=0, n_steps=N_STEPS):
    "Run learnerlab's and torch's optimizers on the same gradients for `n_steps`; return both sets of parameters."
    ll_groups, t_groups = _make_groups(shapes_per_group, seed)
    opt = ll_func([{'params': ps, **kw} for ps, kw in zip(ll_groups, ll_group_kw)], impl=path)
    topt = torch_cls([{'params': ps, **kw} for ps, kw in zip(t_groups, torch_group_kw)])
    g = torch.Generator().manual_seed(seed + 1)
    with warnings.catch_warnings():
        warnings.simplefilter('error', PerParameterWarning)   # built-in chains never need the loop's fallback
        for _ in range(n_steps):
            for ps, tps in zip(ll_groups, t_groups):
                for p, tp in zip(ps, tps):
                    grad = torch.randn(p.shape, generator=g)
                    p.grad, tp.grad = grad.clone(), grad.clone()
            opt.step(); topt.step()
    return [p for ps in ll_groups for p in ps], [p for ps in t_groups for p in ps]


def _assert_same(ll_ps, t_ps):
    for a, b in zip(ll_ps, t_ps):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-5)


shape = st.lists(st.integers(1, 6), min_size=1, max_size=2).map(tuple)
groups_of_shapes = st.lists(st.lists(shape, min_size=1, max_size=3), min_size=1, max_size=3)
lrs = st.floats(1e-4, 0.05)
wds = st.sampled_from([0., 1e-3, 0.1])
moms = st.floats(0.5, 0.95)
sqr_moms = st.floats(0.9, 0.999)
epss = st.sampled_from([1e-8, 1e-5, 1e-3])
paths, fused_paths = st.sampled_from(PATHS), st.sampled_from(FUSED_PATHS)


@prop_settings
@given(groups_of_shapes, st.data(), fused_paths)
def test_sgd_matches_torch(shapes, data, path):
    "Plain SGD with L2 weight decay (what torch calls weight_decay), several groups."
    hp = [dict(lr=data.draw(lrs), wd=data.draw(wds)) for _ in shapes]
    ll, t = _run_both(partial(SGD, lr=0.1, decouple_wd=False), hp, partial(torch.optim.SGD, lr=0.1),
                      [dict(lr=h['lr'], weight_decay=h['wd']) for h in hp], shapes, path)
    _assert_same(ll, t)


@prop_settings
@given(groups_of_shapes, st.data(), fused_paths)
def test_sgd_momentum_matches_torch(shapes, data, path):
    "SGD with momentum (undamped) and L2 weight decay."
    mom = data.draw(moms)
    hp = [dict(lr=data.draw(lrs), wd=data.draw(wds)) for _ in shapes]
    ll, t = _run_both(partial(SGD, lr=0.1, mom=mom, decouple_wd=False), hp,
                      partial(torch.optim.SGD, lr=0.1, momentum=mom),
                      [dict(lr=h['lr'], weight_decay=h['wd']) for h in hp], shapes, path)
    _assert_same(ll, t)


@prop_settings
@given(groups_of_shapes, st.data(), paths, st.sampled_from([0., 0.5, 0.9]))
def test_rmsprop_matches_torch(shapes, data, path, mom):
    "RMSProp, with and without momentum, L2 weight decay."
    sqr_mom, eps = data.draw(sqr_moms), data.draw(epss)
    hp = [dict(lr=data.draw(lrs), wd=data.draw(wds)) for _ in shapes]
    ll, t = _run_both(partial(RMSProp, lr=0.1, sqr_mom=sqr_mom, mom=mom, eps=eps, decouple_wd=False), hp,
                      partial(torch.optim.RMSprop, lr=0.1, alpha=sqr_mom, momentum=mom, eps=eps),
                      [dict(lr=h['lr'], weight_decay=h['wd']) for h in hp], shapes, path)
    _assert_same(ll, t)


@prop_settings
@given(groups_of_shapes, st.data(), fused_paths)
def test_adam_l2_matches_torch_adam(shapes, data, path):
    "Adam with decouple_wd=False is torch.optim.Adam with weight_decay."
    mom, sqr_mom, eps = data.draw(moms), data.draw(sqr_moms), data.draw(epss)
    hp = [dict(lr=data.draw(lrs), wd=data.draw(wds)) for _ in shapes]
    ll, t = _run_both(partial(Adam, lr=0.1, mom=mom, sqr_mom=sqr_mom, eps=eps, decouple_wd=False), hp,
                      partial(torch.optim.Adam, lr=0.1, betas=(mom, sqr_mom), eps=eps),
                      [dict(lr=h['lr'], weight_decay=h['wd']) for h in hp], shapes, path)
    _assert_same(ll, t)


@prop_settings
@given(groups_of_shapes, st.data(), fused_paths)
def test_adamw_matches_torch_adamw(shapes, data, path):
    "Adam with decoupled weight decay (the default) is torch.optim.AdamW."
    mom, sqr_mom, eps = data.draw(moms), data.draw(sqr_moms), data.draw(epss)
    hp = [dict(lr=data.draw(lrs), wd=data.draw(wds)) for _ in shapes]
    ll, t = _run_both(partial(Adam, lr=0.1, mom=mom, sqr_mom=sqr_mom, eps=eps), hp,
                      partial(torch.optim.AdamW, lr=0.1, betas=(mom, sqr_mom), eps=eps),
                      [dict(lr=h['lr'], weight_decay=h['wd']) for h in hp], shapes, path)
    _assert_same(ll, t)


@prop_settings
@given(groups_of_shapes, st.data(), paths)
def test_radam_matches_torch_radam(shapes, data, path):
    "RAdam (decoupled weight decay) is torch.optim.RAdam(decoupled_weight_decay=True), rectified steps included."
    mom, sqr_mom, eps = data.draw(moms), data.draw(st.floats(0.9, 0.99)), data.draw(epss)
    hp = [dict(lr=data.draw(lrs), wd=data.draw(wds)) for _ in shapes]
    ll, t = _run_both(partial(RAdam, lr=0.1, mom=mom, sqr_mom=sqr_mom, eps=eps), hp,
                      partial(torch.optim.RAdam, lr=0.1, betas=(mom, sqr_mom), eps=eps, decoupled_weight_decay=True),
                      [dict(lr=h['lr'], weight_decay=h['wd']) for h in hp], shapes, path)
    _assert_same(ll, t)


@pytest.mark.parametrize('opt_func', [partial(QHAdam, lr=0.01, wd=0.1), partial(LAMB, lr=0.01, wd=0.1),
                                      partial(Larc, lr=0.1, wd=0.01), partial(Larc, lr=0.1, mom=0., clip=False)])
def test_other_optimizers_fast_path_matches_loop(opt_func):
    "QHAdam, LAMB, LARC/LARS: the multi-tensor strategy (no warning) gives the per-parameter loop's numbers."
    out = []
    for path in ('foreach', 'loop'):
        groups, _ = _make_groups([[(4, 3), (3,)], [(5,)]], seed=7)
        opt = opt_func([{'params': ps} for ps in groups], impl=path)
        g = torch.Generator().manual_seed(8)
        with warnings.catch_warnings():
            warnings.simplefilter('error', PerParameterWarning)
            for _ in range(30):
                for p in (p for ps in groups for p in ps): p.grad = torch.randn(p.shape, generator=g)
                opt.step()
        out.append([p.detach() for ps in groups for p in ps])
    _assert_same(*out)


def test_ranger_is_lookahead_radam_and_trains():
    w = torch.full((3,), 2., requires_grad=True)
    opt = ranger([w], lr=0.1, wd=0.)
    fct.test_eq(type(opt), Lookahead)
    for _ in range(30):
        w.grad = 2 * w.detach(); opt.step()
    assert w.detach().abs().max() < 2
    sd = opt.state_dict()
    opt2 = ranger([w], lr=0.1); opt2.load_state_dict(sd)
    fct.test_eq(opt2.count, 30)
    fct.test_fail(lambda: opt2.load_state_dict({'opt': {}}), contains='made by Lookahead.state_dict')


def test_optim_wrapper_translates_names_and_matches():
    "OptimWrapper around torch AdamW, driven with learnerlab names, matches learnerlab's Adam."
    a, _ = _make_groups([[(4, 3)], [(3,)]], seed=2)
    b, _ = _make_groups([[(4, 3)], [(3,)]], seed=2)
    ow = OptimWrapper(a, opt=torch.optim.AdamW, lr=0.01, mom=0.8, sqr_mom=0.99, eps=1e-5, wd=0.1)
    ll = Adam(b, lr=0.01, mom=0.8, sqr_mom=0.99, eps=1e-5, wd=0.1)
    fct.test_eq(ow.opt.param_groups[1]['betas'], (0.8, 0.99))
    ow.set_hyper('mom', [0.85, 0.9]); ll.set_hyper('mom', [0.85, 0.9])
    fct.test_eq([h['mom'] for h in ow.hypers], [0.85, 0.9])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        for p, q in zip([p for ps in a for p in ps], [p for ps in b for p in ps]):
            p.grad = torch.randn(p.shape, generator=g); q.grad = p.grad.clone()
        ow.step(); ll.step()
    _assert_same([p for ps in b for p in ps], [p for ps in a for p in ps])
    fct.test_fail(lambda: ow.set_hyper('beta1', 0.9), contains="unknown hyper-parameter 'beta1'")
    fct.test_fail(lambda: ow.set_hyper('lr', -1.), contains='lr must be >= 0')


def test_chapter_code_verbatim_trains():
    "The chapter's callbacks, with the deprecated add_(-lr, grad) overload, run and train."
    def sgd_cb(p, lr, **kwargs): p.data.add_(-lr, p.grad.data)
    def average_sqr_grad(p, sqr_mom, sqr_avg=None, **kwargs):
        if sqr_avg is None: sqr_avg = torch.zeros_like(p.grad.data)
        return {'sqr_avg': sqr_avg*sqr_mom + p.grad.data**2}
    def rms_prop_step(p, lr, sqr_avg, eps, grad_avg=None, **kwargs):
        denom = sqr_avg.sqrt().add_(eps)
        p.data.addcdiv_(-lr, p.grad, denom)
    for opt_func, lr in [(partial(Optimizer, cbs=[sgd_cb]), 0.1),
                         (partial(Optimizer, cbs=[average_sqr_grad, rms_prop_step], sqr_mom=0.99, eps=1e-7), 0.1)]:
        w = torch.full((3,), 2., requires_grad=True)
        opt = opt_func([w], lr=lr)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)
            for _ in range(20):
                loss = (w ** 2).sum(); loss.backward(); opt.step(); opt.zero_grad()
        assert (w ** 2).sum().item() < 12 * 0.5


def test_paths_give_same_state():
    "Every strategy leaves the same state names and values."
    sds = []
    for path in FUSED_PATHS + (('compile',) if HAS_CXX else ()):
        groups, _ = _make_groups([[(3, 2), (4,)], [(5,)]], seed=3)
        opt = Adam([{'params': ps} for ps in groups], lr=0.01, impl=path)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', PerParameterWarning)
            for i in range(4):
                for p in (p for ps in groups for p in ps): p.grad = torch.full_like(p, float(i + 1))
                opt.step()
        sds.append(opt.state_dict())
    for sd in sds[1:]:
        fct.test_eq([sorted(s) for s in sd['state']], [sorted(s) for s in sds[0]['state']])
        for s0, s1 in zip(sds[0]['state'], sd['state']):
            for k in s0: torch.testing.assert_close(s0[k], s1[k], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- bad input


def _w(): return torch.zeros(2, requires_grad=True)


def test_bad_lr():
    fct.test_fail(lambda: Adam([_w()], lr=-1e-3), contains='lr must be >= 0')
    fct.test_fail(lambda: SGD([_w()], lr=float('nan')), contains='lr is NaN')
    opt = SGD([_w()], lr=0.1)
    fct.test_fail(lambda: opt.set_hyper('lr', -0.1), contains='lr must be >= 0')
    fct.test_fail(lambda: opt.set_hyper('lr', float('nan')), contains='lr is NaN')



UPPER = {'lr': math.inf, 'wd': math.inf, 'eps': math.inf, 'mom': 1., 'sqr_mom': 1.}   # each in [0, upper), finite

@given(st.sampled_from(sorted(UPPER)), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(['init', 'set_hyper']))
@settings(max_examples=300, deadline=None)
def test_hyper_ranges_on_every_entry(name, v, where):
    "A standard hyper-parameter is accepted exactly when it lies in its range, in the constructor and in set_hyper alike."
    def make():
        if where == 'init': return Adam([_w()], **{'lr': 1e-3, name: v})
        Adam([_w()], lr=1e-3).set_hyper(name, v)
    if 0 <= v < UPPER[name]: make()
    else:
        with pytest.raises(ValueError) as info: make()
        assert f'{name} is NaN' in str(info.value) if math.isnan(v) else f'{name} must be' in str(info.value)
        assert (math.isnan(v) or repr(v) in str(info.value)) and f'pass' in str(info.value)


@pytest.mark.parametrize('v', ['0.01', 'x', None, True, {'lr': 0.1}, torch.ones(2)])
@pytest.mark.parametrize('name', sorted(UPPER))
def test_hyper_not_a_number(name, v):
    "Anything but a real number (or a one-element tensor) is a TypeError naming the hyper-parameter and the value's type."
    with pytest.raises(TypeError, match=f'{name} must be a number, got'): Adam([_w()], **{'lr': 1e-3, name: v})
    opt = OptimWrapper([_w()], lr=1e-3)
    with pytest.raises(TypeError, match=f'{name} must be a number, got'): opt.set_hyper(name, v)


def test_set_hyper_names_are_cached():
    "set_hyper runs every batch under a scheduler: the callbacks' signatures are read once, not on each call."
    import learnerlab.optimizer as optimizer
    opt = Adam([_w()], lr=1e-3)
    opt.set_hyper('lr', 1e-2)
    calls = []
    orig = optimizer._accepted_names
    optimizer._accepted_names = lambda cb: calls.append(cb) or orig(cb)
    try:
        for _ in range(3): opt.set_hyper('lr', 1e-2)
    finally: optimizer._accepted_names = orig
    fct.test_eq(calls, [])


def test_unknown_hyper():
    opt = Adam([_w()], lr=0.1)
    fct.test_fail(lambda: opt.set_hyper('learning_rate', 0.1), contains="unknown hyper-parameter 'learning_rate'")
    opt.set_hyper('mom', 0.8)   # standard names always work
    fct.test_eq(opt.hypers[0]['mom'], 0.8)


def test_wrong_number_of_values():
    opt = SGD([[_w()], [_w()]], lr=0.1)
    fct.test_fail(lambda: opt.set_hyper('lr', [0.1, 0.2, 0.3]), contains='3 values for 2 parameter groups')
    opt.set_hyper('lr', [0.1, 0.2])
    fct.test_eq([h['lr'] for h in opt.hypers], [0.1, 0.2])


def test_params_not_tensors():
    fct.test_fail(lambda: SGD([_w(), 'bias'], lr=0.1), contains='params: item 1')
    fct.test_fail(lambda: SGD([[_w()], [1.0]], lr=0.1), contains='not a tensor')


def test_callbacks_not_callable():
    fct.test_fail(lambda: Optimizer([_w()], cbs=['sgd_step'], lr=0.1), contains="cbs: 'sgd_step' is not callable")
    opt = Optimizer([_w()], cbs=sgd_step, lr=0.1)   # a single callback needs no list
    fct.test_eq(opt.cbs, [sgd_step])


def test_duplicate_params():
    w = _w()
    fct.test_fail(lambda: SGD([[w], [w]], lr=0.1), contains='appears twice')
    fct.test_fail(lambda: SGD([w, w], lr=0.1), contains='appears twice')


def test_callback_returning_non_dict():
    def bad(p, **kw): return [1]
    w = _w(); w.grad = torch.ones(2)
    opt = Optimizer([w], cbs=[bad], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', PerParameterWarning)
        fct.test_fail(opt.step, contains='callback bad returned list [1]')


def test_state_dict_from_other_layout():
    w = _w(); w.grad = torch.ones(2)
    opt = Adam([w], lr=0.1); opt.step()
    other = Adam([torch.zeros(3, requires_grad=True)], lr=0.1)
    fct.test_fail(lambda: other.load_state_dict(opt.state_dict()), contains='saved for 1 group(s)')
    fct.test_fail(lambda: other.load_state_dict({'x': 1}), contains='made by Optimizer.state_dict')


# ---------------------------------------------------------------- state and freezing


def test_state_dict_round_trip():
    "Save after 5 steps, load into a fresh optimizer over copies, continue both: identical."
    groups, copy = _make_groups([[(4, 3)], [(3,)]], seed=5)
    opt = Adam([{'params': ps} for ps in groups], lr=0.01, wd=0.1)
    g = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=g) for p in ps] for ps in groups for _ in range(10)]
    def step(o, gs, i):
        for p, gr in zip(gs, grads[i]): p.grad = gr.clone()
        o.step()
    flat, flat_copy = [p for ps in groups for p in ps], [p for ps in copy for p in ps]
    for i in range(5): step(opt, flat, i)
    buf = io.BytesIO(); torch.save(opt.state_dict(), buf); buf.seek(0)
    with torch.no_grad():
        for p, q in zip(flat, flat_copy): q.copy_(p)
    opt2 = Adam([{'params': ps} for ps in copy], lr=0.5)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    fct.test_eq(opt2.hypers[0]['lr'], 0.01)
    for i in range(5, 10): step(opt, flat, i); step(opt2, flat_copy, i)
    for p, q in zip(flat, flat_copy): fct.test_eq(p.detach(), q.detach())


def test_frozen_group_gets_no_step_and_no_weight_decay():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = Adam([[a], [b]], lr=0.1, wd=0.5)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.freeze()
    for _ in range(3): opt.step()
    fct.test_eq(a.detach(), torch.ones(3))
    assert (b.detach() < 1).all()
    opt.unfreeze(); opt.step()
    assert (a.detach() < 1).all()


def test_slow_path_warns_once_and_trains():
    def my_sgd(p, lr, **kw): p.data.add_(p.grad, alpha=-lr * float(p.grad.abs().max() > 0))   # .max(): not elementwise
    w = torch.ones(2, requires_grad=True); w.grad = torch.ones(2)
    opt = Optimizer([w], cbs=[my_sgd], lr=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(3): opt.step()
    fct.test_eq(sum(issubclass(c.category, PerParameterWarning) for c in caught), 1)
    fct.test_close(w.detach(), torch.tensor([-0.5, -0.5]))


def test_chapter_chain_trains_on_fast_path():
    "The exported chapter callbacks, put together as the chapter does, take the fused path silently."
    w = torch.ones(2, requires_grad=True)
    opt = Optimizer([w], cbs=[average_grad, momentum_step], mom=0.9, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter('error', PerParameterWarning)
        for _ in range(3):
            w.grad = 2 * w.detach()   # gradient of sum(w**2)
            opt.step()
    assert (w.detach().abs() < 1).all()


# --- impl='compile': the per-parameter loop compiled by torch.compile -------------------------------------

def _chapter_average_grad(p, mom, grad_avg=None, **kwargs):
    "The chapter's momentum statistic as typed in the book: a new tensor every step."
    if grad_avg is None: grad_avg = torch.zeros_like(p.grad.data)
    return {'grad_avg': grad_avg*mom + p.grad.data}


def _chapter_momentum_step(p, lr, grad_avg, **kwargs): p.data.add_(grad_avg, alpha=-lr)


@needs_cxx
@compile_settings
@given(st.sampled_from(['adamw', 'adam_l2', 'sgd_mom']), st.data())
def test_compiled_chain_matches_torch(name, data):
    "impl='compile' on the built-in chains: torch.optim's numbers (fewer examples: each compiles)."
    lr, wd = data.draw(lrs), data.draw(st.sampled_from([0., 0.1]))
    ll_func, torch_cls, t_kw = {
        'adamw': (partial(Adam, lr=lr, wd=wd), torch.optim.AdamW, dict(lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=wd)),
        'adam_l2': (partial(Adam, lr=lr, wd=wd, decouple_wd=False), torch.optim.Adam,
                    dict(lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=wd)),
        'sgd_mom': (partial(SGD, lr=lr, mom=0.9, wd=wd, decouple_wd=False), torch.optim.SGD,
                    dict(lr=lr, momentum=0.9, weight_decay=wd))}[name]
    shapes = [[(5, 3), (3,)], [(4,)]]
    ll_ps, t_ps = _run_both(ll_func, [{}, {'lr': lr / 3}], partial(torch_cls, **t_kw), [{}, {'lr': lr / 3}], shapes, 'compile',
                            n_steps=30)
    _assert_same(ll_ps, t_ps)


@needs_cxx
def test_compiled_user_chain_matches_loop_without_recompiling():
    "The chapter's own momentum callbacks: compiled == loop, and a moving lr and mom do not recompile."
    from torch._dynamo.utils import counters
    results = {}
    for impl in ('loop', 'compile'):
        torch.manual_seed(0)
        ps = [torch.randn(6, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
        opt = Optimizer([ps[:1], ps[1:]], cbs=[_chapter_average_grad, _chapter_momentum_step], lr=0.1, mom=0.9, impl=impl)
        g = torch.Generator().manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter('error', PerParameterWarning)
            for i in range(12):
                for p in ps: p.grad = torch.randn(p.shape, generator=g)
                opt.set_hypers(lr=0.1 / (i + 1), mom=0.9 - 0.02 * i)
                opt.step()
                if i == 2: graphs = counters['stats']['unique_graphs']
        results[impl] = [p.detach().clone() for p in ps]
        if impl == 'compile':
            assert compile_error(opt) is None
            fct.test_eq(counters['stats']['unique_graphs'], graphs)      # steps 4-12 reused the compiled code
    for a, b in zip(results['loop'], results['compile']): torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_compile_failure_falls_back_once_and_loses_no_step(monkeypatch):
    "If torch.compile cannot compile the chain, one warning, then the loop: the same numbers, no step lost or doubled."
    def broken_compile(fn, **kwargs):
        def run(*args, **kw): raise RuntimeError('no C++ compiler found')
        return run
    monkeypatch.setattr(torch, 'compile', broken_compile)
    runs = {}
    for impl in ('loop', 'compile'):
        torch.manual_seed(0)
        ps = [torch.randn(5, requires_grad=True), torch.randn(3, requires_grad=True)]
        opt = Optimizer(ps, cbs=[_chapter_average_grad, _chapter_momentum_step], lr=0.1, mom=0.9, impl=impl)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            for i in range(4):
                for p in ps: p.grad = torch.full_like(p, float(i + 1))
                opt.step()
        runs[impl] = ([p.detach().clone() for p in ps], opt, caught)
    (loop_ps, _, _), (comp_ps, opt, caught) = runs['loop'], runs['compile']
    for a, b in zip(loop_ps, comp_ps): fct.test_eq(a, b)
    msgs = [str(w.message) for w in caught if issubclass(w.category, PerParameterWarning)]
    fct.test_eq(len(msgs), 1)
    assert 'could not compile' in msgs[0] and 'no C++ compiler found' in msgs[0], msgs
    assert isinstance(compile_error(opt), RuntimeError)


# --- the default strategy on a user's own callbacks ----------------------------------------------------

@prop_settings
@given(groups_of_shapes, st.data())
def test_user_chain_on_lists_matches_torch_sgd(shapes, data):
    "The chapter's own momentum callbacks, default impl: run on lists of tensors (no warning), torch SGD's numbers."
    mom = data.draw(moms)
    hp = [dict(lr=data.draw(lrs)) for _ in shapes]
    user = partial(Optimizer, cbs=[_chapter_average_grad, _chapter_momentum_step], lr=0.1, mom=mom)
    ll, t = _run_both(user, hp, partial(torch.optim.SGD, lr=0.1, momentum=mom), hp, shapes, 'auto')
    _assert_same(ll, t)


def test_impl_errors_name_the_problem():
    w = _w(); w.grad = torch.ones(2)
    fct.test_fail(lambda: RMSProp([w], lr=0.1, impl='fused'), contains="impl='fused'")
    fct.test_fail(lambda: Adam([w], lr=0.1, impl='quick'), contains="impl='quick' is not one of")
    def norm_clip(p, **kw): p.grad.data.div_(p.grad.data.norm().item() + 1)
    opt = Optimizer([w], cbs=[norm_clip, sgd_step], lr=0.1, impl='foreach')
    fct.test_fail(opt.step, contains="['norm_clip'] cannot run on lists of tensors")


def test_missing_hyper_same_error_on_every_strategy():
    "A hyper-parameter nobody provides: the same message whatever runs the chain."
    for impl in ('loop', 'foreach', 'auto', 'fused'):
        w = _w(); w.grad = torch.ones(2)
        opt = Adam([w], lr=0.1, impl=impl)
        for h in opt.hypers: del h['eps']
        fct.test_fail(opt.step, contains="adam_step needs 'eps'")
    def my_step(p, lr, gamma, **kw): p.data.add_(p.grad, alpha=-lr * gamma)
    for impl in ('loop', 'foreach', 'auto'):
        w = _w(); w.grad = torch.ones(2)
        fct.test_fail(Optimizer([w], cbs=[my_step], lr=0.1, impl=impl).step, contains="my_step needs 'gamma'")


@pytest.mark.parametrize('impl', FUSED_PATHS)
def test_exclude_wd_on_every_strategy(impl):
    "norm/bias parameters excluded from weight decay: with zero gradients only the decayed weights move."
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    for opt_func in (Adam, SGD, partial(SGD, mom=0.9)):
        opt = opt_func(model.parameters(), lr=0.1, wd=0.1, impl=impl)
        opt.exclude_wd(norm_bias_params(model))
        before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters(): p.grad = torch.zeros_like(p)
        opt.step()
        moved = [not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters())]
        fct.test_eq(moved, [True, False, False, False, True, False])
