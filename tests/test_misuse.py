"""The misuse table: one row per way a user can get learnerlab's input wrong, and what they are told.

Each row is a `Case`: an id, a callable that does the misuse, the exception it must raise and fragments its
message must contain (the argument, the bad value, the fix). A row whose `expect` is None is *accepted on
purpose*: the callable must run without error, and `why` says why the library allows it. A row with `todo`
set is still *obscure or silent*: it runs as `xfail(strict=True)` with the message we want, so it starts
failing the day someone fixes it, and the row moves to 'clear' by deleting `todo`.

To grow the table, add a row to `CASES`; `test_totals` counts them.
"""
import math, warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from learnerlab.optimizer import Optimizer, SGD, RMSProp, Adam, sgd_step
from learnerlab.optim_extra import RAdam, QHAdam, LAMB, Larc, Lookahead, ranger, OptimWrapper
from learnerlab.learner import Learner, DataLoaders, noop_logger
from learnerlab.callback import Callback
import learnerlab.schedule   # fit_one_cycle
import learnerlab.vision     # Learner.freeze


@dataclass
class Case:
    id: str
    run: object                   # a callable doing the misuse
    expect: type = None           # the exception it must raise; None: accepted on purpose
    fragments: tuple = ()         # what the message must contain
    why: str = ''                 # for an accepted row: why it is allowed
    todo: str = ''                # for a row still obscure or silent: what happens today
    part: str = 'optimizer'       # the part of the library that owns the check

    @property
    def kind(self): return 'obscure' if self.todo else 'accepted' if self.expect is None else 'clear'


# -- helpers: parameters, data and a quiet learner

def _ps(): return list(nn.Linear(3, 2).parameters())

def _batches(n=16, classes=None, float_targets=False, nan_inputs=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    if nan_inputs: x[3, 1] = float('nan')
    y = torch.randint(0, classes, (n,), generator=g) if classes else torch.randn(n, 1, generator=g)
    if float_targets: y = y.float()
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, n, 8)]

def _learner(model=None, classes=None, empty_valid=False, float_targets=False, nan_inputs=False, **kw):
    tr = _batches(classes=classes, float_targets=float_targets, nan_inputs=nan_inputs)
    dls = DataLoaders(tr, [] if empty_valid else tr[:1], device='cpu', c=classes)
    if classes is None: kw.setdefault('loss_func', nn.MSELoss())
    model = model if model is not None else nn.Linear(4, classes or 1)
    learn = Learner(dls, model, **kw)
    learn.logger = noop_logger
    return learn

def _fit(**kw):
    "A one-epoch fit of `_learner(**kw)`, without progress output."
    learn = _learner(**kw)
    with learn.no_bar(): learn.fit(1)
    return learn

def _frozen_model():
    m = nn.Linear(4, 1)
    for p in m.parameters(): p.requires_grad_(False)
    return m

def _two_layers(): return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))

class _BadOrder(Callback): run_before = (3,)

def LearnerCase(*args, **kw):
    "A row whose check belongs to the learner or the schedule."
    return Case(*args, part='learner', **kw)


# -- the optimizer: every built-in, and set_hyper at any time

def _with_each(make, name, value):
    "(id, callable) for hyper-parameter `name=value` given to each optimizer factory in `make`."
    return [(f'{n}({name}={value!r})', lambda f=f: f(_ps(), **{'lr': 1e-3, name: value})) for n, f in make.items()]

BUILTINS = dict(SGD=SGD, RMSProp=RMSProp, Adam=Adam, RAdam=RAdam, QHAdam=QHAdam, LAMB=LAMB, Larc=Larc,
                ranger=ranger, OptimWrapper=OptimWrapper, Lookahead=lambda ps, **kw: Lookahead(Adam(ps, **kw)))
WITH_SQR_MOM = {k: BUILTINS[k] for k in ('RMSProp', 'Adam', 'RAdam', 'QHAdam', 'LAMB', 'ranger', 'OptimWrapper', 'Lookahead')}
WITH_EPS = {k: v for k, v in BUILTINS.items() if k != 'SGD'}

OPT_BAD = [  # (name, value, exception, fragments)
    ('lr', math.inf, ValueError, ('lr must be >= 0 and finite', 'got inf', 'pass e.g. lr=1e-3')),
    ('lr', float('nan'), ValueError, ('lr is NaN', 'pass a number')),
    ('lr', '0.01', TypeError, ("lr must be a number", "got the str '0.01'", 'pass lr=0.01 without quotes')),
    ('lr', -1e-3, ValueError, ('lr must be >= 0', 'got -0.001')),
    ('lr', None, TypeError, ('lr must be a number, got None', 'pass e.g. lr=1e-3')),
    ('wd', 'x', TypeError, ("wd must be a number", "got the str 'x'", 'pass e.g. wd=0.01')),
    ('wd', -0.1, ValueError, ('wd must be >= 0 and finite', 'got -0.1', 'wd=0.01')),
    ('mom', 1.5, ValueError, ('mom must be in [0, 1)', 'got 1.5', 'pass e.g. mom=0.9')),
    ('mom', -0.1, ValueError, ('mom must be in [0, 1)', 'got -0.1')),
    ('sqr_mom', 1.0, ValueError, ('sqr_mom must be in [0, 1)', 'got 1.0', 'sqr_mom=0.99')),
    ('eps', -1, ValueError, ('eps must be >= 0 and finite', 'got -1', 'pass e.g. eps=1e-8')),
]
_FAMILY = {'sqr_mom': WITH_SQR_MOM, 'eps': WITH_EPS}

def _opt_cases():
    out = []
    for name, value, exc, frags in OPT_BAD:
        for cid, run in _with_each(_FAMILY.get(name, BUILTINS), name, value): out.append(Case(cid, run, exc, frags))
    return out

def _set_later(make, name, value):
    "Build a good optimizer, then set `name=value` on it, as a scheduler would mid-fit."
    def run():
        opt = make(_ps(), lr=1e-3)
        opt.set_hyper(name, value)
    return run

def _params_cases():
    bad = [('ints', lambda f: f([1, 2, 3], lr=1e-3), TypeError, ('item 0 of params is the int 1', 'not a tensor', 'pass model.parameters()')),
           ('empty', lambda f: f([], lr=1e-3), ValueError, ('params is empty', 'nothing to train')),
           ('used-up-generator', lambda f: f(_spent(), lr=1e-3), ValueError, ('params is empty', 'list(model.parameters())')),
           ('module', lambda f: f(nn.Linear(2, 1), lr=1e-3), TypeError, ('the model Linear itself', 'pass its .parameters()')),
           ('number', lambda f: f(3, lr=1e-3), TypeError, ('params is the int 3', 'not a tensor or a parameter group')),
           ('one-dict', lambda f: f({'params': _ps()}, lr=1e-3), TypeError, ('params is one parameter group', "[{'params': ..., 'lr': ...}]"))]
    return [Case(f'{n}(params={what})', (lambda f=f, call=call: call(f)), exc, frags)
            for what, call, exc, frags in bad for n, f in BUILTINS.items()]

def _spent():
    gen = nn.Linear(2, 1).parameters(); list(gen)
    return gen

CASES = _opt_cases() + _params_cases() + [
    *[Case(f'{n}.set_hyper(lr=nan)', _set_later(f, 'lr', float('nan')), ValueError, ('lr is NaN',)) for n, f in BUILTINS.items()],
    *[Case(f'{n}.set_hyper(mom=1.5)', _set_later(f, 'mom', 1.5), ValueError, ('mom must be in [0, 1)', 'got 1.5')) for n, f in BUILTINS.items()],
    *[Case(f'{n}.set_hypers(wd="x")', (lambda f=f: f(_ps(), lr=1e-3).set_hypers(wd='x')), TypeError, ("wd must be a number", "'x'"))
      for n, f in BUILTINS.items()],
    Case('set_hyper(lr=[0.1, nan]) per group', lambda: Adam([_ps()[:1], _ps()[1:]], lr=1e-3).set_hyper('lr', [0.1, float('nan')]),
         ValueError, ('lr is NaN',)),
    Case('param group {"lr": "x"}', lambda: Adam([{'params': _ps(), 'lr': 'x'}], lr=1e-3), TypeError, ("lr must be a number", "'x'")),
    Case('QHAdam(nu_1=2)', lambda: QHAdam(_ps(), lr=1e-3, nu_1=2.), ValueError, ('nu_1 must be in [0, 1]', 'got 2.0', 'nu_1=0.7')),
    Case('Larc(trust_coeff=0)', lambda: Larc(_ps(), lr=1e-3, trust_coeff=0), ValueError, ('trust_coeff must be > 0', 'trust_coeff=0.02')),
    Case('Lookahead(k="6")', lambda: Lookahead(Adam(_ps(), lr=1e-3), k='6'), ValueError, ('k must be an int >= 1', "got '6'", 'k=6')),
    Case('Lookahead(alpha=0)', lambda: Lookahead(Adam(_ps(), lr=1e-3), alpha=0), ValueError, ('alpha must be a number in (0, 1]', 'alpha=0.5')),
    Case('Lookahead(params)', lambda: Lookahead(_ps()), TypeError, ('opt must be a learnerlab optimizer', 'got the list')),
    Case('Adam(lr=slice(0, 1e-3))', lambda: Adam([_ps()[:1], _ps()[1:]], lr=slice(0, 1e-3)), ValueError,
         ('slice(0, 0.001, None) cannot be spread', 'numbers > 0', 'slice(1e-5, 1e-3)')),
    Case("set_hyper(lr=slice('a', 'b'))", lambda: Adam(_ps(), lr=1e-3).set_hyper('lr', slice('a', 'b')), ValueError,
         ("slice('a', 'b', None) cannot be spread", 'numbers > 0')),
    Case('Optimizer(cbs="sgd")', lambda: Optimizer(_ps(), cbs=['sgd'], lr=1e-3), TypeError, ("'sgd' is not callable",)),
    Case('OptimWrapper(opt=instance)', lambda: OptimWrapper(_ps(), opt=torch.optim.SGD(_ps(), lr=0.1)), TypeError,
         ('must be a torch.optim.Optimizer class',)),

    # accepted on purpose
    Case('Adam(eps=0)', lambda: Adam(_ps(), lr=1e-3, eps=0.).step(), why="torch.optim allows it; it makes hand-checked tests exact "
         "and LARC's maths does not need eps (a coordinate whose gradient was always 0 then gives 0/0 in Adam: the user's choice)"),
    Case('SGD(lr=0)', lambda: SGD(_ps(), lr=0.), why='a zero learning rate is a valid point of a schedule (warm-up start, frozen run)'),
    Case('Adam(lr=1) (an int)', lambda: Adam(_ps(), lr=1), why='an int is a number'),
    Case('SGD(lr=tensor(0.1))', lambda: SGD(_ps(), lr=torch.tensor(0.1)), why='a one-element tensor holds a number'),
    Case('Adam(mom=0, sqr_mom=0)', lambda: Adam(_ps(), lr=1e-3, mom=0., sqr_mom=0.), why='no averaging is a valid, if odd, Adam'),
    Case('empty group beside a full one', lambda: Adam([_ps(), []], lr=1e-3),
         why='a splitter may give an empty group (e.g. a head without parameters); only an optimizer with nothing at all is refused'),

    # the learner and the schedule: clear on this branch
    LearnerCase('Learner(lr=inf).fit', lambda: _fit(lr=math.inf), ValueError, ('lr must be >= 0 and finite', 'got inf')),
    LearnerCase("fit(lr='0.01')", lambda: _learner().fit(1, lr='0.01'), TypeError, ("lr must be a number", "'0.01'", 'without quotes')),
    LearnerCase('fit(lr=inf)', lambda: _learner().fit(1, lr=math.inf), ValueError, ('lr must be >= 0 and finite', 'got inf')),
    LearnerCase("fit(wd='x')", lambda: _learner().fit(1, wd='x'), TypeError, ("wd must be a number", "'x'")),
    LearnerCase("fit_one_cycle(lr_max='big')", lambda: _learner().fit_one_cycle(1, lr_max='big'), TypeError,
         ("must be a number", "got the str 'big'")),
    LearnerCase('fit_one_cycle(lr_max=slice(0, 1e-2))', lambda: _learner().fit_one_cycle(1, slice(0, 1e-2)), ValueError,
                ('cannot be spread', 'numbers > 0')),
    LearnerCase('model without parameters', lambda: _fit(model=nn.Sequential()), ValueError, ('params is empty', 'nothing to train')),
    LearnerCase('splitter returns an int', lambda: _fit(splitter=lambda m: 3), TypeError, ('params is the int 3', 'not a tensor or a parameter group')),
    LearnerCase('Learner(opt_func=3)', lambda: _learner(opt_func=3), TypeError, ('opt_func must be callable',)),

    LearnerCase("Learner(loss_func='cross_entropy')", lambda: _learner(loss_func='cross_entropy'), TypeError,
         ('loss_func must be callable', "'cross_entropy'", 'nn.CrossEntropyLoss()')),
    LearnerCase('model with no trainable parameters', lambda: _fit(model=_frozen_model()), ValueError, ('no trainable parameters', 'requires_grad')),
    LearnerCase('opt_func returns None', lambda: _fit(opt_func=lambda ps, lr: None), TypeError, ('opt_func', 'returned None')),
    LearnerCase('opt_func=torch.optim.Adam', lambda: _fit(opt_func=torch.optim.Adam), TypeError, ('opt_func', 'OptimWrapper')),
    LearnerCase('callback run_before=(3,)', lambda: _learner(cbs=[_BadOrder()]), TypeError, ('_BadOrder.run_before holds 3', 'callback classes or their names')),
    LearnerCase('fit_one_cycle(div=0)', lambda: _learner().fit_one_cycle(1, 1e-3, div=0), ValueError, ('div must be > 0', 'div=25')),
    LearnerCase('fit_one_cycle(div_final=0)', lambda: _learner().fit_one_cycle(1, 1e-3, div_final=0), ValueError, ('div_final must be > 0',)),
    LearnerCase('float targets for cross-entropy', lambda: _fit(classes=3, float_targets=True), TypeError, ('float targets', 'int64 (long)', 'y.long()')),
    LearnerCase('class index out of range', lambda: _fit(classes=3, model=nn.Linear(4, 2)), ValueError, ('class index 2', 'outputs 2 scores', '0..1')),
    LearnerCase('NaN in the inputs, without TerminateOnNaNCallback', lambda: _fit(nan_inputs=True), UserWarning,
         ('training loss is nan in epoch 0', 'TerminateOnNaNCallback')),
    LearnerCase('empty validation DataLoader', lambda: _fit(empty_valid=True), UserWarning, ('validation', 'empty')),
    LearnerCase('freeze() without a splitter', lambda: _learner().freeze(), ValueError, ('freeze', 'splitter')),
    LearnerCase('splitter leaves parameters out', lambda: _fit(model=_two_layers(), splitter=lambda m: [list(m[1].parameters())]),
         ValueError, ('splitter', 'not in any group')),
]

def _param(c):
    marks = [pytest.mark.xfail(strict=True, reason=f'still obscure: {c.todo}')] if c.todo else []
    return pytest.param(c, id=c.id, marks=marks)

@pytest.mark.parametrize('case', [_param(c) for c in CASES])
def test_misuse(case):
    if case.expect is None:
        case.run()
        return
    if issubclass(case.expect, Warning):
        with pytest.warns(case.expect) as rec: case.run()
        msg = ' '.join(str(w.message) for w in rec)
    else:
        with pytest.raises(case.expect) as info: case.run()
        msg = str(info.value)
    for frag in case.fragments: assert frag in msg, f'{case.id}: {frag!r} not in the message {msg!r}'


def test_table_is_well_formed():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), 'two rows share an id'
    for c in CASES:
        if c.kind == 'accepted': assert c.why and not c.fragments, f'{c.id}: an accepted row says why, and expects no message'
        else: assert c.fragments, f'{c.id}: a row with an error names what its message must contain'


def test_totals():
    "The table's totals: clear / accepted on purpose / still obscure."
    kinds = [c.kind for c in CASES]
    totals = {k: kinds.count(k) for k in ('clear', 'accepted', 'obscure')}
    print(f"misuse table: {totals['clear']} clear, {totals['accepted']} accepted on purpose, {totals['obscure']} still obscure "
          f"({len(CASES)} rows)")
    for c in CASES:
        if c.kind == 'accepted': print(f'  accepted: {c.id}: {c.why}')
        if c.kind == 'obscure': print(f'  obscure:  {c.id}: {c.todo}')
    assert sum(totals.values()) == len(CASES)
    assert not [c.id for c in CASES if c.part == 'optimizer' and c.kind == 'obscure'], 'every optimizer misuse is clear or accepted'
