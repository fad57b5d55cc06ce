"""End to end on real Imagenette images: archive served over loopback -> untar_data -> get_data -> vision_learner -> fit.

Uses the shared copy ../shared/data/imagenette2-224sq.tgz (relative to the repository root). To stay small on a CPU it
streams that archive once and keeps a subset (the first images of each class), packed as a new archive the test serves.
"""
import functools, hashlib, http.server, io, math, tarfile, threading
from pathlib import Path

import pytest
import torch
import fastcore.test as fct

from learnerlab import data as D, images as I
from learnerlab.vision import vision_learner, resnet18
from learnerlab.learner import accuracy
from learnerlab.__main__ import main
import learnerlab.schedule, learnerlab.predict  # fit_one_cycle, get_preds

ROOT = Path(__file__).resolve().parent.parent
IMAGENETTE = ROOT.parent/'shared'/'data'/'imagenette2-224sq.tgz'
WNIDS = ['n01440764', 'n02102040', 'n02979186', 'n03000684', 'n03028079', 'n03394916', 'n03417042', 'n03425413',
         'n03445777', 'n03888257']   # parachute is n03888257 (shared README says n03888605)
N_TRAIN, N_VALID = 24, 8       # images per class in the subset

pytestmark = pytest.mark.skipif(not IMAGENETTE.exists(), reason=f'needs the shared Imagenette copy {IMAGENETTE} '
                                '(present on the development machine, absent from a clone)')

def make_subset(src, dst):
    "Stream the archive `src` and write to `dst` the first images of each class of train/ and val/."
    counts = {}
    with tarfile.open(src, 'r|gz') as tin, tarfile.open(dst, 'w:gz') as tout:
        for m in tin:
            parts = m.name.split('/')
            if not m.isfile() or len(parts) != 4 or parts[1] not in ('train', 'val'): continue
            key, limit = (parts[1], parts[2]), N_TRAIN if parts[1] == 'train' else N_VALID
            if counts.get(key, 0) >= limit: continue
            counts[key] = counts.get(key, 0) + 1
            tout.addfile(m, tin.extractfile(m))
    return counts

@pytest.fixture(scope='module')
def served(tmp_path_factory):
    "The subset archive, served on 127.0.0.1; yields (url, sha256, server)."
    folder = tmp_path_factory.mktemp('srv')
    counts = make_subset(IMAGENETTE, folder/'imagenette2-sub.tgz')
    assert len(counts) == 20 and sum(counts.values()) == 10 * (N_TRAIN + N_VALID), counts
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
        def do_GET(self):
            self.server.requests.append(self.path)
            super().do_GET()
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(folder)))
    srv.requests = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    digest = D.file_sha256(folder/'imagenette2-sub.tgz')
    yield f'http://127.0.0.1:{srv.server_address[1]}/imagenette2-sub.tgz', digest, srv
    srv.shutdown(); srv.server_close()

def test_download_to_trained_learner(served, tmp_path):
    url, digest, srv = served
    path = D.untar_data(url, dest=tmp_path, sha256=digest, show_progress=False)
    fct.test_eq(path, tmp_path/'imagenette2-sub')
    fct.test_eq(sorted(p.name for p in (path/'train').iterdir()), WNIDS)
    fct.test_eq(D.untar_data(url, dest=tmp_path), path)            # reused
    fct.test_eq(len(srv.requests), 1)

    dls = I.get_data(path, 80, 64, bs=32, num_workers=0, device='cpu')
    fct.test_eq((dls.c, dls.vocab), (10, WNIDS))
    fct.test_eq((len(dls.train.dataset), len(dls.valid.dataset)), (10 * N_TRAIN, 10 * N_VALID))
    xb, yb = next(iter(dls.train))
    fct.test_eq(xb.shape, (32, 3, 64, 64))

    torch.manual_seed(0)
    learn = vision_learner(dls, resnet18, metrics=accuracy)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 3e-3)
    train_loss, valid_loss, acc = learn.recorder.final_record
    assert math.isfinite(train_loss) and math.isfinite(valid_loss) and 0 <= acc <= 1
    preds, targs = learn.get_preds()
    fct.test_eq((preds.shape, targs.shape), ((10 * N_VALID, 10), (10 * N_VALID,)))
    fct.test_close(acc, (preds.argmax(1) == targs).float().mean().item(), eps=1e-6)

def test_main_job_on_an_image_folder(served, tmp_path, capsys):
    url, digest, srv = served
    path = D.untar_data(url, dest=tmp_path/'data', sha256=digest, show_progress=False)
    out = tmp_path/'out'
    rc = main(['--data', str(path), '--optimizers', 'adam', '--arch', 'resnet18', '--size', '64', '--epochs', '1',
               '--bs', '32', '--per-class', '16', '--valid-per-class', '4', '--workers', '0', '--quiet', '--out', str(out)])
    fct.test_eq(rc, 0)
    printed = capsys.readouterr().out
    assert '(160 training / 40 validation images, 10 classes)' in printed, printed    # both splits limited
    assert 'optimizer' in printed and 'Adam (default)' in printed, printed
    fct.test_eq(sorted(p.name for p in out.iterdir()), ['losses.png', 'results.txt', 'schedules.png'])
