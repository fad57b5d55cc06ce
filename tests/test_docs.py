"""The documentation site, built from the notebooks, rendered in a real headless Chromium."""
import functools, http.server, re, shutil, subprocess, sys, tempfile, threading, base64, io
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
                '--disable-component-update', '--disable-sync', '--no-first-run', '--hide-scrollbars']
API_PAGE_GLOB = '*optimizer.html'   # one API page: nbs/01_optimizer.ipynb

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='needs Chromium (Debian package `chromium`; .ci/run installs it)')

def executed_copies_current():
    "True when scripts/test.sh left executed copies of exactly the notebooks in nbs/."
    names = lambda d: sorted(p.name for p in d.glob('*.ipynb'))
    executed = ROOT/'nbs_executed'
    return executed.exists() and names(executed) == names(ROOT/'nbs')

class _Recorder(http.server.SimpleHTTPRequestHandler):
    "Serves the site and records every request with its status code."
    def log_request(self, code='-', size='-'): self.server.requests.append((self.path.split('?')[0], int(code)))
    def log_message(self, *args): pass

@pytest.fixture(scope='module')
def site():
    "Build the site (from executed notebooks when the test script left them) and serve it on 127.0.0.1."
    # a separate process, as a contributor runs it: building the pages executes the notebooks' definitions,
    # which must not replace the classes and patched methods the other tests in this process use
    cmd = [sys.executable, str(ROOT/'scripts'/'docs.py'), 'site']
    if executed_copies_current(): cmd += ['--executed', str(ROOT/'nbs_executed')]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"docs build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    docs_dir = ROOT/'_docs'
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Recorder, directory=str(docs_dir)))
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_address[1]}', server, docs_dir
    server.shutdown()

def chromium(*args):
    "Run headless Chromium with a throw-away profile and return its stdout."
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run([CHROMIUM, *CHROME_FLAGS, f'--user-data-dir={profile}', *args],
                             capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout

def visible_text(dom): return re.sub(r'<[^>]+>', ' ', re.sub(r'<(script|style)\b.*?</\1>', ' ', dom, flags=re.S))

def assert_images_load(dom, server, docs_dir):
    "Every <img> is either a decodable data URI or a file Chromium fetched with status 200 and that decodes."
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', dom)
    for src in srcs:
        if src.startswith('data:image/svg'): continue
        if src.startswith('data:'):
            Image.open(io.BytesIO(base64.b64decode(src.split(',', 1)[1]))).verify()
            continue
        path = '/' + src.lstrip('/') if not src.startswith('http') else re.sub(r'^https?://[^/]+', '', src)
        fetched = [code for p, code in server.requests if p.endswith(path.lstrip('./').lstrip('/'))]
        assert fetched and all(c == 200 for c in fetched), f'image {src} was not served: {fetched}'
        Image.open(docs_dir/path.lstrip('/')).verify()
    return len(srcs)

def assert_page_renders(url, server, docs_dir, tmp_path, must_contain):
    dom = chromium('--dump-dom', '--virtual-time-budget=5000', url)
    text = visible_text(dom)
    assert '<title>' in dom and 'learnerlab' in re.search(r'<title>(.*?)</title>', dom, re.S).group(1)
    for needle in must_contain: assert needle in text, f'{needle!r} not on {url}'
    assert 'Traceback (most recent call last)' not in text and not re.search(r'\w+Error: ', text), 'Python error shown'
    shot = tmp_path/'page.png'
    chromium(f'--screenshot={shot}', '--window-size=1280,1600', url)
    img = Image.open(shot).convert('L')
    lo, hi = img.getextrema()
    assert hi - lo > 100, 'screenshot is blank'
    return dom

def test_index_page_renders(site, tmp_path):
    base, server, docs_dir = site
    dom = assert_page_renders(f'{base}/index.html', server, docs_dir, tmp_path, ['learnerlab', 'pip install'])
    assert_images_load(dom, server, docs_dir)
    assert 'sidebar' in dom and 'search' in dom.lower()

def test_api_page_renders(site, tmp_path):
    base, server, docs_dir = site
    pages = sorted(docs_dir.glob(API_PAGE_GLOB))
    assert pages, f'no optimizer page in the site: {sorted(p.name for p in docs_dir.glob("*.html"))}'
    dom = assert_page_renders(f'{base}/{pages[0].name}', server, docs_dir, tmp_path, ['Optimizer', 'set_hyper'])
    assert re.search(r'<h[2-4][^>]*>\s*(<[^>]+>\s*)*Optimizer', dom), 'no API heading for Optimizer'
    api_headings = re.findall(r'<h3[^>]*>\s*(Optimizer\.\w+)', dom)
    assert 'Optimizer.set_hyper' in api_headings
    assert len(api_headings) == len(set(api_headings)), f'API entries shown twice: {sorted(api_headings)}'
    n_images = assert_images_load(dom, server, docs_dir)
    if executed_copies_current(): assert n_images > 0, 'executed notebooks but no plot on the optimizer page'
