"""Checkpoints under damage and interruption: byte flips, truncation, foreign files, unsafe pickles,
an optimizer or callback that does not fit (load is all or nothing), saves killed with SIGKILL.
"""
import io, os, random, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path

import pytest
import numpy as np
import torch
from torch import nn
from hypothesis import given, settings, strategies as st

from learnerlab.callback import Callback
from learnerlab.dataloaders import DataLoaders
from learnerlab.learner import Learner
from learnerlab.progress import ProgressCallback, noop_logger
from learnerlab.checkpoint import *
from learnerlab.checkpoint import _host
from learnerlab.optimizer import Adam

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(n)]


def learner(tmp_path, seed=0, splitter=None, cbs=None, model=None):
    torch.manual_seed(seed)
    model = model or nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    kw = {} if splitter is None else {'splitter': splitter}
    learn = Learner(DataLoaders(batches(3, 0), batches(1, 1), device='cpu'), model, loss_func=nn.CrossEntropyLoss(),
                    opt_func=Adam, lr=1e-2, path=tmp_path, cbs=cbs, **kw)
    learn.remove_cb(ProgressCallback); learn.logger = noop_logger
    return learn


def snapshot(learn):
    "Everything `load` may change, as plain values to compare."
    opt = learn.opt.state_dict() if learn.opt is not None else None
    opt_state = None if opt is None else [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for s in opt['state']]
    return {'model': {k: v.clone() for k, v in learn.model.state_dict().items()}, 'opt': opt_state,
            'has_opt': learn.opt is not None, 'recorder': [list(v) for v in learn.recorder.values],
            'epoch': learn.epoch, 'rng': torch.get_rng_state().clone()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k
    assert a['has_opt'] == b['has_opt'] and a['recorder'] == b['recorder'] and a['epoch'] == b['epoch']
    assert torch.equal(a['rng'], b['rng'])
    assert (a['opt'] is None) == (b['opt'] is None)
    for sa, sb in zip(a['opt'] or [], b['opt'] or []):
        assert sa.keys() == sb.keys()
        for k in sa: assert torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k]


@pytest.fixture
def saved(tmp_path):
    learn = learner(tmp_path); learn.fit(2)
    return learn, learn.save('ck')


# ---- the file itself

def test_checkpoint_is_plain_torch_with_its_checksum(saved):
    learn, path = saved
    state = torch.load(path, weights_only=True)
    assert state['format'] == 'learnerlab-checkpoint-v3' and len(state['sha256']) == 64
    assert payload_sha256({k: v for k, v in state.items() if k != 'sha256'}) == state['sha256']
    assert read_checkpoint(path)['epoch'] == learn.epoch == 1
    assert state['pos']['event'] is None and state['pos']['n_epoch'] == 2     # saved after the fit: no position to resume


def test_a_checkpoint_of_the_previous_format_still_loads(saved, tmp_path):
    "Format v2 (before loop positions) has the same parts but 'pos': it loads, and resume= says it has no position."
    learn, path = saved
    state = torch.load(path, weights_only=True)
    old = {k: v for k, v in state.items() if k not in ('pos', 'sha256')}
    old['format'] = 'learnerlab-checkpoint-v2'
    old['sha256'] = payload_sha256(old)
    torch.save(old, tmp_path / 'v2.pth')
    other = learner(tmp_path, seed=5).load(tmp_path / 'v2.pth')
    for p, q in zip(learn.model.parameters(), other.model.parameters()): assert torch.equal(p, q)
    with pytest.raises(CheckpointError, match='older learnerlab'): other.fit(2, resume=tmp_path / 'v2.pth')


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_every_byte_flip_is_refused_or_harmless(tmp_path, seed):
    "A flipped byte anywhere either is refused as damaged, or lies outside the payload (zip padding, CRCs) and changes nothing."
    random.seed(seed); np.random.seed(seed)   # the RNG states are in the file: each seed lays it out differently
    learn = learner(tmp_path, seed=seed); learn.fit(2); path = learn.save('ck')
    good = path.read_bytes()
    original = read_checkpoint(path)
    bad, refused, harmless = tmp_path / 'bad.pth', 0, 0
    offsets = sorted(set(range(seed, len(good), max(1, len(good) // 300))) | {0, 1, 2, 3, len(good) - 1, len(good) - 22})
    for i in offsets:
        data = bytearray(good); data[i] ^= 0xFF; bad.write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('error')
                state = read_checkpoint(bad)
        except CheckpointError as e:
            assert 'damaged' in str(e) and ('earlier copy' in str(e) or 'do not open it' in str(e)), (i, str(e))
            refused += 1
        else:
            assert payload_sha256(state) == payload_sha256(original), i
            harmless += 1
    print(f'{refused} refused, {harmless} harmless of {len(offsets)} flips')
    assert refused > 0.8 * len(offsets), (refused, harmless)


def test_flip_in_the_weights_leaves_the_learner_as_it_was(saved, tmp_path):
    learn, path = saved
    good = path.read_bytes()
    data = bytearray(good); i = good.index(b'archive/data/0') + 100; data[i] ^= 0x01
    (tmp_path / 'bad.pth').write_bytes(bytes(data))
    other = learner(tmp_path, seed=3); other.fit(1)
    before = snapshot(other)
    with pytest.raises(CheckpointError, match='do not match the sha256 checksum'): other.load(tmp_path / 'bad.pth')
    assert_same(before, snapshot(other))


@pytest.mark.parametrize('cut', [1, 3, 30, 0.5, -22, -1])
def test_truncated_file(saved, tmp_path, cut):
    learn, path = saved
    good = path.read_bytes()
    n = int(len(good) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(good) + cut)
    (tmp_path / 't.pth').write_bytes(good[:n])
    with pytest.raises(CheckpointError) as e: learn.load(tmp_path / 't.pth')
    msg = str(e.value)
    assert 'damaged' in msg and 'earlier copy' in msg
    if n >= 22: assert 'cut short' in msg and f'{n:,} bytes' in msg
    else: assert 'too short' in msg


def test_empty_random_and_folder(saved, tmp_path):
    learn, _ = saved
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'is empty \(0 bytes\).*earlier copy'): learn.load(tmp_path / 'empty.pth')
    for seed in range(5):
        (tmp_path / 'rnd.pth').write_bytes(torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(seed),
                                                         dtype=torch.uint8).numpy().tobytes())
        with pytest.raises(CheckpointError, match='damaged or is not a checkpoint.*Check the path'): learn.load(tmp_path / 'rnd.pth')
    (tmp_path / 'dir.pth').mkdir()
    with pytest.raises(CheckpointError, match='is a folder'): learn.load(tmp_path / 'dir.pth')
    with pytest.raises(FileNotFoundError, match='no checkpoint at'): learn.load('missing')


@pytest.mark.parametrize('zipped', [True, False])
def test_plain_state_dict_says_how_to_load_it(saved, tmp_path, zipped):
    learn, _ = saved
    torch.save(learn.model.state_dict(), tmp_path / 'raw.pth', _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError, match=r'not a learnerlab checkpoint but a plain state_dict.*'
                                              r'learn\.model\.load_state_dict\(torch\.load\(path, weights_only=True\)\)'):
        learn.load(tmp_path / 'raw.pth')


class Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize('zipped', [True, False])
def test_pickle_needing_weights_only_false_is_refused(saved, tmp_path, zipped):
    learn, _ = saved
    marker = tmp_path / 'ran'
    torch.save({'format': 'learnerlab-checkpoint-v2', 'model': Evil(str(marker))}, tmp_path / 'evil.pth',
               _use_new_zipfile_serialization=zipped)
    before = snapshot(learn)
    with pytest.raises(CheckpointError) as e: learn.load(tmp_path / 'evil.pth')
    msg = str(e.value)
    assert 'damaged or unsafe' in msg and 'learnerlab refuses it' in msg and 'weights_only=False' in msg
    assert not marker.exists()
    assert_same(before, snapshot(learn))


def test_other_dicts_and_formats(saved, tmp_path):
    learn, path = saved
    torch.save({'epoch': 3, 'notes': 'mine'}, tmp_path / 'mine.pth')
    with pytest.raises(CheckpointError, match=r"not a learnerlab checkpoint \(written by Learner.save\).*\['epoch', 'notes'\]"):
        learn.load(tmp_path / 'mine.pth')
    state = torch.load(path, weights_only=True)
    torch.save({**state, 'format': 'learnerlab-checkpoint-v9'}, tmp_path / 'v9.pth')
    with pytest.raises(CheckpointError, match='does not know'): learn.load(tmp_path / 'v9.pth')
    del state['epoch']; torch.save(state, tmp_path / 'part.pth')
    with pytest.raises(CheckpointError, match=r"damaged: its parts \['epoch'\] are missing"): learn.load(tmp_path / 'part.pth')


def test_old_checkpoint_without_checksum_loads_with_a_warning(saved, tmp_path):
    learn, path = saved
    state = torch.load(path, weights_only=True)
    del state['sha256']; state['format'] = 'learnerlab-checkpoint-v1'
    torch.save(state, tmp_path / 'v1.pth')
    with pytest.warns(UserWarning, match='without a checksum'): other = learner(tmp_path, seed=4).load(tmp_path / 'v1.pth')
    for p, q in zip(learn.model.parameters(), other.model.parameters()): assert torch.equal(p, q)


# ---- all or nothing

def two_groups(m): return [list(m[0].parameters()), list(m[2].parameters())]


def test_optimizer_layout_mismatch_changes_nothing(tmp_path):
    src = learner(tmp_path / 'a', splitter=two_groups); src.fit(1); path = src.save('two')
    dst = learner(tmp_path / 'b', seed=7); dst.fit(2)
    before = snapshot(dst)
    with pytest.raises(CheckpointError, match=r'left as it was.*2 group\(s\)'): dst.load(path)
    assert_same(before, snapshot(dst))
    fresh = learner(tmp_path / 'c', seed=8)             # no optimizer yet: load must not leave one behind
    with pytest.raises(CheckpointError, match='left as it was'): fresh.load(path)
    assert fresh.opt is None


def test_failing_callback_undoes_the_optimizer_and_rng(tmp_path):
    class Fragile(Callback):
        def __init__(self): self.n, self.tag = 0, 'mine'
        def after_batch(self): self.n += 1
        def state_dict(self): return {'n': self.n}
        def load_state_dict(self, sd): self.n, self.tag = sd['n'], 'loaded'; raise KeyError('needs a newer format')
    src = learner(tmp_path, cbs=Fragile()); src.fit(2); path = src.save('f')
    dst = learner(tmp_path, seed=5, cbs=Fragile()); dst.fit(1)
    torch.manual_seed(42)
    before, cb = snapshot(dst), dst.fragile
    with pytest.raises(CheckpointError, match="left as it was: KeyError: 'needs a newer format'"): dst.load(path)
    assert_same(before, snapshot(dst))
    assert (cb.n, cb.tag) == (4 * 1, 'mine')
    dst.load(path, with_cbs=False)                     # the rest of the checkpoint is fine
    for p, q in zip(src.model.parameters(), dst.model.parameters()): assert torch.equal(p, q)


def test_model_mismatch_names_keys_and_shapes(saved, tmp_path):
    learn, path = saved
    wider = learner(tmp_path, model=nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
    before = snapshot(wider)
    with pytest.raises(CheckpointError, match=r"does not fit this model: other shapes \['0.weight \(4, 3\) for \(5, 3\)'"):
        wider.load(path)
    assert_same(before, snapshot(wider))
    deeper = learner(tmp_path, model=nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match=r"missing keys \['3.weight', '3.bias'\].*nothing was loaded"): deeper.load(path)


# ---- with_opt

def test_with_opt_on_a_checkpoint_without_optimizer_state_warns(tmp_path):
    src = learner(tmp_path); src.fit(2); path = src.save('w', with_opt=False)
    dst = learner(tmp_path, seed=6); dst.fit(1)
    opt_before = snapshot(dst)['opt']
    with pytest.warns(UserWarning, match=r'holds no optimizer state \(it was saved with with_opt=False\).*with_opt=False'):
        dst.load(path)
    for p, q in zip(src.model.parameters(), dst.model.parameters()): assert torch.equal(p, q)
    assert_same({**snapshot(dst), 'opt': opt_before}, snapshot(dst))   # the optimizer kept its state
    with warnings.catch_warnings():
        warnings.simplefilter('error'); dst.load(path, with_opt=False)


# ---- resume

def test_resume_is_bit_identical(tmp_path):
    straight = learner(tmp_path); straight.fit(4)
    first = learner(tmp_path); first.fit(2); first.save('half')
    torch.manual_seed(99)
    second = learner(tmp_path, seed=5).load('half')
    second.fit(4, start_epoch=second.epoch + 1)
    for p, q in zip(straight.model.parameters(), second.model.parameters()): assert torch.equal(p, q)
    assert second.recorder.values == straight.recorder.values


# ---- temporary files of killed saves

SAVER = textwrap.dedent('''
    import sys, time, torch
    from torch import nn
    from learnerlab.learner import Learner, DataLoaders
    import learnerlab.checkpoint as C
    learn = Learner(DataLoaders([(torch.ones(2, 1), torch.ones(2, 1))], device='cpu'), {model}, loss_func=nn.MSELoss(), path=sys.argv[1])
    if {patched}:
        def slow_save(obj, f):
            f.write(b'partial'); f.flush(); print('writing', flush=True); time.sleep(600)
        C.torch.save = slow_save
    print('ready', flush=True)
    while True: learn.save('big')
''')


def start_saver(tmp_path, model='nn.Linear(1, 1)', patched=True):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    p = subprocess.Popen([sys.executable, '-c', SAVER.format(model=model, patched=patched), str(tmp_path)],
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == 'ready'
    return p


def tmps(folder): return sorted(p.name for p in folder.glob('.big.pth.*.tmp'))


def test_temp_file_of_a_killed_save_is_removed_by_the_next_save_but_not_while_alive(tmp_path):
    saver = start_saver(tmp_path)
    try:
        assert saver.stdout.readline().strip() == 'writing'
        models = tmp_path / 'models'
        left = tmps(models)
        assert len(left) == 1 and f'.{_host()}.{saver.pid}.' in left[0]
        learn = learner(tmp_path); learn.save('big')
        assert tmps(models) == left                         # the saver is alive: its file stays
    finally:
        saver.send_signal(signal.SIGKILL); saver.wait(); saver.stdout.close()
    assert tmps(models) == left                             # SIGKILL: nobody cleaned up
    learn.save('big')
    assert tmps(models) == [] and read_checkpoint(models / 'big.pth')['epoch'] == 0


def test_real_save_killed_midway(tmp_path):
    "An unpatched save of a large model, killed with SIGKILL while its temporary file is being written."
    models, left = tmp_path / 'models', []
    for attempt in range(5):
        saver = start_saver(tmp_path, model='nn.Linear(2000, 2000)', patched=False)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and not any(p.stat().st_size > 0 for p in models.glob('.big.pth.*.tmp') if p.exists()):
                time.sleep(0.005)
        finally:
            saver.send_signal(signal.SIGKILL); saver.wait(); saver.stdout.close()
        left = tmps(models)
        if left: break
    assert left, 'never caught a save in the middle'
    learner(tmp_path, model=nn.Linear(1, 1)).save('big')
    assert tmps(models) == []


def test_files_that_are_not_dead_local_temps_stay(tmp_path):
    folder = tmp_path / 'models'; folder.mkdir()
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()
    keep = [f'.big.pth.otherhost.{dead.pid}.aaaa.tmp', f'.big.pth.{_host()}.{os.getpid()}.bbbb.tmp',
            f'.big.pth.{_host()}.notapid.cccc.tmp', '.big.pth.oldstyle.tmp', f'.big.pth.x.pth.{_host()}.{dead.pid}.dddd.tmp',
            f'.other.pth.{_host()}.{dead.pid}.eeee.tmp']
    gone = f'.big.pth.{_host()}.{dead.pid}.ffff.tmp'
    for n in keep + [gone]: (folder / n).write_bytes(b'x')
    assert remove_stale_tmps(folder / 'big.pth') == [folder / gone]
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


# ---- the checksum

leaves = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.text(max_size=5), st.none(), st.booleans(),
                   st.lists(st.floats(-1e3, 1e3, width=32), min_size=0, max_size=6).map(torch.tensor))
trees = st.recursive(leaves, lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=3), kids, max_size=3)),
                     max_leaves=10)


@settings(max_examples=60, deadline=None)
@given(trees)
def test_checksum_survives_a_round_trip_through_a_file(obj):
    buf = io.BytesIO(); torch.save(obj, buf); buf.seek(0)
    assert payload_sha256(torch.load(buf, weights_only=True)) == payload_sha256(obj)


def test_checkpoint_saved_before_the_optimizer_existed(tmp_path):
    early = learner(tmp_path); assert early.opt is None; path = early.save('early')
    assert torch.load(path, weights_only=True)['opt'] == {}
    trained = learner(tmp_path, seed=1); trained.fit(1)
    with warnings.catch_warnings():
        warnings.simplefilter('error'); trained.load(path)
    assert trained.opt is None                              # the next fit starts a fresh optimizer, as `early` would
    again = learner(tmp_path, seed=2); again.load(path); again.fit(2)
    early.fit(2)
    for p, q in zip(early.model.parameters(), again.model.parameters()): assert torch.equal(p, q)
