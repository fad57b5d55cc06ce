"""The Learner's control flow: every cancel exception from every event, cleanup, ordering, checkpoints.

The expected event sequences come from `Spec`, a small model of the loop written from the table in
shared/design/seed-errata.md, anchored by literal sequences for the cases the chapter describes wrongly.
"""
import os, tempfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
import fastcore.test as fct

from learnerlab.callback import *
from learnerlab.dataloaders import *
from learnerlab.train_eval import *
from learnerlab.recorder import *
from learnerlab.progress import *
from learnerlab.learner import *
from learnerlab.callback import _LOOP
from learnerlab.predict import *
from learnerlab.checkpoint import *
from learnerlab.optimizer import SGD

torch.set_num_threads(1)
N_EPOCH, N_TRAIN, N_VALID = 2, 2, 1
MAIN_EVENTS = [e for e in EVENTS if not e.startswith('after_cancel') and e != 'after_create']


def tiny_dls(n_train=N_TRAIN, n_valid=N_VALID, bs=4):
    g = torch.Generator().manual_seed(0)
    batch = lambda: (torch.randn(bs, 2, generator=g), torch.randint(0, 2, (bs,), generator=g))
    return DataLoaders([batch() for _ in range(n_train)], [batch() for _ in range(n_valid)], device='cpu')


def tiny_learner(**kw):
    torch.manual_seed(0)
    kw.setdefault('loss_func', nn.CrossEntropyLoss())
    kw.setdefault('opt_func', SGD)
    return Learner(tiny_dls(), nn.Linear(2, 2), lr=0.1, **kw)


class EventLog(Callback):
    "Record every event (order 0, so it runs before `Raiser`)."
    def __init__(self): self.seen = []
for _ev in EVENTS: setattr(EventLog, _ev, lambda self, ev=_ev: self.seen.append(ev))


class Raiser(Callback):
    "Raise `exc` at the first occurrence of `event`."
    order = 1
    def __init__(self, event, exc): self.event, self.exc, self.fired = event, exc, False
    def _raise(self):
        if not self.fired:
            self.fired = True
            raise self.exc()
Raiser_events = {ev: type(f'Raise_{ev}', (Raiser,), {ev: Raiser._raise}) for ev in MAIN_EVENTS}


def make_raiser(event, exc):
    "A callback whose only handler is `event`, raising `exc` the first time."
    cls = Raiser_events[event]
    return cls(event, exc)


class Spec:
    "The loop's event sequence, as the errata table specifies it, with `exc` raised at the first `event`."
    def __init__(self, event, exc): self.event, self.exc, self.fired, self.seen = event, exc, False, []

    def ev(self, name):
        self.seen.append(name)
        if name == self.event and not self.fired:
            self.fired = True
            raise self.exc()

    def part(self, name, body):
        try:
            self.ev(f'before_{name}')
            body()
        except CANCELS[name]: self.ev(f'after_cancel_{name}')
        self.ev(f'after_{name}')

    def batch(self, training):
        def body():
            self.ev('after_pred'); self.ev('after_loss')
            if training:
                self.ev('before_backward'); self.ev('after_backward')
                self.part('step', lambda: None)
        self.part('batch', body)

    def epoch(self):
        self.part('train', lambda: [self.batch(True) for _ in range(N_TRAIN)])
        self.part('validate', lambda: [self.batch(False) for _ in range(N_VALID)])

    def fit(self):
        "Returns the exception that escapes the fit, if any."
        try:
            try:
                self.ev('before_fit')
                for _ in range(N_EPOCH): self.part('epoch', self.epoch)
            except CancelFitException: self.ev('after_cancel_fit')
        except BaseException as e:
            self.seen.append('after_fit')        # cleanup: after_fit still runs
            return e
        try: self.ev('after_fit')
        except BaseException as e: return e     # raised by after_fit itself: it escapes


def run_fit(event, exc, extra_cbs=()):
    learn = tiny_learner()
    log = EventLog()
    escaped = None
    try: learn.fit(N_EPOCH, cbs=[log, make_raiser(event, exc), *extra_cbs])
    except BaseException as e: escaped = e
    return learn, log.seen, escaped


@pytest.mark.parametrize('exc', list(CANCELS.values()) + [RuntimeError, KeyboardInterrupt],
                         ids=lambda e: e.__name__)
@pytest.mark.parametrize('event', MAIN_EVENTS)
def test_exception_from_event(event, exc):
    "Each exception raised from each event gives exactly the specified event sequence."
    spec = Spec(event, exc)
    expected_escape = spec.fit()
    learn, seen, escaped = run_fit(event, exc)
    assert seen == spec.seen
    if expected_escape is None: assert escaped is None
    else: assert isinstance(escaped, exc)
    # whatever happened, the learner is usable again: fit's callbacks detached, defaults intact
    assert [type(cb).__name__ for cb in learn.cbs] == ['TrainEvalCallback', 'Recorder', 'ProgressCallback']
    learn.fit(1)
    assert len(learn.recorder.values) == 1


def test_spec_anchors():
    "The spec itself, on the cases the chapter gets wrong (literal sequences from the errata table)."
    tb = ['before_batch', 'after_pred', 'after_loss', 'before_backward', 'after_backward', 'before_step',
          'after_step', 'after_batch']
    vb = ['before_batch', 'after_pred', 'after_loss', 'after_batch']
    s = Spec('after_loss', CancelBatchException); s.fit()
    assert s.seen[:8] == ['before_fit', 'before_epoch', 'before_train', 'before_batch', 'after_pred', 'after_loss',
                          'after_cancel_batch', 'after_batch']
    s = Spec('before_batch', CancelTrainException); s.fit()
    assert s.seen[:10] == ['before_fit', 'before_epoch', 'before_train', 'before_batch', 'after_cancel_train',
                           'after_train', 'before_validate', *vb, 'after_validate'][:10]
    s = Spec('before_validate', CancelValidException); s.fit()
    assert s.seen[2 + 2 + 2 * len(tb):][:4] == ['before_validate', 'after_cancel_validate', 'after_validate', 'after_epoch']
    s = Spec('before_train', CancelEpochException); s.fit()
    assert s.seen[:6] == ['before_fit', 'before_epoch', 'before_train', 'after_cancel_epoch', 'after_epoch', 'before_epoch']
    s = Spec('after_batch', CancelFitException); s.fit()
    assert s.seen == ['before_fit', 'before_epoch', 'before_train', *tb, 'after_cancel_fit', 'after_fit']
    s = Spec('before_epoch', CancelBatchException); e = s.fit()   # nothing catches it there: it escapes
    assert isinstance(e, CancelBatchException) and s.seen == ['before_fit', 'before_epoch', 'after_fit']


def test_exception_does_not_run_other_handlers_of_that_event():
    "A cancel raised by one callback skips the later callbacks' handlers for that event, but not after_X."
    learn, seen, _ = run_fit('after_batch', CancelFitException)
    assert len(learn.recorder.losses) == 0   # the Recorder (order 50) never saw the batch
    assert seen[-2:] == ['after_cancel_fit', 'after_fit']


class Setup(Callback):
    "Sets something up in before_fit, undoes it in after_fit."
    order = 2
    def __init__(self): self.active, self.teardowns = False, 0
    def before_fit(self): self.active = True
    def after_fit(self): self.active = False; self.teardowns += 1


@pytest.mark.parametrize('exc', [RuntimeError, KeyboardInterrupt, ZeroDivisionError])
def test_cleanup_on_unexpected_exception(exc):
    setup = Setup()
    learn = tiny_learner()
    learn.model.train()
    with pytest.raises(exc):
        learn.fit(2, cbs=[setup, make_raiser('after_step', exc)])
    assert (setup.active, setup.teardowns) == (False, 1)
    assert learn.model.training                               # mode before the fit
    assert learn.logger is print_row                          # ProgressCallback restored the logger
    assert all(p.grad is None or not p.grad.any() for p in learn.model.parameters())


def test_cleanup_skips_callbacks_not_set_up():
    "A callback after the one failing in before_fit was never set up: its after_fit does not run."
    class Later(Setup): order = 5
    class Early(Setup): order = 0
    later, early = Later(), Early()
    learn = tiny_learner()
    with pytest.raises(RuntimeError, match='boom'):
        learn.fit(1, cbs=[early, later, make_raiser('before_fit', lambda: RuntimeError('boom'))])
    assert (early.teardowns, later.teardowns) == (1, 0)


def test_teardown_errors_are_attached_to_the_original():
    class BadTeardown(Callback):
        def after_fit(self): raise ValueError('teardown failed')
    setup = Setup()
    learn = tiny_learner()
    with pytest.raises(RuntimeError) as info:
        learn.fit(1, cbs=[BadTeardown(), setup, make_raiser('after_loss', lambda: RuntimeError('original'))])
    assert 'original' in str(info.value)
    assert any('teardown failed' in n for n in getattr(info.value, '__notes__', []))
    assert setup.teardowns == 1                              # the failing teardown did not stop the others


def test_callback_write_is_an_error():
    class WritesXb(Callback):
        def before_batch(self): self.xb = (self.xb[0] * 2,)
    learn = tiny_learner()
    with pytest.raises(AttributeError, match=r'self\.learn\.xb'):
        learn.fit(1, cbs=WritesXb())

    class WritesRight(Callback):
        def __init__(self): self.checked = 0
        def before_batch(self): self.learn.xb = self.xb[0] * 0     # a bare tensor is wrapped in a tuple
        def after_pred(self):                                      # the model saw the zeroed input
            assert isinstance(self.xb, tuple) and not self.xb[0].any()
            torch.testing.assert_close(self.pred, self.model.bias.detach().expand_as(self.pred))
            self.checked += 1
    cb = WritesRight()
    learn.fit(1, cbs=cb)
    assert cb.checked == N_TRAIN + N_VALID


def test_x_y_are_read_only():
    learn = tiny_learner()
    learn.fit(1)
    assert learn.x is learn.xb[0] and learn.y is learn.yb[0]
    with pytest.raises(AttributeError, match='learn.xb'): learn.x = 1


def test_ordering_and_cycles_through_the_learner():
    class A(Callback): run_before = 'Recorder'; order = 99
    class B(Callback): run_after = 'A'; run_before = 'C'
    class C(Callback): run_before = 'B'
    learn = tiny_learner(cbs=[A])
    names = [type(cb).__name__ for cb in learn.cbs]
    assert names.index('A') < names.index('Recorder')
    with pytest.raises(ValueError, match='cycle: B -> C -> B'):
        learn.add_cbs([B(), C()])
    assert 'C' not in [type(cb).__name__ for cb in learn.cbs] and 'c' not in learn.__dict__   # nothing half-added


def test_dispatch_lists_only_hold_handlers():
    class OnlyLoss(Callback):
        def after_loss(self): pass
    learn = tiny_learner(cbs=OnlyLoss)
    handlers = {ev: [h.__self__ for h in learn._train_dispatch[ev] + learn._valid_dispatch[ev]] for ev in EVENTS}
    assert learn.only_loss in handlers['after_loss']
    assert all(learn.only_loss not in hs for ev, hs in handlers.items() if ev != 'after_loss')
    learn.remove_cb(learn.only_loss)
    assert all(not isinstance(h.__self__, OnlyLoss) for hs in learn._train_dispatch.values() for h in hs)
    assert 'only_loss' not in learn.__dict__


def test_aliases_through_the_learner():
    class Old(Callback):
        def __init__(self): self.seen = []
        def begin_fit(self): self.seen.append('begin_fit')
        def begin_validate(self): self.seen.append('begin_validate')
        def after_cancel_valid(self): self.seen.append('after_cancel_valid')
    class CancelValid(Callback):
        order = 1
        def before_validate(self): raise CancelValidException()
    old = Old()
    learn = tiny_learner()
    learn.fit(1, cbs=[old, CancelValid()])
    assert old.seen == ['begin_fit', 'begin_validate', 'after_cancel_valid']
    learn('begin_fit')       # direct dispatch accepts aliases too
    with pytest.raises(ValueError, match='unknown event'): learn('before_lunch')


def test_show_training_loop_lists_every_event(capsys):
    tiny_learner().show_training_loop()
    out = capsys.readouterr().out
    for _, ev in _LOOP: assert ev in out
    assert set(ev for _, ev in _LOOP) == set(EVENTS)
    assert 'before_train          : TrainEvalCallback, Recorder, ProgressCallback' in out


def test_metrics_weight_unequal_batches():
    "Accuracy over a 4-item and a 1-item batch is correct/5, not the mean of the two batch accuracies."
    x = torch.tensor([[1., 0], [1, 0], [0, 1], [0, 1], [1, 0]])
    y = torch.tensor([0, 0, 1, 0, 1])               # the model below predicts 0,0,1,1 | 0: 3 right of 4, 0 of 1
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad(): model.weight.copy_(torch.eye(2))
    dls = DataLoaders([(x, y)], [(x[:4], y[:4]), (x[4:], y[4:])], device='cpu')
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), metrics=[accuracy, error_rate])
    loss, acc, err = learn.validate()
    assert acc == pytest.approx(3 / 5) and err == pytest.approx(2 / 5)
    assert loss == pytest.approx(nn.CrossEntropyLoss()(model(x), y).item(), rel=1e-6)


def test_callback_class_is_instantiated_and_duplicates_rejected():
    learn = tiny_learner(cbs=[Setup])
    assert isinstance(learn.setup, Setup)
    with pytest.raises(ValueError, match='already attached'): learn.add_cb(Setup())
    with pytest.raises(TypeError, match='Callback instances or Callback classes'): learn.add_cb(nn.Linear)
    with learn.removed_cbs([learn.setup]) as gone:
        assert 'setup' not in learn.__dict__
    assert learn.setup is gone[0]


def test_bad_input():
    learn = tiny_learner()
    with pytest.raises(ValueError, match='n_epoch must be >= 0'): learn.fit(-2)
    with pytest.raises(TypeError, match='n_epoch must be an int'): learn.fit('3')
    log = EventLog()
    learn.fit(0, cbs=log)
    assert log.seen == [] and learn.cbs[-1] is not log
    empty = Learner(DataLoaders([], device='cpu'), nn.Linear(2, 2), loss_func=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match='training DataLoader is empty'): empty.fit(1)
    vector = Learner(tiny_dls(), nn.Linear(2, 2), loss_func=nn.CrossEntropyLoss(reduction='none'))
    with pytest.raises(ValueError, match=r'shape \(4,\).*scalar'): vector.fit(1)
    with pytest.raises(TypeError, match='dls must be a DataLoaders'): Learner([1], nn.Linear(2, 2))
    with pytest.raises(TypeError, match="batches must be tuples"):
        Learner(DataLoaders([{'x': 1}], device='cpu'), nn.Linear(2, 2), loss_func=nn.MSELoss()).fit(1)
    no_valid = Learner(DataLoaders(tiny_dls().train, device='cpu'), nn.Linear(2, 2), loss_func=nn.CrossEntropyLoss())
    with no_valid.no_logging(): no_valid.fit(1)
    assert no_valid.recorder.values[0][1] is None          # no validation set: no valid_loss
    with pytest.raises(ValueError, match='no validation data'): no_valid.validate()


def test_save_is_atomic_and_load_is_safe(tmp_path, monkeypatch):
    learn = tiny_learner(path=tmp_path)
    learn.fit(1)
    path = learn.save('ck')
    good = path.read_bytes()

    import learnerlab.checkpoint as L
    def failing_save(obj, f): f.write(b'partial'); raise OSError('disk full')
    monkeypatch.setattr(L.torch, 'save', failing_save)
    with pytest.raises(OSError, match='disk full'): learn.save('ck')
    monkeypatch.undo()
    assert path.read_bytes() == good                          # the old checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ['ck.pth']   # no temporary file left

    class Evil:
        def __reduce__(self): return (os.system, ('echo pwned',))
    torch.save({'format': 'learnerlab-checkpoint-v1', 'model': Evil()}, tmp_path / 'evil.pth')
    with pytest.raises(ValueError, match='not a readable learnerlab checkpoint'): learn.load(tmp_path / 'evil.pth')


def test_callback_state_is_saved_and_loaded(tmp_path):
    class Counter(Callback):
        def __init__(self): self.n = 0
        def after_batch(self): self.n += 1
        def state_dict(self): return {'n': self.n}
        def load_state_dict(self, sd): self.n = sd['n']
    learn = tiny_learner(path=tmp_path, cbs=Counter)
    learn.fit(2)
    learn.save('c')
    other = tiny_learner(path=tmp_path, cbs=Counter).load('c')
    assert other.counter.n == learn.counter.n == 2 * (N_TRAIN + N_VALID)
    assert other.recorder.values == learn.recorder.values
    assert other.epoch == 1


def test_resume_matches_uninterrupted(tmp_path):
    "fit(4) == fit(2) + save + load into a fresh learner + fit(4, start_epoch=2), with a shuffling DataLoader."
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(40, 2, generator=g), torch.randint(0, 2, (40,), generator=g))
    def fresh(seed):
        torch.manual_seed(seed)
        l = Learner(DataLoaders.from_dsets(ds, ds, bs=8, device='cpu'), nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)),
                    loss_func=nn.CrossEntropyLoss(), path=tmp_path, lr=1e-2)
        l.logger = noop_logger
        return l
    straight = fresh(0); straight.fit(4)
    first = fresh(0); first.fit(2); first.save('half')
    torch.manual_seed(99)
    second = fresh(5).load('half')
    second.fit(4, start_epoch=second.epoch + 1)
    for p, q in zip(straight.model.parameters(), second.model.parameters()): fct.test_close(p, q, eps=1e-6)
    assert second.train_iter == straight.train_iter and second.pct_train == pytest.approx(1.0)


def test_predict_and_get_preds_without_targets():
    learn = tiny_learner()
    item = torch.tensor([0.5, -1.0])
    out = learn.predict(item)
    fct.test_close(out, learn.model(item[None])[0].detach())
    preds, targs = learn.get_preds(dl=[(item[None],)])
    assert targs is None and preds.shape == (1, 2)


def test_progress_bar_writes_the_results_table(capsys):
    "In a terminal fastprogress draws text bars; the per-epoch table goes under them, one row per epoch."
    learn = tiny_learner(metrics=accuracy)
    learn.fit(2)
    out = capsys.readouterr().out
    lines = [l.split('\r')[-1].split() for l in out.splitlines()]
    header = [l for l in lines if l[:1] == ['epoch']]
    rows = [l for l in lines if l[:1] in (['0'], ['1'])]
    assert header == [['epoch', 'train_loss', 'valid_loss', 'accuracy', 'time']]
    assert [r[0] for r in rows] == ['0', '1'] and all(len(r) == 5 for r in rows)
    assert learn.logger is print_row and learn.progress.mbar is None      # bar closed, logger restored


@pytest.mark.parametrize('exc', [CancelFitException, RuntimeError])
@pytest.mark.parametrize('k', [0, 1, 2])
def test_teardown_rule_is_the_same_on_cancel_and_error(k, exc):
    "The callback at position k raises in before_fit: exactly the ones before it are torn down, cancel or error."
    made = []
    for i in range(3):
        cls = type(f'Step{i}', (Setup,), {'order': 2 + i})
        made.append(cls())
    def raiser(self): raise exc()
    made[k].before_fit = raiser.__get__(made[k])
    learn = tiny_learner()
    try: learn.fit(1, cbs=made)
    except RuntimeError: pass
    assert [cb.teardowns for cb in made] == [1] * k + [0] * (3 - k)
    assert learn.logger is print_row                      # ProgressCallback (order 60) was never set up
    learn.fit(1)


def test_write_guard_covers_every_public_learner_attribute():
    learn = tiny_learner()
    public = [n for n in vars(learn) if not n.startswith('_')]
    assert {'lr', 'wd', 'metrics', 'opt_func', 'model', 'path', 'recorder'} <= set(public)
    class Writer(Callback): pass
    cb = learn.add_cb(Writer)
    for name in public:
        with pytest.raises(AttributeError, match=rf'self\.learn\.{name} = '): setattr(cb, name, 5)
    cb.my_own = 5; cb._private = 6
    assert (cb.my_own, cb._private) == (5, 6)


def test_errors_name_the_callback_and_event():
    class Bad(Callback):
        def before_validate(self): raise ValueError('nope')
    learn = tiny_learner()
    with pytest.raises(ValueError) as info: learn.fit(1, cbs=Bad())
    assert info.value.__notes__ == ["raised by callback Bad in before_validate (event 'before_validate')"]


def test_run_flags_can_change_during_a_fit():
    class OffAfterFirst(Callback):
        def __init__(self): self.seen = 0
        def after_batch(self):
            self.seen += 1
            self.run = False                       # the learner's tables are rebuilt at once
    learn = tiny_learner()
    cb = OffAfterFirst()
    learn.fit(2, cbs=cb)
    assert cb.seen == 1
    cb.run = True


def test_step_replacement_and_accumulation_question():
    class Doubler(Callback):
        def do_backward(self): (self.learn.loss * 2).backward()
    learn = tiny_learner(cbs=Doubler)
    ref = tiny_learner()
    learn.fit(1); ref.fit(1)
    assert not all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), ref.model.parameters()))
    class Hold(Callback):
        def will_step(self, n_items=0): return False
    held = tiny_learner(cbs=Hold)
    before = [p.detach().clone() for p in held.model.parameters()]
    held.fit(1)
    assert held.step_due() is False
    assert all(torch.equal(p, q) for p, q in zip(before, held.model.parameters()))     # never stepped
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in held.model.parameters())  # gradients kept


def test_torch_optimizer_class_is_refused():
    with pytest.raises(TypeError, match=r'partial\(OptimWrapper, opt=SGD\)'):
        tiny_learner(opt_func=torch.optim.SGD)
