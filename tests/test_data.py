"""learnerlab.data: downloads served from a loopback HTTP server (never the internet), safe extraction, the sample."""
import _thread, functools, hashlib, http.server, io, os, signal, socket, subprocess, sys, tarfile, threading, time
from pathlib import Path

import pytest
import torch
import fastcore.test as fct

from learnerlab import data as D, images as I

ROOT = Path(__file__).resolve().parent.parent

PACES = {'drip': (1, 0.2), 'slow': (2048, 0.05)}   # (bytes, seconds between writes): 5 B/s stalls, 40 KiB/s does not

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; records requests. `/short/<name>` promises the full length but sends half the bytes;
    `/drip/<name>` and `/slow/<name>` send the file in small pieces at the pace of `PACES`."""
    def log_message(self, *args): pass
    def do_GET(self):
        self.server.requests.append(self.path)
        kind, _, name = self.path.lstrip('/').partition('/')
        if kind == 'headdrip': return self._drip_status_line()
        if kind not in ('short', *PACES): return super().do_GET()
        body = (Path(self.directory)/name).read_bytes()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        try:
            if kind == 'short': self.wfile.write(body[:len(body) // 2])
            else:
                step, pause = PACES[kind]
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step]); self.wfile.flush(); time.sleep(pause)
            self.wfile.flush()
        except OSError: pass                 # the client gave up
        self.close_connection = True

    def _drip_status_line(self):
        "Send the status line and headers one byte every 0.2 s, so that no single wait for bytes times out."
        try:
            for b in b'HTTP/1.0 200 OK\r\nContent-Length: 10\r\nX-Padding: ' + b'x' * 1000 + b'\r\n\r\n0123456789':
                self.wfile.write(bytes([b])); self.wfile.flush(); time.sleep(0.2)
        except OSError: pass
        self.close_connection = True

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
    fct.test_eq(D.file_sha256(I.FASHION_SAMPLE), I.FASHION_SAMPLE_SHA256)
    recorded = (I.SAMPLE_DIR/'fashion_mnist_sample.tgz.sha256').read_text().split()[0]
    fct.test_eq(recorded, I.FASHION_SAMPLE_SHA256)
    assert 'Zalando' in (I.SAMPLE_DIR/'LICENSE-fashion-mnist.txt').read_text()

@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz').exists(),
                    reason='needs the Debian package dataset-fashion-mnist to rebuild the sample')
def test_sample_rebuilds_byte_for_byte():
    res = subprocess.run([sys.executable, str(ROOT/'scripts'/'make_sample.py'), '--check'], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr

def test_sample_to_dataloaders(tmp_path):
    dls = I.get_fashion_sample(size=28, bs=50, dest=tmp_path, num_workers=0)
    fct.test_eq(dls.c, 10)
    fct.test_eq(len(dls.train), 50)
    xb, yb = next(iter(dls.train))
    fct.test_eq(xb.shape, (50, 3, 28, 28))
    assert yb.unique().numel() > 3          # shuffled: a batch mixes classes
    # a tampered sample copy is refused by its checksum
    bad = tmp_path/'copy'/'fashion_mnist_sample.tgz'
    bad.parent.mkdir()
    bad.write_bytes(I.FASHION_SAMPLE.read_bytes()[:-10])
    with pytest.raises(D.BadArchiveError, match='has sha256'):
        D.untar_data(bad, dest=tmp_path/'other', sha256=I.FASHION_SAMPLE_SHA256)


# --- a bad archive or download never costs the data already there (force=True) ---

TEMP_MARKS = ('.download', '.part', '.extracting', '.old')

def _assert_no_temp_name(message):
    "An error message names what the user passed, never one of our temp files."
    assert not any(m in message for m in TEMP_MARKS), message

def _with_old_copy(base, folder, data):
    "Extract a good 'ds.tgz' into `data` from the server; return a function that checks it is still intact and alone."
    make_tgz(folder/'ds.tgz', GOOD)
    path = D.untar_data(base + 'ds.tgz', dest=data, show_progress=False)
    before = listing(data)
    def still_intact():
        fct.test_eq(listing(data), before)      # the same files, and no temp file or folder beside them
        fct.test_eq((path/'train'/'cat'/'1.txt').read_bytes(), b'meow')
    return still_intact

BAD_REPLACEMENTS = {
    'corrupt': (lambda: b'\x1f\x8b\x08\x00' + os.urandom(2000), D.BadArchiveError, 'is not a complete tar archive'),
    'unsafe': (lambda: _tgz_bytes({'ds/ok.txt': b'ok', 'ds/../../escaped.txt': b'x'}), D.BadArchiveError, 'is unsafe'),
    'bomb': (lambda: _tgz_bytes({'ds/zeros.bin': bytes(5_000_000)}), D.BadArchiveError, 'pass a larger max_ratio'),
}

def _tgz_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as tf:
        for name, content in members.items():
            info = tarfile.TarInfo(name); info.size = len(content); tf.addfile(info, io.BytesIO(content))
    return buf.getvalue()

@pytest.mark.parametrize('kind', list(BAD_REPLACEMENTS))
def test_force_with_a_bad_archive_keeps_the_old_data(server, tmp_path, kind):
    base, srv, folder = server
    data = tmp_path/'data'
    still_intact = _with_old_copy(base, folder, data)
    make_bytes, err, msg = BAD_REPLACEMENTS[kind]
    (folder/'ds.tgz').write_bytes(make_bytes())
    with pytest.raises(err, match=msg) as e:
        D.untar_data(base + 'ds.tgz', dest=data, force=True, show_progress=False)
    assert str(e.value).startswith(f'refusing to extract {base}ds.tgz' if kind != 'corrupt' else f'{base}ds.tgz'), e.value
    _assert_no_temp_name(str(e.value))
    still_intact()

def test_force_with_a_failed_download_or_wrong_checksum_keeps_the_old_data(server, tmp_path):
    base, srv, folder = server
    data = tmp_path/'data'
    still_intact = _with_old_copy(base, folder, data)
    with pytest.raises(D.DownloadError, match='stopped after'):
        D.untar_data(base + 'short/ds.tgz', dest=data, force=True, show_progress=False)
    still_intact()
    with pytest.raises(D.BadArchiveError, match=f'^{base}ds.tgz has sha256 .* download it again') as e:
        D.untar_data(base + 'ds.tgz', dest=data, force=True, sha256='0' * 64, show_progress=False)
    _assert_no_temp_name(str(e.value))
    still_intact()

def test_force_with_a_good_archive_replaces_the_old_data(server, tmp_path):
    base, srv, folder = server
    data = tmp_path/'data'
    _with_old_copy(base, folder, data)
    (folder/'ds.tgz').write_bytes(_tgz_bytes({'ds/train/dog/3.txt': b'woof', 'ds/val/dog/4.txt': b'bark'}))
    path = D.untar_data(base + 'ds.tgz', dest=data, force=True, show_progress=False)
    fct.test_eq(listing(data), ['ds', 'ds/train', 'ds/train/dog', 'ds/train/dog/3.txt', 'ds/val', 'ds/val/dog', 'ds/val/dog/4.txt'])
    fct.test_eq((path/'train'/'dog'/'3.txt').read_bytes(), b'woof')

def test_force_with_a_bad_local_archive_keeps_the_old_data(tmp_path):
    data = tmp_path/'data'
    good = make_tgz(tmp_path/'ds.tgz', GOOD)
    path = D.untar_data(good, dest=data)
    (tmp_path/'bad'/'ds.tgz').parent.mkdir()
    bad = tmp_path/'bad'/'ds.tgz'
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(D.BadArchiveError, match=f'^{bad} is not a complete tar archive.*delete it and download it again'):
        D.untar_data(bad, dest=data, force=True)
    fct.test_eq((path/'val'/'cat'/'2.txt').read_bytes(), b'purr')
    fct.test_eq(listing(data), ['ds', 'ds/train', 'ds/train/cat', 'ds/train/cat/1.txt', 'ds/val', 'ds/val/cat', 'ds/val/cat/2.txt'])

# --- downloads end: a stalled server within `timeout`, any download within `deadline` ---

def test_a_dripping_server_is_given_up_within_the_timeout(server, tmp_path):
    "1 byte every 0.2 s of a 2 MB file would take 4 days; with timeout=2 the download ends within a few seconds."
    base, srv, folder = server
    (folder/'big.tgz').write_bytes(os.urandom(2_000_000))
    t0 = time.monotonic()
    with pytest.raises(D.DownloadError, match=f'download of {base}drip/big.tgz stalled: .* in 2 s \\(timeout=2\\); .*larger timeout'):
        D.download_url(base + 'drip/big.tgz', tmp_path/'dl'/'big.tgz', timeout=2, show_progress=False)
    assert time.monotonic() - t0 < 6, time.monotonic() - t0
    fct.test_eq(listing(tmp_path/'dl'), [])
    t0 = time.monotonic()                      # untar_data passes its timeout on
    with pytest.raises(D.DownloadError, match='stalled'):
        D.untar_data(base + 'drip/big.tgz', dest=tmp_path/'data', timeout=1, show_progress=False)
    assert time.monotonic() - t0 < 5, time.monotonic() - t0
    _assert_clean(tmp_path/'data')

def test_a_server_dripping_its_headers_is_given_up_within_the_timeout(server, tmp_path):
    "The headers alone would take 3.5 minutes at this pace: the watchdog ends the wait after `timeout` or `deadline`."
    base, srv, folder = server
    for kw, msg in [(dict(timeout=1), 'did not answer in time: nothing usable within 1 s'),
                    (dict(timeout=30, deadline=1), 'passed its deadline of 1 s')]:
        t0 = time.monotonic()
        with pytest.raises(D.DownloadError, match=msg):
            D.untar_data(base + 'headdrip/ds.tgz', dest=tmp_path/'data', show_progress=False, **kw)
        assert time.monotonic() - t0 < 4, (kw, time.monotonic() - t0)
    _assert_clean(tmp_path/'data')

def test_a_steady_but_slow_download_stops_at_its_deadline(server, tmp_path):
    "40 KiB/s is not a stall, so only `deadline` ends it; the same file downloads fine without one."
    base, srv, folder = server
    archive = make_tgz(folder/'ds.tgz', {**GOOD, 'ds/train/cat/noise.bin': os.urandom(200_000)})
    t0 = time.monotonic()
    with pytest.raises(D.DownloadError, match=f'download of {base}slow/ds.tgz passed its deadline of 1.5 s .*deadline=None'):
        D.untar_data(base + 'slow/ds.tgz', dest=tmp_path/'data', timeout=1, deadline=1.5, show_progress=False)
    assert time.monotonic() - t0 < 4, time.monotonic() - t0
    _assert_clean(tmp_path/'data')
    path = D.untar_data(base + 'slow/ds.tgz', dest=tmp_path/'data', timeout=1, show_progress=False)   # about 5 s
    fct.test_eq((path/'train'/'cat'/'noise.bin').stat().st_size, 200_000)
    fct.test_eq(archive.exists(), True)

def test_a_silent_server_is_given_up_within_the_timeout(tmp_path):
    "A server that accepts the connection and never answers: the socket timeout ends it."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(1)
        t0 = time.monotonic()
        with pytest.raises(D.DownloadError, match=f'^http://127.0.0.1:{s.getsockname()[1]}/x.tgz did not answer in time: nothing usable within 1 s \\(timeout=1\\)'):
            D.untar_data(f'http://127.0.0.1:{s.getsockname()[1]}/x.tgz', dest=tmp_path/'data', timeout=1, show_progress=False)
        assert time.monotonic() - t0 < 4
    _assert_clean(tmp_path/'data')

def test_ctrl_c_during_a_download_keeps_the_old_data(server, tmp_path):
    base, srv, folder = server
    data = tmp_path/'data'
    still_intact = _with_old_copy(base, folder, data)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # a background shell may have set SIGINT to ignored
    try:
        threading.Timer(0.5, _thread.interrupt_main).start()   # what Ctrl-C does, half a second into the download
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            D.untar_data(base + 'drip/ds.tgz', dest=data, force=True, timeout=30, show_progress=False)
        assert time.monotonic() - t0 < 10
    finally: signal.signal(signal.SIGINT, previous)
    still_intact()

def test_bad_timeouts(tmp_path):
    for kw, msg in [(dict(timeout=0), 'timeout must be a positive number of seconds, got 0'),
                    (dict(timeout='5'), "timeout must be a positive number of seconds, got '5'"),
                    (dict(deadline=-1), 'deadline must be a positive number of seconds or None, got -1')]:
        with pytest.raises(ValueError, match=msg): D.untar_data('http://127.0.0.1:1/ds.tgz', dest=tmp_path, **kw)
    _assert_clean(tmp_path)

# --- extraction limits: members, size, ratio ---

@pytest.mark.parametrize('limit,value,members,msg', [
    ('max_members', 50, {f'ds/{i}.txt': b'x' for i in range(51)}, 'has more than 50 members'),
    ('max_size', 10_000, {'ds/a.bin': os.urandom(6_000), 'ds/b.bin': os.urandom(6_000)}, 'expands to more than 10,000 bytes'),
    ('max_ratio', 100, {'ds/zeros.bin': bytes(3_000_000)}, 'expands to more than 100 times its size of'),
])
def test_extraction_limits(server, tmp_path, limit, value, members, msg):
    base, srv, folder = server
    (folder/'ds.tgz').write_bytes(_tgz_bytes(members))
    data = tmp_path/'data'
    with pytest.raises(D.BadArchiveError) as e:
        D.untar_data(base + 'ds.tgz', dest=data, show_progress=False, **{limit: value})
    message = str(e.value)
    assert message.startswith(f'refusing to extract {base}ds.tgz: it {msg}'), message
    assert f'(limit {limit}={value:,}); if you trust the archive, pass a larger {limit} to untar_data' in message, message
    _assert_no_temp_name(message)
    _assert_clean(data)
    path = D.untar_data(base + 'ds.tgz', dest=data, show_progress=False, **{limit: value * 100})   # raised: it extracts
    fct.test_eq(len(list(path.iterdir())), len(members))

def test_a_many_member_bomb_stops_early(tmp_path):
    "20,000 empty files against max_members=1,000: refused before the 1,001st is written, nothing left."
    bomb = tmp_path/'bomb.tgz'
    with tarfile.open(bomb, 'w:gz') as tf:
        for i in range(20_000): tf.addfile(tarfile.TarInfo(f'bomb/{i}.txt'), io.BytesIO(b''))
    with pytest.raises(D.BadArchiveError, match=f'^refusing to extract {bomb}: it has more than 1,000 members'):
        D.untar_data(bomb, dest=tmp_path/'data', max_members=1_000)
    _assert_clean(tmp_path/'data')

def test_bad_limits(tmp_path):
    good = make_tgz(tmp_path/'ds.tgz', GOOD)
    for kw, msg in [(dict(max_members=-1), 'max_members must be a non-negative number, got -1'),
                    (dict(max_size='1GB'), "max_size must be a non-negative number, got '1GB'"),
                    (dict(max_ratio=0), 'max_ratio must be a positive number, got 0')]:
        with pytest.raises(ValueError, match=msg): D.untar_data(good, dest=tmp_path/'data', **kw)
    _assert_clean(tmp_path/'data')

IMAGENETTE = ROOT.parent/'shared'/'data'/'imagenette2-224sq.tgz'

@pytest.mark.slow
@pytest.mark.skipif(not IMAGENETTE.exists(), reason=f'needs the shared Imagenette copy {IMAGENETTE}')
def test_the_full_imagenette_passes_the_default_limits(tmp_path):
    path = D.untar_data(IMAGENETTE, dest=tmp_path)
    fct.test_eq(len(list((path/'train').glob('*/*.JPEG'))), 9469)
    fct.test_eq(len(list((path/'val').glob('*/*.JPEG'))), 3925)
    fct.test_eq([p.name for p in tmp_path.iterdir()], ['imagenette2-224sq'])

def test_temp_files_of_a_killed_process_are_removed_by_the_next_call(server, tmp_path):
    "SIGKILL in the middle of a download leaves temp files no code can remove then; the next untar_data removes them."
    base, srv, folder = server
    (folder/'ds.tgz').write_bytes(_tgz_bytes(GOOD))
    data = tmp_path/'data'
    code = f"from learnerlab import data as D; D.untar_data({base + 'drip/ds.tgz'!r}, dest={str(data)!r}, show_progress=False)"
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    proc = subprocess.Popen([sys.executable, '-c', code], env=env)
    try:
        give_up = time.monotonic() + 120
        while not any(n.endswith('.part') for n in listing(data) if data.exists()) and time.monotonic() < give_up:
            assert proc.poll() is None, 'the download ended before it could be killed'
            time.sleep(0.1)
    finally: proc.kill(); proc.wait()
    left = listing(data)
    assert any(n.endswith('.download') for n in left) and any(n.endswith('.part') for n in left), left
    path = D.untar_data(base + 'ds.tgz', dest=data, show_progress=False)
    fct.test_eq(listing(data), ['ds', 'ds/train', 'ds/train/cat', 'ds/train/cat/1.txt', 'ds/val', 'ds/val/cat', 'ds/val/cat/2.txt'])
    fct.test_eq((path/'train'/'cat'/'1.txt').read_bytes(), b'meow')

@pytest.fixture
def https_server(tmp_path):
    "A loopback HTTPS server (self-signed certificate for 127.0.0.1) on tmp_path/'srv'; yields (base url, folder, cert)."
    import shutil, ssl
    if shutil.which('openssl') is None: pytest.skip('needs openssl to make a certificate')
    folder, cert, key = tmp_path/'srv', tmp_path/'cert.pem', tmp_path/'key.pem'
    folder.mkdir()
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', str(key), '-out', str(cert),
                    '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
                   check=True, capture_output=True)
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Handler, directory=str(folder)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.requests = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'https://127.0.0.1:{srv.server_address[1]}/', folder, cert
    srv.shutdown(); srv.server_close()

def test_https_checks_the_certificate_and_downloads_once_trusted(https_server, tmp_path, monkeypatch):
    base, folder, cert = https_server
    make_tgz(folder/'ds.tgz', GOOD)
    with pytest.raises(D.DownloadError, match=f'could not download {base}ds.tgz: .*CERTIFICATE_VERIFY_FAILED'):
        D.untar_data(base + 'ds.tgz', dest=tmp_path/'data', show_progress=False)    # an unknown certificate is refused
    _assert_clean(tmp_path/'data')
    monkeypatch.setenv('SSL_CERT_FILE', str(cert))                                   # trusted: the download works
    path = D.untar_data(base + 'ds.tgz', dest=tmp_path/'data', show_progress=False)
    fct.test_eq((path/'train'/'cat'/'1.txt').read_bytes(), b'meow')
    t0 = time.monotonic()                                                            # and the watchdog holds over TLS too
    with pytest.raises(D.DownloadError, match='did not answer in time'):
        D.untar_data(base + 'headdrip/ds.tgz', dest=tmp_path/'other', timeout=1, show_progress=False)
    assert time.monotonic() - t0 < 4
