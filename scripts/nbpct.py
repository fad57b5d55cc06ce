"""Round-trip notebooks through a plain-text 'percent' form for editing in a text editor.

    python scripts/nbpct.py to-pct nbs/01_optimizer.ipynb /tmp/01.pct
    python scripts/nbpct.py from-pct /tmp/01.pct nbs/01_optimizer.ipynb

In the text form a line `# %%` starts a code cell and `# %% [markdown]` a markdown cell whose
lines are kept verbatim. Outputs are dropped: notebooks in this repo are stored clean.
"""
import json, sys
from pathlib import Path

CODE, MD = '# %%', '# %% [markdown]'

def nb_to_pct(nb_path):
    "Text form of the notebook at `nb_path`."
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for cell in nb['cells']:
        marker = MD if cell['cell_type'] == 'markdown' else CODE
        parts.append(marker + '\n' + ''.join(cell['source']).rstrip('\n') + '\n')
    return '\n'.join(parts)

def _new_cell(kind, lines):
    src = '\n'.join(lines).strip('\n')
    source = [l + '\n' for l in src.split('\n')]
    if source: source[-1] = source[-1].rstrip('\n')
    if kind == 'markdown': return dict(cell_type='markdown', metadata={}, source=source)
    return dict(cell_type='code', execution_count=None, metadata={}, outputs=[], source=source)

def pct_to_nb(text):
    "Notebook dict from the text form `text`."
    cells, kind, lines = [], None, []
    for line in text.split('\n'):
        if line.strip() in (CODE, MD):
            if kind is not None: cells.append(_new_cell(kind, lines))
            kind, lines = ('markdown' if line.strip() == MD else 'code'), []
        else: lines.append(line)
    if kind is not None: cells.append(_new_cell(kind, lines))
    meta = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    return dict(cells=cells, metadata=meta, nbformat=4, nbformat_minor=5)

if __name__ == '__main__':
    cmd, src, dst = sys.argv[1:4]
    if cmd == 'to-pct': Path(dst).write_text(nb_to_pct(src))
    elif cmd == 'from-pct': Path(dst).write_text(json.dumps(pct_to_nb(Path(src).read_text()), indent=1) + '\n')
    else: sys.exit(f'unknown command {cmd!r}: use to-pct or from-pct')
