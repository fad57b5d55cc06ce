"""learnerlab.data: downloads served from a loopback HTTP server (never the internet), safe extraction, the sample."""
import functools, hashlib, http.server, io, os, socket, subprocess, sys, tarfile, threading
from pathlib import Path

import pytest
import torch
import fastcore.test as fct

from learnerlab import data as D

ROOT = Path(__file__).resolve().parent.parent

class _Handler(http.server.SimpleHTTPRequestHandler):
    "Serves a folder; records requests; `/short/<name>` promises the full length but sends half the bytes."
    def log_message(self, *args): pass
    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith('/short/'):
            body = (Path(self.directory)/self.path[len('/short/'):]).read_bytes()
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

@pytest.fixture
def server(tmp_path):
    "A loopback server on tmp_path/'srv'; yields (base url, server, folder)."
    folder = tmp_path/'srv'
    folder.mkdir()
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Handler, directory=str(folder)))
    srv.requests = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_address[1]}/', srv, folder
    srv.shutdown()
    srv.server_close()

def make_tgz(path, members):
    "A gzipped tar at `path` with `members`: {name: bytes} for files, {name: ('symlink', target)} for links."
    with tarfile.open(path, 'w:gz') as tf:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple): info.type, info.linkname = tarfile.SYMTYPE, content[1]; tf.addfile(info)
            else: info.size = len(content); tf.addfile(info, io.BytesIO(content))
    return path

GOOD = {'ds/train/cat/1.txt': b'meow', 'ds/val/cat/2.txt': b'purr'}

def listing(folder):
    "Every entry under `folder`, relative, sorted (hidden temp files included)."
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*'))

def test_good_archive_is_downloaded_checked_extracted_and_reused(server, tmp_path):
    base, srv, folder = server
    archive = make_tgz(folder/'ds.tgz', GOOD)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    data = tmp_path/'data'
    path = D.untar_data(base + 'ds.tgz', dest=data, size=archive.stat().st_size, sha256=digest, show_progress=False)
    fct.test_eq(path, data/'ds')
    fct.test_eq((path/'train'/'cat'/'1.txt').read_bytes(), b'meow')
    fct.test_eq(listing(data), ['ds', 'ds/train', 'ds/train/cat', 'ds/train/cat/1.txt', 'ds/val', 'ds/val/cat',
                                'ds/val/cat/2.txt'])   # the downloaded archive itself is gone too
    fct.test_eq(D.untar_data(base + 'ds.tgz', dest=data), path)
    fct.test_eq(srv.requests, ['/ds.tgz'])            # the existing copy was reused: no second request
    (path/'train'/'cat'/'1.txt').write_bytes(b'changed')
    D.untar_data(base + 'ds.tgz', dest=data, force=True, show_progress=False)
    fct.test_eq((path/'train'/'cat'/'1.txt').read_bytes(), b'meow')
    fct.test_eq(len(srv.requests), 2)

def test_env_variable_chooses_the_folder(server, tmp_path, monkeypatch):
    base, srv, folder = server
    make_tgz(folder/'ds.tgz', GOOD)
    monkeypatch.setenv('LEARNERLAB_DATA', str(tmp_path/'envdata'))
    fct.test_eq(D.untar_data(base + 'ds.tgz', show_progress=False), tmp_path/'envdata'/'ds')

def _assert_clean(data):
    "The data folder holds nothing: no partial folder, no temp file."
    assert not data.exists() or listing(data) == [], listing(data)

def test_corrupt_archive(server, tmp_path):
    base, srv, folder = server
    (folder/'bad.tgz').write_bytes(b'\x1f\x8b\x08\x00' + os.urandom(2000))
    with pytest.raises(D.BadArchiveError, match='not a complete tar archive'):
        D.untar_data(base + 'bad.tgz', dest=tmp_path/'data', show_progress=False)
    _assert_clean(tmp_path/'data')

def test_truncated_archive(server, tmp_path):
    base, srv, folder = server
    big = {f'ds/train/c/{i}.bin': os.urandom(20_000) for i in range(10)}
    full = make_tgz(tmp_path/'full.tgz', big).read_bytes()
    (folder/'cut.tgz').write_bytes(full[:len(full) * 2 // 3])
    with pytest.raises(D.BadArchiveError, match='not a complete tar archive'):
        D.untar_data(base + 'cut.tgz', dest=tmp_path/'data', show_progress=False)
    _assert_clean(tmp_path/'data')

def test_truncated_download(server, tmp_path):
    "The server promises N bytes and closes after N/2: a DownloadError, no file left."
    base, srv, folder = server
    make_tgz(folder/'ds.tgz', {f'ds/train/c/{i}.bin': os.urandom(20_000) for i in range(5)})
    with pytest.raises(D.DownloadError):
        D.untar_data(base + 'short/ds.tgz', dest=tmp_path/'data', show_progress=False)
    _assert_clean(tmp_path/'data')

def test_wrong_checksum_and_size(server, tmp_path):
    base, srv, folder = server
    archive = make_tgz(folder/'ds.tgz', GOOD)
    with pytest.raises(D.BadArchiveError, match='has sha256'):
        D.untar_data(base + 'ds.tgz', dest=tmp_path/'data', sha256='0' * 64, show_progress=False)
    with pytest.raises(D.BadArchiveError, match='expected 1'):
        D.untar_data(base + 'ds.tgz', dest=tmp_path/'data', size=1, show_progress=False)
    _assert_clean(tmp_path/'data')

@pytest.mark.parametrize('members', [
    {'ds/ok.txt': b'ok', '../escaped.txt': b'x'},
    {'ds/ok.txt': b'ok', 'ds/../../escaped.txt': b'x'},
    {'ds/ok.txt': b'ok', 'ds/link': ('symlink', '/etc/passwd')},
], ids=['dotdot', 'nested-dotdot', 'symlink-out'])
def test_path_traversal_member_is_refused(server, tmp_path, members):
    base, srv, folder = server
    make_tgz(folder/'evil.tgz', members)
    data = tmp_path/'a'/'b'/'data'
    with pytest.raises(D.BadArchiveError, match='is unsafe'):
        D.untar_data(base + 'evil.tgz', dest=data, show_progress=False)
    _assert_clean(data)
    assert not (tmp_path/'a'/'escaped.txt').exists() and not (tmp_path/'a'/'b'/'escaped.txt').exists()

def test_absolute_member_stays_inside(server, tmp_path):
    "The data filter strips a leading '/': the member lands inside the extracted folder, never at its absolute path."
    base, srv, folder = server
    target = tmp_path/'outside'/'absolute_escape.txt'
    make_tgz(folder/'abs.tgz', {'ds/ok.txt': b'ok', str(target): b'x'})
    path = D.untar_data(base + 'abs.tgz', dest=tmp_path/'data', show_progress=False)
    assert not target.exists()
    fct.test_eq((path/str(target).lstrip('/')).read_bytes(), b'x')

def test_failed_downloads(server, tmp_path):
    base, srv, folder = server
    with pytest.raises(D.DownloadError, match='could not download .*404'):
        D.untar_data(base + 'missing.tgz', dest=tmp_path/'data', show_progress=False)
    with socket.socket() as s:             # a port nobody listens on: connection refused
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    with pytest.raises(D.DownloadError, match='could not download'):
        D.untar_data(f'http://127.0.0.1:{port}/x.tgz', dest=tmp_path/'data', show_progress=False)
    _assert_clean(tmp_path/'data')

def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='must name a tar archive'): D.untar_data('http://127.0.0.1:1/data.zip', dest=tmp_path)
    with pytest.raises(FileNotFoundError, match='neither a URL nor an existing archive'): D.untar_data(tmp_path/'no.tgz', dest=tmp_path)

def test_sample_sha256_matches_the_recorded_one():
    fct.test_eq(D.file_sha256(D.FASHION_SAMPLE), D.FASHION_SAMPLE_SHA256)
    recorded = (D.SAMPLE_DIR/'fashion_mnist_sample.tgz.sha256').read_text().split()[0]
    fct.test_eq(recorded, D.FASHION_SAMPLE_SHA256)
    assert 'Zalando' in (D.SAMPLE_DIR/'LICENSE-fashion-mnist.txt').read_text()

@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz').exists(),
                    reason='needs the Debian package dataset-fashion-mnist to rebuild the sample')
def test_sample_rebuilds_byte_for_byte():
    res = subprocess.run([sys.executable, str(ROOT/'scripts'/'make_sample.py'), '--check'], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr

def test_sample_to_dataloaders(tmp_path):
    dls = D.get_fashion_sample(size=28, bs=50, dest=tmp_path, num_workers=0)
    fct.test_eq(dls.c, 10)
    fct.test_eq(len(dls.train), 50)
    xb, yb = next(iter(dls.train))
    fct.test_eq(xb.shape, (50, 3, 28, 28))
    assert yb.unique().numel() > 3          # shuffled: a batch mixes classes
    # a tampered sample copy is refused by its checksum
    bad = tmp_path/'copy'/'fashion_mnist_sample.tgz'
    bad.parent.mkdir()
    bad.write_bytes(D.FASHION_SAMPLE.read_bytes()[:-10])
    with pytest.raises(D.BadArchiveError, match='has sha256'):
        D.untar_data(bad, dest=tmp_path/'other', sha256=D.FASHION_SAMPLE_SHA256)
