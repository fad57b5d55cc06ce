"Every exported symbol has a docstring and a `show_doc` cell in the notebook it comes from."
import importlib, inspect, json, re, sys
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

# -- parameter tables: a docments comment per parameter (what `scripts/docs_showdoc.py` turns into a table)
# The API a reader meets first: each of these must have a comment on every parameter. Add names as tables are written.
KEY_API = (
    'Learner', 'Learner.fit', 'Learner.fit_one_cycle', 'Learner.fit_flat_cos', 'Learner.fit_sgdr', 'Learner.lr_find',
    'Learner.save', 'Learner.load', 'Learner.get_preds', 'Learner.predict', 'Learner.validate',
    'Learner.add_cb', 'Learner.add_cbs', 'Learner.remove_cb', 'Learner.remove_cbs', 'Learner.freeze_to',
    'Learner.distrib_ctx',
    'Optimizer', 'SGD', 'RMSProp', 'Adam', 'RAdam', 'QHAdam', 'LAMB', 'Larc', 'ranger', 'Lookahead', 'OptimWrapper',
    'Recorder', 'ParamScheduler', 'SaveModelCallback', 'EarlyStoppingCallback', 'ReduceLROnPlateau', 'CSVLogger',
    'GradientClip', 'GradientAccumulation',
    'DataLoaders', 'DataLoaders.from_dsets', 'get_data', 'get_fashion_sample', 'untar_data', 'download_url',
    'extract_archive', 'check_file', 'cnn_learner', 'vision_learner', 'create_body', 'create_head',
    'setup_distrib', 'rank0_first', 'shard_dl', 'gather_batch', 'run_torchrun', 'DistributedTrainer',
    'SchedLin', 'SchedCos', 'SchedNo', 'SchedExp', 'SchedPoly', 'combine_scheds', 'combined_cos',
)

def own_params(obj):
    "The parameter names of `obj` (a function, or a class's constructor written in its package), without self/cls; None if it has none."
    if inspect.isclass(obj):
        init = obj.__dict__.get('__init__') or next((c.__dict__['__init__'] for c in obj.__mro__ if '__init__' in c.__dict__), None)
        same_package = lambda f: f.__module__.split('.')[0] == obj.__module__.split('.')[0]
        if not (inspect.isfunction(init) and same_package(init)): return None   # object's, nn.Module's, a namedtuple's
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return None
    names = [n for i, n in enumerate(sig.parameters) if not (i == 0 and n in ('self', 'cls'))]
    return names or None

def missing_comments(obj):
    "The parameters of `obj` without a docments comment, as `docs_showdoc.param_table` reads them ([] when all have one)."
    from fastcore.docments import docments
    comments = docments(obj, full=False, returns=False, args_kwargs=True)
    return [n for n in own_params(obj) if not comments.get(n)]

def public_callables():
    "name -> object for the functions and classes in each module's `__all__`, and `Learner`'s public methods (patched ones too)."
    from learnerlab.learner import Learner
    out = {}
    for modname, _ in exported_modules():
        out.update(own_symbols(importlib.import_module(f'learnerlab.{modname}')))
    out.update({f'Learner.{n}': f for n, f in vars(Learner).items() if not n.startswith('_') and inspect.isfunction(f)})
    return {n: o for n, o in out.items() if own_params(o)}

def resolve(name):
    "The object a name of `KEY_API` stands for: a name in `learnerlab.all`, or `Class.method`."
    import learnerlab.all as everything
    obj = everything
    for part in name.split('.'): obj = getattr(obj, part)
    return obj

def test_missing_comments_finds_uncommented_parameters():
    def half(a,  # commented
             b): pass
    def one(self, cb): pass  # a trailing comment on a one-parameter def counts
    assert missing_comments(half) == ['b']
    assert missing_comments(one) == []
    class Plain:
        def __init__(self, x, y=1): pass
    assert missing_comments(Plain) == ['x', 'y']
    assert own_params(type('NoInit', (), {})) is None

def test_key_api_has_parameter_tables():
    if str(ROOT/'scripts') not in sys.path: sys.path.insert(0, str(ROOT/'scripts'))
    from docs_showdoc import param_table
    callables = public_callables()
    lacking = {n: m for n, o in callables.items() if (m := missing_comments(o))}
    print(f"\n{len(callables) - len(lacking)} of {len(callables)} public callables have a comment on every parameter; without:")
    for n, m in sorted(lacking.items()): print(f"  {n}: {', '.join(m)}")
    missing = {n: missing_comments(resolve(n)) for n in KEY_API}
    missing = {n: m for n, m in missing.items() if m}
    assert not missing, f"key API without a comment on each parameter (add one, as in nbs/02_widgets.ipynb): {missing}"
    no_table = [n for n in KEY_API if not param_table(resolve(n))]
    assert not no_table, f"the docs builder renders no parameter table for {no_table}"
