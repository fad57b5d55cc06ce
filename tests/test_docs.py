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
    "Serves the site, and the test's probe pages under /__probe__/, and records every request with its status code."
    def do_GET(self):
        extra = self.server.extra.get(self.path.split('?')[0])
        if extra is None: return super().do_GET()
        body = extra.encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/html; charset=utf-8')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_request(self, code='-', size='-'): self.server.requests.append((self.path.split('?')[0], int(code)))
    def log_message(self, *args): pass

class _RemoteTrap(http.server.BaseHTTPRequestHandler):
    "A proxy that Chromium sends every non-local request to: it records the request and refuses it (nothing leaves)."
    def _refuse(self):
        self.server.requests.append(self.requestline)
        self.send_error(403, 'offline test')
    do_CONNECT = do_GET = do_POST = do_HEAD = _refuse
    def log_message(self, *args): pass

def serve(handler, **attrs):
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    for k, v in attrs.items(): setattr(server, k, v)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

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
    server = serve(functools.partial(_Recorder, directory=str(docs_dir)), requests=[], extra={})
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

# ---------------------------------------------------------------- links, page names, math, search, offline

def site_url():
    "The published site's URL, as nbdev derives it (`project.urls.Documentation` in pyproject.toml), ending in `/`."
    from nbdev.config import get_config
    cfg = get_config(ROOT)
    return cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/') + '/'

def links(html):
    "The `href` of every <a> in `html` (entities for & decoded)."
    return [h.replace('&amp;', '&') for h in re.findall(r'<a\b[^>]*\bhref="([^"]*)"', html)]

def crawl(base):
    """Follow every link from the index page that stays on the served site; return the pages reached and
    the problems found: links to missing pages or anchors, and links to the published site (off-site)."""
    from urllib.parse import urljoin, urldefrag
    from urllib.request import urlopen
    from urllib.error import HTTPError
    pages, todo, problems, own = {}, [f'{base}/index.html'], [], site_url()
    def fetch(url):
        if url not in pages:
            try:
                with urlopen(url, timeout=30) as r: pages[url] = r.read().decode('utf-8', 'replace')
            except HTTPError as e: pages[url] = None
            if pages[url] is not None and url.endswith('.html'): todo.append(url)
        return pages[url]
    fetch(todo[0])
    checked = set()
    while todo:
        page = todo.pop()
        for href in links(pages[page]):
            if href.startswith(own.rstrip('/')) or href.startswith(own.replace('https://', 'http://').rstrip('/')):
                problems.append(f'{page}: link to the published site {href}'); continue
            url = urljoin(page, href)
            if not url.startswith(base) or (page, href) in checked: continue
            checked.add((page, href))
            target, frag = urldefrag(url)
            html = fetch(target)
            if html is None: problems.append(f'{page}: broken link {href}')
            elif frag and target.endswith('.html') and not re.search(rf'(?<![\w-])id="{re.escape(frag)}"', html):
                problems.append(f'{page}: link {href} to a missing anchor')
    return {u for u, h in pages.items() if h is not None and u.endswith('.html')}, problems

def test_pages_have_nbdev_names(site):
    "Each notebook is built as the page nbdev names (`04_learner.ipynb` -> `learner.html`), so its cross-references resolve."
    from nbdev.config import nbpath2html
    _, _, docs_dir = site
    built = {p.name for p in docs_dir.glob('*.html')}
    expected = {nbpath2html(nb).name for nb in (ROOT/'nbs').glob('*.ipynb')}
    assert expected <= built, f'pages nbdev would make but the build lacks: {sorted(expected - built)}'
    import learnerlab._modidx as modidx
    linked_pages = {page.split('#')[0] for syms in modidx.d['syms'].values() for page, _ in syms.values()}
    assert linked_pages <= built, f'learnerlab/_modidx.py links to pages the build lacks: {sorted(linked_pages - built)}'

def test_crawl_finds_no_broken_or_off_site_links(site):
    base, _, docs_dir = site
    reached, problems = crawl(base)
    assert not problems, f'{len(problems)} link problems, e.g.:\n' + '\n'.join(problems[:20])
    unreached = {p.name for p in docs_dir.glob('*.html')} - {u.rsplit('/', 1)[-1] for u in reached}
    assert not unreached, f'pages no link leads to: {sorted(unreached)}'

def test_no_links_to_private_names(site):
    _, _, docs_dir = site
    private = [(p.name, h) for p in docs_dir.glob('*.html') for h in links(p.read_text()) if re.search(r'#_[a-z]', h)]
    assert not private, f'links to private helpers: {private[:10]}'

def test_notebook_mentions_are_links(site):
    "A notebook named in prose as a code span (`03_callback`, `04_learner.ipynb`) is a link to its page."
    _, _, docs_dir = site
    stems = '|'.join(re.escape(nb.stem) for nb in (ROOT/'nbs').glob('*.ipynb'))
    unlinked = []
    for page in docs_dir.glob('*.html'):
        html = re.sub(r'<pre\b.*?</pre>', '', page.read_text(), flags=re.S)   # code blocks may name files freely
        for m in re.finditer(rf'(<a\b[^>]*>)?<code>((?:nbs/)?(?:{stems})(?:\.ipynb)?)</code>', html):
            if not m.group(1): unlinked.append((page.name, m.group(2)))
    assert not unlinked, f'notebook names in prose that are not links: {unlinked[:10]}'

PROBE = '''<!doctype html><html><body><pre id="out">pending</pre><script>
const pages = %s, results = {}; let left = pages.length;
const done = () => { if (--left === 0) document.getElementById('out').textContent = JSON.stringify(results); };
%s
pages.forEach((p) => {
  const f = document.createElement('iframe');
  f.width = 1280; f.height = 900;
  f.onload = () => setTimeout(() => { try { probe(p, f.contentDocument, f.contentWindow, done); } catch (e) { results[p] = {error: String(e)}; done(); } }, 1500);
  f.src = p; document.body.appendChild(f);
});
</script></body></html>'''

def run_probe(base, server, pages, js, extra_flags=()):
    "Load `pages` in iframes of one headless Chromium page and return what `js`'s `probe` function put in `results`."
    import json
    server.extra['/__probe__/probe.html'] = PROBE % (json.dumps([f'/{p}' for p in pages]), js)
    dom = chromium('--dump-dom', '--virtual-time-budget=30000', *extra_flags, f'{base}/__probe__/probe.html')
    m = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert m and m.group(1) != 'pending', f'probe did not finish: {dom[-1500:]}'
    import html as html_lib
    return json.loads(html_lib.unescape(m.group(1)))

MATH_PROBE = '''function probe(p, d, w, done) {
  const maths = [...d.querySelectorAll('.math')];
  results[p] = {math: maths.length, katex: d.querySelectorAll('.math .katex').length,
                raw: maths.filter((m) => /\\\\[(\\[]/.test(m.textContent) && !m.querySelector('.katex')).map((m) => m.textContent)};
  done();
}'''

def test_math_renders_offline(site):
    "Every formula is typeset by KaTeX served from the build: `.katex` elements, no raw `\\(` left."
    base, server, docs_dir = site
    math_pages = [p.name for p in sorted(docs_dir.glob('*.html')) if 'class="math' in p.read_text()]
    assert math_pages, 'no page has math: the test needs one (e.g. the Recorder beta)'
    assert not any('cdn.jsdelivr' in (docs_dir/p).read_text() for p in math_pages), 'KaTeX comes from a CDN'
    found = run_probe(base, server, math_pages, MATH_PROBE)
    for page, r in found.items():
        assert 'error' not in r, r
        assert r['math'] > 0 and r['katex'] == r['math'] and not r['raw'], f'{page}: math not rendered: {r}'

CONTRAST_PROBE = '''
const rgba = (s) => { const v = s.match(/[\\d.]+/g).map(Number); return v.length === 3 ? [...v, 1] : v; };
const over = (top, bottom) => top.slice(0, 3).map((c, i) => c * top[3] + bottom[i] * (1 - top[3])).concat([1]);
const lum = (c) => { const [r, g, b] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
function background(el, w) {
  const layers = [];
  for (let e = el; e; e = e.parentElement) layers.push(rgba(w.getComputedStyle(e).backgroundColor));
  return layers.reverse().reduce((acc, l) => over(l, acc), [255, 255, 255, 1]);
}
function probe(p, d, w, done) {
  const input = d.querySelector('.smalldocs-search input');
  input.focus(); input.value = 'Learner'; input.dispatchEvent(new w.Event('input', {bubbles: true}));
  const check = (tries) => {
    const els = [...d.querySelectorAll('.search-result-title, .search-result-section, .search-result-text')];
    if (!els.length && tries > 0) { setTimeout(() => check(tries - 1), 200); return; }
    results[p] = {n: els.length, ratios: els.slice(0, 12).map((el) => {
      const bg = background(el, w), fg = over(rgba(w.getComputedStyle(el).color), bg);
      const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
      return [el.className, Math.round(100 * (a + 0.05) / (b + 0.05)) / 100];
    })};
    done();
  };
  check(25);
}'''

def test_search_results_are_readable(site):
    "The search box finds entries and shows them with a WCAG contrast ratio of at least 4.5 (computed in Chromium)."
    base, server, _ = site
    found = run_probe(base, server, ['index.html'], CONTRAST_PROBE)['/index.html']
    assert found.get('n', 0) >= 3, f'search showed no results: {found}'
    low = [(cls, ratio) for cls, ratio in found['ratios'] if ratio < 4.5]
    assert not low, f'search result text below contrast 4.5: {low}'

RESOURCE_PROBE = """function probe(p, d, w, done) {
  results[p] = w.performance.getEntriesByType('resource').map((e) => e.name).filter((u) => !u.startsWith(w.location.origin));
  done();
}"""
CANARY = 'https://remote-canary.invalid/style.css'

def test_pages_fetch_nothing_from_the_internet(site):
    """Every page loads all its assets (fonts, math, scripts) from the build: the resources each page fetched,
    as Chromium's resource timing lists them, are all local. A proxy refuses any remote request, so nothing leaves,
    and a canary page that does load a remote style sheet shows that such a fetch would be seen."""
    base, server, docs_dir = site
    trap = serve(_RemoteTrap, requests=[])
    server.extra['/__probe__/canary.html'] = f'<!doctype html><link rel="stylesheet" href="{CANARY}"><p>canary</p>'
    pages = sorted(p.name for p in docs_dir.glob('*.html')) + ['__probe__/canary.html']
    try: found = run_probe(base, server, pages, RESOURCE_PROBE, [f'--proxy-server=http://127.0.0.1:{trap.server_address[1]}'])
    finally: trap.shutdown()
    assert found.pop('/__probe__/canary.html') == [CANARY], 'the probe does not see remote fetches: the test is blind'
    remote = {page: urls for page, urls in found.items() if urls}
    assert len(found) == len(pages) - 1 and not remote, f'pages fetched from the internet: {remote}'

# ---------------------------------------------------------------- what the pages show

def page_text(docs_dir, name): return visible_text((docs_dir/name).read_text())

def signatures(docs_dir):
    "(page, code) of every API signature block the pages show (the code blocks that start with `def` or `class`)."
    import html as html_lib
    for page in sorted(docs_dir.glob('*.html')):
        for block in re.findall(r'<pre\b[^>]*>(.*?)</pre>', page.read_text(), re.S):
            code = html_lib.unescape(re.sub(r'<[^>]+>', '', block)).strip()
            if re.match(r'(async def|def|class) \w+\(', code): yield page.name, code

def test_signatures_are_clean(site):
    "No inferred `NoneType`/`function` annotations, no `<... at 0x...>` reprs, no `(...)`; a class reads `class Name(`."
    _, _, docs_dir = site
    sigs = list(signatures(docs_dir))
    assert len(sigs) > 50, f'too few API signatures found: {len(sigs)}'
    noisy = [(p, c) for p, c in sigs if re.search(r':NoneType\b|:function\b|:type=| at 0x[0-9a-f]+|\(\.\.\.\)', c)]
    assert not noisy, f'{len(noisy)} noisy signatures, e.g. {noisy[:3]}'
    learner = [c for p, c in sigs if re.match(r'(def|class) Learner\(', c)]
    assert learner and all(c.startswith('class Learner(') for c in learner), learner

def test_parameter_comments_render_as_tables(site):
    "A function whose parameters carry docments comments shows a table of them (the widgets notebook has them)."
    _, _, docs_dir = site
    html = (docs_dir/'widgets.html').read_text()
    entry = re.search(r'id="optimize_path".*?(<table.*?</table>)', html, re.S)
    assert entry, 'no parameter table after optimize_path'
    cells = visible_text(entry.group(1))
    for needle in ('opt_func', 'an optimizer factory', 'steps', '50', 'hyper-parameters for'): assert needle in cells, needle

def output_texts(html):
    "The text of each cell output a page shows as preformatted text (what a cell printed or returned)."
    import html as html_lib
    return [html_lib.unescape(re.sub(r'<[^>]+>', '', t)) for t in
            re.findall(r'<div class="cell-output[^"]*"[^>]*>\s*<pre\b[^>]*>(.*?)</pre>', html, re.S)]

def test_outputs_have_no_artefacts(site):
    "No matplotlib return-value reprs next to plots, no progress-bar frames, no local folders in what cells printed."
    _, _, docs_dir = site
    import tempfile
    folders = {str(ROOT), str(Path.home()) + '/', tempfile.gettempdir() + '/'}
    n_outputs = 0
    for page in sorted(docs_dir.glob('*.html')):
        for text in output_texts(page.read_text()):
            n_outputs += 1
            assert not re.search(r'array\(\[<Axes|<matplotlib\.[\w.]+ (object )?at 0x|<Figure size', text), f'{page.name}: plot repr {text[:200]}'
            assert not re.search(r'Epoch \d+/\d+ :', text), f'{page.name}: progress-bar residue {text[:200]}'
            shown = [f for f in folders if f in text]
            assert not shown, f'{page.name}: shows the local folder {shown} in {text[:200]}'
    if executed_copies_current(): assert n_outputs > 20, f'only {n_outputs} text outputs on the pages'
