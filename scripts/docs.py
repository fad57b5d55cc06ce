"""Build the documentation site and README.md from the notebooks, offline (no Quarto needed).

    python scripts/docs.py site [--executed DIR]   # -> _docs/ (HTML site with sidebar and search)
    python scripts/docs.py readme [--check]        # -> README.md from nbs/index.ipynb

The site is nbdev's own processing of the notebooks (`nbdev.serve.proc_nbs`, which turns `show_doc`
cells into API documentation) rendered by `smalldocs`, a pure-Python renderer of `_quarto.yml`
projects. Notebooks are stored without outputs; pass `--executed DIR` to render copies that were run
(the test script leaves them in `nbs_executed/`), so plots and tables appear on the pages.
Anyone with Quarto installed can use `nbdev-docs` instead: `nbs/_quarto.yml` is nbdev's standard one,
and the pages get the same names here as there.

The steps: stage the notebooks; tidy their outputs (progress bars reduced to their last state, plot
return-value reprs next to a figure dropped, local folders shortened) and link notebook names in
prose; run nbdev's processors with a cleaner `show_doc` renderer (scripts/docs_showdoc.py) and links
to public names only; name the pages as nbdev does (`04_learner.ipynb` -> `learner.html`); render
with smalldocs; then make the site self-contained (scripts/docs_html.py: KaTeX from npm, no web
fonts, cross-references relative, anchors checked).
"""
import argparse, ast, json, re, shutil, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, STAGE, PROC, DOCS = ROOT/'nbs', ROOT/'build'/'docs_src', ROOT/'_proc', ROOT/'_docs'
SITE_FILES = ('*.yml', '*.css', '*.png')

def stage_notebooks(src):
    "Copy the notebooks in `src`, and the site configuration in nbs/, into a fresh staging folder."
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    for pattern in SITE_FILES:
        for f in NBS.glob(pattern): shutil.copy2(f, STAGE/f.name)
    for f in Path(src).glob('*.ipynb'): shutil.copy2(f, STAGE/f.name)
    return STAGE

EXPORT_DIRECTIVES = ('export', 'exports', 'exporti', 'exec_doc')

def _split_imports(cell):
    """nbdev's doc processor re-runs, in a fresh kernel, each cell with an import in it, but none of the
    others, so a test cell like `import io; torch.save(sd, buf)` fails there. Return the cell as an
    import-only cell plus the rest of its code, marked `eval: false` (its stored outputs still show)."""
    src = ''.join(cell['source'])
    lines = src.split('\n')
    directives = [l for l in lines if l.startswith('#|')]
    if any(d[2:].strip().split(':')[0].split(' ')[0] in EXPORT_DIRECTIVES for d in directives) or 'show_doc' in src:
        return [cell]
    try: tree = ast.parse(src)
    except SyntaxError: return [cell]
    is_import = lambda n: isinstance(n, (ast.Import, ast.ImportFrom))
    if not any(is_import(n) for n in ast.walk(tree)) or all(is_import(n) for n in tree.body): return [cell]
    import_lines = set()
    for node in tree.body:
        if is_import(node): import_lines.update(range(node.lineno - 1, node.end_lineno))
    imports = [l for i, l in enumerate(lines) if i in import_lines]
    rest = ['#| eval: false'] + [l for i, l in enumerate(lines) if i not in import_lines]
    new = [{**cell, 'source': '\n'.join(imports), 'outputs': [], 'execution_count': None}] if imports else []
    return new + [{**cell, 'source': '\n'.join(rest)}]

def terminal_text(text):
    """What a terminal would show for `text`: each carriage return overwrites its line, so a console
    progress bar (drawn by redrawing one line) leaves only its last state, and blank lines go. A bar that
    was cleared (its label and spaces written over it, as when `lr_find` stops early) leaves nothing."""
    lines = []
    for line in text.split('\n'):
        shown = [seg.rstrip() for seg in line.split('\r') if seg.strip()]
        if not shown or shown[-1].strip() == '\u2588': continue
        if len(shown) > 1 and shown[-2].startswith(shown[-1]) and shown[-2] != shown[-1]: continue   # a cleared bar
        lines.append(shown[-1])
    return '\n'.join(lines) + ('\n' if lines else '')

_PLOT_RETURN_REPR = re.compile(r'<(?:Axes|Figure|matplotlib\.[\w.]+)\b|^Text\(|^\[<matplotlib\.')

def is_plot_return_repr(out):
    """True for the text-only `repr` of what a plotting call returned (`array([<Axes: ...>], dtype=object)`,
    `[<matplotlib.lines.Line2D at 0x...>]`): noise next to the figure itself."""
    data = out.get('data', {})
    if out.get('output_type') != 'execute_result' or set(data) - {'text/plain'}: return False
    return bool(_PLOT_RETURN_REPR.search(''.join(data.get('text/plain', ''))))

def drop_plot_reprs(cell):
    "Drop the plotting return-value reprs of a cell that also shows an image."
    outs = cell.get('outputs', [])
    if any(k.startswith('image/') for o in outs for k in o.get('data', {})):
        cell['outputs'] = [o for o in outs if not is_plot_return_repr(o)]

def drop_local_paths(text):
    "This machine's folders out of output text: the checkout's paths become relative, temporary folders `…`, home `~`."
    text = re.sub(re.escape(str(ROOT)) + r'(/|\b)', lambda m: '' if m.group(1) else '.', text)
    text = re.sub(re.escape(tempfile.gettempdir().rstrip('/')) + r'/[^/\s\'"]+', '…', text)
    return text.replace(str(Path.home()), '~')

def page_name(nb_name):
    "The page nbdev (and Quarto through nbdev's `output-file`) makes of a notebook: `04_learner.ipynb` -> `learner.html`."
    from nbdev.config import nbpath2html
    return nbpath2html(Path(nb_name)).name

def link_notebook_mentions(md, stems):
    """Links in markdown for the notebooks named in code spans (`` `03_callback` ``, `` `nbs/04_learner.ipynb` ``)
    and for hand-written links to numbered pages (`[Learner](04_learner.html)`), to the pages nbdev names."""
    names = '|'.join(re.escape(s) for s in sorted(stems, key=len, reverse=True))
    if not names: return md
    span = re.compile(rf'(?<![\[`])`((?:nbs/)?({names})(?:\.ipynb)?)`(?!\]|`)')
    target = re.compile(rf'\]\(((?:nbs/)?({names})\.(?:html|ipynb))(#[^)\s]*)?\)')
    md = target.sub(lambda m: f'](' + page_name(m.group(2) + '.ipynb') + (m.group(3) or '') + ')', md)
    return span.sub(lambda m: f'[`{m.group(1)}`]({page_name(m.group(2) + ".ipynb")})', md)

def prepare_notebook(nb, stems=()):
    """Split mixed import cells, reduce console progress bars in stream outputs to their last state, drop plot
    return-value reprs and local paths, and link notebook mentions in prose (`stems`: the notebooks' names)."""
    nb['cells'] = [c for cell in nb['cells'] for c in (_split_imports(cell) if cell['cell_type'] == 'code' else [cell])]
    for cell in nb['cells']:
        if cell['cell_type'] == 'markdown': cell['source'] = link_notebook_mentions(''.join(cell['source']), stems)
        if 'outputs' not in cell: continue
        outs = [dict(o, text=drop_local_paths(terminal_text(''.join(o['text'])))) if o.get('output_type') == 'stream' else o
                for o in cell['outputs']]
        for o in outs:
            if 'text/plain' in o.get('data', {}): o['data']['text/plain'] = drop_local_paths(''.join(o['data']['text/plain']))
        cell['outputs'] = [o for o in outs if o.get('output_type') != 'stream' or o['text']]
        drop_plot_reprs(cell)
    return nb

def prepare_notebooks(stage):
    "Apply `prepare_notebook` to every staged notebook."
    stems = [p.stem for p in stage.glob('*.ipynb')]
    for nb_path in stage.glob('*.ipynb'):
        nb = prepare_notebook(json.loads(nb_path.read_text()), stems)
        for c in nb['cells']: c.pop('id', None)
        nb_path.write_text(json.dumps(nb))

def skip_shown_patched_methods():
    """nbdev adds a `show_doc` cell after each exported definition that has none, but compares a patched
    method's bare name (`set_hyper`) with the shown names (`Optimizer.set_hyper`), so every `@patch`
    method documented by hand would appear twice. Drop the names that already have a `show_doc` cell."""
    import nbdev.processors as procs
    if getattr(procs._def_names, 'skips_shown', False): return
    original = procs._def_names
    def def_names(cell, shown): return [n for n in original(cell, shown) if n not in shown]
    def_names.skips_shown = True
    procs._def_names = def_names

def is_private(sym): return any(part.startswith('_') and not part.endswith('__') for part in sym.split('.'))

def link_public_names_only():
    """nbdev's `_modidx.py` lists every definition, private helpers too, so a backticked `_param_groups` in
    prose became a link to an entry no page has: link only public names (dunders such as `__call__` stay)."""
    from nbdev.doclinks import NbdevLookup
    if getattr(NbdevLookup.doc, 'public_only', False): return
    original = NbdevLookup.doc
    def doc(self, sym): return None if is_private(sym) else original(self, sym)
    doc.public_only = True
    NbdevLookup.doc = doc

def process_notebooks(stage):
    "Run nbdev's doc processors (show_doc, directives, sidebar) over the staged notebooks."
    from nbdev.quarto import nbdev_sidebar
    from nbdev.serve import proc_nbs
    from nbdev.doclinks import _build_modidx
    from docs_showdoc import use_site_renderer
    _build_modidx()
    skip_shown_patched_methods()
    link_public_names_only()
    use_site_renderer()
    prepare_notebooks(stage)
    nbdev_sidebar.__wrapped__(path=stage, force=True)
    return proc_nbs(str(stage), force=True, n_workers=0)

def link_mentions_in_api_docs(proc):
    "Link notebook names in the markdown the `show_doc` cells produced (docstrings), as `prepare_notebook` does in prose."
    stems = [p.stem for p in proc.glob('*.ipynb')]
    for nb_path in proc.glob('*.ipynb'):
        nb, changed = json.loads(nb_path.read_text()), False
        for out in (o for c in nb['cells'] for o in c.get('outputs', [])):
            md = out.get('data', {}).get('text/markdown')
            if md is None: continue
            linked = link_notebook_mentions(''.join(md), stems)
            if linked != ''.join(md): out['data']['text/markdown'], changed = linked, True
        if changed: nb_path.write_text(json.dumps(nb))

def name_pages_as_nbdev(proc):
    """Rename the processed notebooks to the pages nbdev's `output-file` names (`04_learner.ipynb` ->
    `learner.ipynb`, rendered as `learner.html`, which smalldocs does not read) and the sidebar with them."""
    renames = {p.name: page_name(p.name).removesuffix('.html') + '.ipynb' for p in proc.glob('*.ipynb')}
    clashes = {new for new in renames.values() if list(renames.values()).count(new) > 1}
    if clashes: sys.exit(f'notebooks that nbdev would render to the same page: {sorted(k for k, v in renames.items() if v in clashes)}')
    for old, new in renames.items():
        if old != new: (proc/old).rename(proc/new)
    sidebar = proc/'sidebar.yml'
    sidebar.write_text(re.sub(r'[\w.-]+\.ipynb', lambda m: renames.get(m.group(0), m.group(0)), sidebar.read_text()))
    return renames

def build_site(executed=None):
    "Build the HTML site into _docs/ and return its path."
    from smalldocs.site import build
    from docs_html import finish_site
    proc = process_notebooks(stage_notebooks(Path(executed) if executed else NBS))
    link_mentions_in_api_docs(proc)
    name_pages_as_nbdev(proc)
    site = build(str(proc), quiet=True)
    for w in site.warnings:
        if 'output-file is not read' not in w: print(f'warning: {w}', file=sys.stderr)
    shutil.rmtree(DOCS, ignore_errors=True)
    shutil.move(str(proc/'_docs'), str(DOCS))
    for w in finish_site(DOCS): print(f'warning: {w}', file=sys.stderr)
    return DOCS

def _output_text(out):
    "Plain-text form of one notebook output, or None when it has none (images, widgets)."
    if out.get('output_type') == 'stream': return ''.join(out['text'])
    data = out.get('data', {})
    if 'text/markdown' in data: return None
    if 'text/plain' in data and not any(k.startswith('image/') or 'widget' in k for k in data):
        return ''.join(data['text/plain'])
    return None

def absolute_page_links(md, base_url, stems):
    "`md` with links to the site's pages (`](04_learner.ipynb)`, `](04_learner.html#x)`) made absolute, for README.md."
    def fix(m):
        stem, ext, anchor = m.group(1), m.group(2), m.group(3) or ''
        if stem not in stems: return m.group(0)
        return f'](' + base_url + page_name(stem + '.ipynb') + anchor + ')'
    return re.sub(r'\]\(([\w-]+)\.(ipynb|html)(#[^)\s]*)?\)', fix, md)

def readme_text(nb_path=NBS/'index.ipynb'):
    "Markdown for README.md from the index notebook: prose (page links made absolute), visible code and text outputs."
    from docs_html import site_url
    nb = json.loads(Path(nb_path).read_text())
    stems, base = {p.stem for p in Path(nb_path).parent.glob('*.ipynb')}, site_url()
    parts = ['<!-- WARNING: generated from nbs/index.ipynb by `python scripts/docs.py readme`; edit the notebook. -->']
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        if cell['cell_type'] == 'markdown': parts.append(absolute_page_links(src, base, stems)); continue
        lines = src.split('\n')
        directives = [l for l in lines if l.startswith('#|')]
        if any(d.split()[1:2] in (['hide'], ['export'], ['exporti'], ['default_exp']) for d in directives): continue
        code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
        if code: parts.append(f'```python\n{code}\n```')
        for out in cell.get('outputs', []):
            text = _output_text(out)
            if text: parts.append(f'```\n{text.rstrip()}\n```')
    return '\n\n'.join(parts) + '\n'

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('site', help='build the HTML site into _docs/')
    s.add_argument('--executed', help='folder of executed copies of the notebooks to render instead of nbs/')
    r = sub.add_parser('readme', help='write README.md from nbs/index.ipynb')
    r.add_argument('--check', action='store_true', help='exit 1 if README.md is not current, write nothing')
    args = p.parse_args()
    if args.cmd == 'site': print(f'site built in {build_site(args.executed)}')
    else:
        text, readme = readme_text(), ROOT/'README.md'
        if args.check:
            if not readme.exists() or readme.read_text() != text:
                sys.exit('README.md is out of date with nbs/index.ipynb: run `python scripts/docs.py readme`')
            print('README.md is current')
        else: readme.write_text(text); print(f'wrote {readme}')

if __name__ == '__main__': main()
