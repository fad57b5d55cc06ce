"Every exported symbol has a docstring and a `show_doc` cell in the notebook it comes from."
import importlib, inspect, json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'
APPLICATION_MODULES = ('all', '__main__')   # re-exports and the command line, not library API
NOT_REEXPORTED = ('chapter',)               # the main job's experiment runner: documented, but not in `learnerlab.all`

def exported_modules():
    "(module name, notebook) for each notebook with a `default_exp`, except the re-exporting `all`."
    for nb in sorted(NBS.glob('*.ipynb')):
        m = re.search(r'#\|\s*default_exp\s+(\w+)', notebook_source(nb))
        if m and m.group(1) not in APPLICATION_MODULES: yield m.group(1), nb

def notebook_source(nb): return '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'])

def own_symbols(mod):
    "Names in the module's `__all__` that are functions or classes defined in that module."
    for name in getattr(mod, '__all__', []):
        obj = getattr(mod, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, '__module__', None) == mod.__name__:
            yield name, obj

@pytest.mark.parametrize('modname,nb', list(exported_modules()), ids=lambda x: getattr(x, 'name', x))
def test_exported_symbols_are_documented(modname, nb):
    mod = importlib.import_module(f'learnerlab.{modname}')
    src = notebook_source(nb)
    missing_doc = [n for n, obj in own_symbols(mod) if not (obj.__doc__ or '').strip()]
    shown = lambda name: re.search(rf'show_doc\(\s*(\w+\.)?{re.escape(name)}\b', src)
    missing_show = [n for n, obj in own_symbols(mod) if not (shown(n) or shown(obj.__name__))]  # an alias may show its original
    assert not missing_doc, f'{modname}: exported without a docstring: {missing_doc}'
    assert not missing_show, f'{nb.name}: exported without a show_doc cell: {missing_show}'

def test_every_chapter_is_reachable_from_all():
    import learnerlab.all as everything
    for modname, _ in exported_modules():
        if modname in NOT_REEXPORTED: continue
        mod = importlib.import_module(f'learnerlab.{modname}')
        assert set(mod.__all__) <= set(everything.__all__), f'learnerlab.all misses names of learnerlab.{modname}'
