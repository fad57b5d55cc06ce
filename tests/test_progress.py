"""Progress output as a log file or a terminal receives it: a real fit in a child process, its stdout a pipe or a pty."""
import os, pty, select, subprocess, sys, textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import sys, torch
    from torch import nn
    from learnerlab.dataloaders import DataLoaders
    from learnerlab.learner import Learner
    from learnerlab.optimizer import SGD
    torch.set_num_threads(1); torch.manual_seed(0)
    batch = lambda: (torch.randn(8, 2), torch.randint(0, 2, (8,)))
    dls = DataLoaders([batch() for _ in range(30)], [batch() for _ in range(5)], device='cpu')
    learn = Learner(dls, nn.Linear(2, 2), loss_func=nn.CrossEntropyLoss(), opt_func=SGD, lr=0.1)
    if sys.argv[1] == 'every-batch': learn.progress.plain_every = 0
    learn.fit(2)
''')

def child(mode, stdout):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'COLUMNS': '100'}
    env.pop('PYCHARM_HOSTED', None)
    return subprocess.Popen([sys.executable, '-c', SCRIPT, mode], stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=ROOT)

def test_plain_lines_when_stdout_is_a_pipe():
    p = child('default', subprocess.PIPE)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-3000:]
    text = out.decode()
    assert '\r' not in text and '\u2588' not in text
    lines = text.splitlines()
    assert [l.split()[0] for l in lines] == ['epoch', '0', '1'], text     # the table alone: a quick fit prints no progress line
    assert lines[0].split() == ['epoch', 'train_loss', 'valid_loss', 'time']

def test_plain_progress_lines_are_short():
    p = child('every-batch', subprocess.PIPE)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-3000:]
    text = out.decode()
    assert '\r' not in text
    lines = text.splitlines()
    assert len(lines) == 2 * (30 + 5) + 3, text                          # a line per batch, then the table's 3 rows
    assert max(len(l) for l in lines) < 80
    assert lines[0].startswith('epoch 0: training batch 1/30, smooth loss ')
    assert lines[30].startswith('epoch 0: validation batch 1/5, ')

def test_bars_still_drawn_on_a_terminal():
    master, slave = pty.openpty()
    p = child('default', slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready: break
        try: data = os.read(master, 65536)
        except OSError: break                                             # the child closed the terminal
        if not data: break
        chunks.append(data)
    os.close(master)
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-3000:]
    text = b''.join(chunks).decode(errors='replace')
    assert '\r' in text and ('\u2588' in text or 'X' in text), text[:500]   # fastprogress redraws its bar in place
    assert 'train_loss' in text
