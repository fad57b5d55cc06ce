"""The docs builder's pieces (scripts/docs*.py), without building the site: signatures, page names, links, outputs."""
import sys
from pathlib import Path

import fastcore.test as fct
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'scripts'))
from docs_showdoc import default_text, signature_text, param_table   # noqa: E402
from docs import page_name, absolute_page_links, link_notebook_mentions, drop_plot_reprs, terminal_text, drop_local_paths, link_mentions_in_api_docs   # noqa: E402
from docs_html import LinkFixer, drop_font_imports   # noqa: E402

def valley(xs): return xs

class Thing:
    "A class with a constructor."
    def __init__(self, a, b=None, opt=valley): pass

def documented(
    xs,              # the values
    beta:float=0.9,  # kept fraction | of the average
    funcs=(valley,), # functions to call
    **kwargs,        # passed on
)->list:             # the averages
    "A function with a comment per parameter."

def test_default_text_names_functions_and_hides_addresses():
    fct.test_eq(default_text(valley), 'valley')
    fct.test_eq(default_text((valley,)), '(valley,)')
    fct.test_eq(default_text([valley, 1, 'a']), "[valley, 1, 'a']")
    fct.test_eq(default_text(None), 'None')
    fct.test_eq(default_text(Thing), 'Thing')
    assert ' at 0x' not in default_text(object()) and default_text(object()) == 'object()'

def test_signature_text_is_what_the_code_wrote():
    fct.test_eq(signature_text(Thing), 'class Thing(a, b=None, opt=valley):')
    class Stop(KeyboardInterrupt): "An exception: its signature is a builtin's."
    fct.test_eq(signature_text(Stop), 'class Stop(KeyboardInterrupt):')
    fct.test_eq(signature_text(documented), 'def documented(xs, beta:float=0.9, funcs=(valley,), **kwargs)->list:')
    def patched(self: Thing, n, *, flag=False): pass
    fct.test_eq(signature_text(patched, 'patched'), 'def patched(n, *, flag=False):')
    long = signature_text(lambda aaaaaaaaaaaaaaaa=1, bbbbbbbbbbbbbbbbbbbbbbbb=2, cccccccccccccccccccccccccc=3,
                          ddddddddddddddddddddddddddd=4, eeeeeeeeeeeeeeeeeeeeeeeeeeeee=5: 0, 'f')
    assert long.startswith('def f(\n    ') and long.endswith('\n):') and all(len(l) <= 80 for l in long.split('\n'))

def test_param_table_from_docments_comments():
    rows = param_table(documented).split('\n')
    fct.test_eq(rows[0], '| Parameter | Type | Default | Details |')
    fct.test_eq(rows[2], '| `xs` |  |  | the values |')
    fct.test_eq(rows[3], r'| `beta` | `float` | `0.9` | kept fraction \| of the average |')
    fct.test_eq(rows[4], '| `funcs` |  | `(valley,)` | functions to call |')
    fct.test_eq(rows[5], '| `kwargs` |  |  | passed on |')
    fct.test_eq(rows[-1], '| **Returns** | `list` |  | the averages |')
    fct.test_eq(param_table(Thing), '')   # no comments, no table
    def untyped(
        a,      # first
        b=2,    # second
    ): pass
    fct.test_eq(param_table(untyped).split('\n'), ['| Parameter | Default | Details |', '| --- | --- | --- |',
                                                    '| `a` |  | first |', '| `b` | `2` | second |'])

def test_page_names_are_nbdevs():
    fct.test_eq(page_name('04_learner.ipynb'), 'learner.html')
    fct.test_eq(page_name('01a_foo_bar.ipynb'), 'foo_bar.html')
    fct.test_eq(page_name('index.ipynb'), 'index.html')

def test_notebook_mentions_become_links():
    stems = ['03_callback', '04_learner', '04a_learner_extras', 'index']
    md = "see `03_callback`, `nbs/04_learner.ipynb`, [Learner](04_learner.html#learner) and `04a_learner_extras`; `learn` stays"
    fct.test_eq(link_notebook_mentions(md, stems),
                "see [`03_callback`](callback.html), [`nbs/04_learner.ipynb`](learner.html), [Learner](learner.html#learner) "
                "and [`04a_learner_extras`](learner_extras.html); `learn` stays")
    already = '[`03_callback`](callback.html)'
    fct.test_eq(link_notebook_mentions(already, stems), already)

def test_notebook_mentions_in_api_docs_become_links(tmp_path):
    import json
    out = {'output_type': 'execute_result', 'data': {'text/markdown': ['### f\n', '*Built on `03_callback`.*']}}
    (tmp_path/'03_callback.ipynb').write_text(json.dumps({'cells': [{'cell_type': 'code', 'outputs': [out]}]}))
    link_mentions_in_api_docs(tmp_path)
    md = json.loads((tmp_path/'03_callback.ipynb').read_text())['cells'][0]['outputs'][0]['data']['text/markdown']
    fct.test_eq(md, '### f\n*Built on [`03_callback`](callback.html).*')

def test_plot_reprs_dropped_only_next_to_a_figure():
    axes = {'output_type': 'execute_result', 'data': {'text/plain': ["array([<Axes: title={'center': 'lr'}>], dtype=object)"]}}
    figure = {'output_type': 'display_data', 'data': {'image/png': 'iVBOR', 'text/plain': ['<Figure size 640x480 with 1 Axes>']}}
    number = {'output_type': 'execute_result', 'data': {'text/plain': ['3']}}
    cell = {'outputs': [figure, axes, number]}
    drop_plot_reprs(cell)
    fct.test_eq(cell['outputs'], [figure, number])
    alone = {'outputs': [axes]}
    drop_plot_reprs(alone)
    fct.test_eq(alone['outputs'], [axes])

def test_progress_bars_and_local_paths_leave_outputs():
    bar = 'Epoch 1/2 : |--| 0% [0/3]\rEpoch 1/2 : |##| 100% [3/3]\r\repoch  loss\n0      1.0\n'
    fct.test_eq(terminal_text(bar), 'epoch  loss\n0      1.0\n')
    cleared = 'Epoch 2/2 : |#--| 23% [9/39]\rEpoch 2/2 : |##-| 25% [10/39]\rEpoch 2/2 :             \r'
    fct.test_eq(terminal_text(cleared + '\nvalley 0.001\n'), 'valley 0.001\n')
    fct.test_eq(terminal_text('loss 1.0\nloss 0.5\n'), 'loss 1.0\nloss 0.5\n')
    import tempfile
    fct.test_eq(drop_local_paths(f'saved to {ROOT}/models/a.pth'), 'saved to models/a.pth')
    fct.test_eq(drop_local_paths(f'saved {tempfile.gettempdir()}/tmp5dv2bpny/results.txt, {tempfile.gettempdir()}/tmpx/a.png'),
                'saved …/results.txt, …/a.png')
    fct.test_eq(drop_local_paths(f'cache in {Path.home()}/.learnerlab/data'), 'cache in ~/.learnerlab/data')

def test_absolute_site_links_become_relative_and_broken_anchors_are_mended(tmp_path):
    (tmp_path/'learner.html').write_text('<h3 id="added_cbs">added_cbs</h3><h3 id="learner">Learner</h3>')
    page = tmp_path/'index.html'
    page.write_text('<a href="https://example.org/proj/learner.html#learner">a</a> '
                    '<a href="https://example.org/proj/learner.html#learner.added_cbs">b</a> '
                    '<a href="https://example.org/proj/learner.html#nowhere"><code>c</code></a> '
                    '<a href="https://github.com/x/y">d</a>')
    fixer = LinkFixer(tmp_path, 'https://example.org/proj/')
    html = page.read_text()
    import re
    page.write_text(re.sub(r'href="([^"]*)"', lambda m: f'href="{fixer.relative(m.group(1), page)}"', html))
    fixer.fix_page(page)
    fct.test_eq(page.read_text(), '<a href="learner.html#learner">a</a> <a href="learner.html#added_cbs">b</a> '
                                  '<code>c</code> <a href="https://github.com/x/y">d</a>')
    assert fixer.warnings and 'nowhere' in fixer.warnings[0]

def test_font_imports_removed(tmp_path):
    css = tmp_path/'theme.css'
    css.write_text('@import url(https://fonts.googleapis.com/css2?family=Source+Sans+Pro:wght@300;400&display=swap);body{color:red}')
    drop_font_imports(tmp_path)
    fct.test_eq(css.read_text(), 'body{color:red}')


def test_readme_links_to_pages_are_absolute():
    base = 'https://example.org/proj/'
    md = 'See [the Learner](04_learner.ipynb), [its loop](04_learner.html#fit), [Quarto](https://quarto.org) and [a file](notes.md).'
    out = absolute_page_links(md, base, {'04_learner'})
    fct.test_eq(out, 'See [the Learner](https://example.org/proj/learner.html), '
                     '[its loop](https://example.org/proj/learner.html#fit), [Quarto](https://quarto.org) and [a file](notes.md).')
    fct.test_eq(absolute_page_links('[x](99_missing.ipynb)', base, {'04_learner'}), '[x](99_missing.ipynb)')
