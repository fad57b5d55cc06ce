"""The last pass over the built site, so that it works offline and its links hold.

- Math: smalldocs loads KaTeX from a CDN; the build installs the npm package `katex` (pinned) into
  build/katex and serves it from `site_libs/katex`.
- Fonts: the Bootswatch theme imports its web font from the internet; the import is removed, so the
  theme's own fallback (the system's sans-serif fonts) is used.
- Links: nbdev writes cross-references as absolute URLs of the published site (`doc_host` +
  `doc_baseurl`); they become relative, so the offline build and any mirror stay on their own pages.
  A link to an anchor the target page does not have goes to the entry named by its last part
  (`#learner.added_cbs` -> `#added_cbs`) when there is one, and is otherwise removed (with a warning).
"""
import re, shutil, subprocess
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
KATEX_VERSION = '0.16.11'
KATEX_CDN = re.compile(r'https://cdn\.jsdelivr\.net/npm/katex@[\d.]+/dist')
FONT_IMPORT = re.compile(r'@import\s+url\(\s*["\']?https?://[^)]*\)\s*;?')
ANCHOR = re.compile(r'<a\b([^>]*)>(.*?)</a>', re.S)
HREF = re.compile(r'\bhref="([^"]*)"')

def katex_dist(prefix=ROOT/'build'/'katex'):
    "The `dist` folder of the npm package katex, installed into `prefix` by npm on first use."
    dist = prefix/'node_modules'/'katex'/'dist'
    if not (dist/'katex.min.js').exists():
        npm = shutil.which('npm')
        if npm is None: raise SystemExit('the docs need npm (Debian package `npm`) to install KaTeX for the math on the pages')
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, 'install', '--no-save', '--no-audit', '--no-fund', '--prefix', str(prefix), f'katex@{KATEX_VERSION}'],
                       check=True, capture_output=True, text=True)
    return dist

def ship_katex(docs):
    "Copy KaTeX's script, styles and fonts into `site_libs/katex` and point the pages at them."
    dist = katex_dist()
    dest = docs/'site_libs'/'katex'
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ('katex.min.css', 'katex.min.js'): shutil.copy2(dist/name, dest/name)
    shutil.copytree(dist/'fonts', dest/'fonts')
    (dest/'contrib').mkdir()
    shutil.copy2(dist/'contrib'/'auto-render.min.js', dest/'contrib'/'auto-render.min.js')

def drop_font_imports(docs):
    "Remove `@import url(https://...)` (web fonts) from the site's style sheets."
    for css in docs.rglob('*.css'):
        text = css.read_text()
        if FONT_IMPORT.search(text): css.write_text(FONT_IMPORT.sub('', text))

def site_url():
    "The published site's URL from nbdev's settings (`doc_host` + `doc_baseurl`), ending in `/`."
    from nbdev.config import get_config
    cfg = get_config()
    return f"{cfg.doc_host.rstrip('/')}/{cfg.doc_baseurl.strip('/')}/".replace(':///', '://').rstrip('/') + '/'

def page_ids(page): return set(re.findall(r'(?<![\w-])id="([^"]+)"', page.read_text()))

class LinkFixer:
    "Makes a page's links to the published site relative and checks (and mends) their anchors."
    def __init__(self, docs, url):
        self.docs, self.url, self.warnings, self._ids = docs, url, [], {}
        self.absolute = re.compile(re.escape(url).replace('https', 'https?', 1) + r'?')

    def ids(self, target):
        if target not in self._ids: self._ids[target] = page_ids(target) if target.exists() else None
        return self._ids[target]

    def relative(self, href, page):
        "`href` relative to `page` when it points into the published site, else unchanged."
        if not self.absolute.match(href): return href
        rest = self.absolute.sub('', href, count=1)
        up = '../' * (len(page.relative_to(self.docs).parts) - 1)
        return up + (rest or 'index.html')

    def mend(self, href, page):
        "A working form of the site-internal link `href` on `page`, or None when there is none."
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or href.startswith(('mailto:', 'javascript:')): return href
        target = (page.parent/parts.path).resolve() if parts.path else page
        if target.is_dir(): target = target/'index.html'
        ids = self.ids(target)
        if ids is None: return None
        if not parts.fragment or parts.fragment in ids: return href
        short = parts.fragment.rsplit('.', 1)[-1]
        return href.replace('#' + parts.fragment, '#' + short) if short in ids else None

    def fix_page(self, page):
        html = page.read_text()
        def fix(m):
            attrs, inner = m.group(1), m.group(2)
            found = HREF.search(attrs)
            if not found: return m.group(0)
            href = self.relative(found.group(1), page)
            mended = self.mend(href, page)
            if mended is None:
                self.warnings.append(f'{page.name}: removed link to {found.group(1)} (no such page or anchor)')
                return inner
            return f'<a{attrs[:found.start(1)]}{mended}{attrs[found.end(1):]}>{inner}</a>'
        fixed = ANCHOR.sub(fix, html)
        if fixed != html: page.write_text(fixed)

def fix_links(docs, url=None):
    "Make every page's links to the published site relative and mend broken anchors; return the warnings."
    fixer = LinkFixer(docs, url or site_url())
    pages = sorted(docs.rglob('*.html'))
    for page in pages:  # first make all links relative, so anchors are checked against the pages as they end up
        html = page.read_text()
        rel = HREF.sub(lambda m: f'href="{fixer.relative(m.group(1), page)}"', html)
        if rel != html: page.write_text(rel)
    for page in pages: fixer.fix_page(page)
    return fixer.warnings

def use_local_katex(docs):
    "Point every page that loads KaTeX from the CDN at the copy in `site_libs/katex`."
    for page in docs.rglob('*.html'):
        html = page.read_text()
        if not KATEX_CDN.search(html): continue
        up = '../' * (len(page.relative_to(docs).parts) - 1)
        page.write_text(KATEX_CDN.sub(f'{up}site_libs/katex', html))

def remote_resources(docs):
    "The scripts, style sheets and images a page would fetch from another host, as (page, url)."
    pat = re.compile(r'<(?:script|img|iframe)\b[^>]*\bsrc="(https?://[^"]+)"|<link\b[^>]*\bhref="(https?://[^"]+)"[^>]*>')
    found = []
    for page in docs.rglob('*.html'):
        for m in pat.finditer(page.read_text()):
            tag = m.group(0)
            if m.group(2) and not re.search(r'rel="(stylesheet|icon|preload|modulepreload)"', tag): continue
            found.append((page.name, m.group(1) or m.group(2)))
    return found

def finish_site(docs):
    "Make the built site in `docs` self-contained (math, fonts) with relative links; return warnings."
    ship_katex(docs)
    use_local_katex(docs)
    drop_font_imports(docs)
    warnings = fix_links(docs)
    return warnings + [f'{page} loads {url} from the internet' for page, url in remote_resources(docs)]
