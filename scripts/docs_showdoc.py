"""How `show_doc` renders a symbol on the site: a clean signature and, when the source has a comment per
parameter (nbdev's docments), a parameter table.

nbdev 3's default renderer shows annotations that fastcore *infers* from defaults (`lr:NoneType=None`,
`opt_func:function=Adam`), prints defaults with their `repr` (`<function valley at 0x7f...>`, new at
every build) and writes `def` before a class. This renderer shows only the annotations the code
wrote, a default by its name, `class` for a class, and the parameter comments as a table.
"""
import inspect, re
from inspect import Parameter

MAX_LINE = 80   # the code column of a page shows about 80 characters without scrolling
_ADDRESS_REPR = re.compile(r'<(?:function|class|bound method|built-in function|method)\s+([\w.<>]+)(?:\s+of\s+.*?)?\s+at\s+0x[0-9a-fA-F]+>')
_OBJECT_REPR = re.compile(r'<([\w.]+) object at 0x[0-9a-fA-F]+>')

def default_text(value):
    "A default value as a reader would write it: names for functions and classes, no memory addresses."
    if isinstance(value, (tuple, list)):
        items = ', '.join(default_text(v) for v in value)
        if isinstance(value, tuple): return f'({items},)' if len(value) == 1 else f'({items})'
        return f'[{items}]'
    if isinstance(value, dict): return '{' + ', '.join(f'{default_text(k)}: {default_text(v)}' for k, v in value.items()) + '}'
    if inspect.isclass(value) or inspect.isroutine(value) or isinstance(value, type(inspect)):
        return getattr(value, '__qualname__', None) or value.__name__
    text = repr(value)
    text = _ADDRESS_REPR.sub(lambda m: m.group(1).rsplit('.', 1)[-1], text)
    return _OBJECT_REPR.sub(lambda m: f'{m.group(1).rsplit(".", 1)[-1]}()', text)

def annotation_text(anno):
    "A written annotation as text (`int`, `float | None`, `Tensor`); '' when there is none."
    if anno is Parameter.empty: return ''
    if isinstance(anno, str): return anno
    return inspect.formatannotation(anno).replace('typing.', '')

def _param_text(p):
    star = {Parameter.VAR_POSITIONAL: '*', Parameter.VAR_KEYWORD: '**'}.get(p.kind, '')
    anno = annotation_text(p.annotation)
    text = star + p.name + (f':{anno}' if anno else '')
    return text + (f'={default_text(p.default)}' if p.default is not Parameter.empty else '')

def _signature(sym):
    "The signature of `sym` without the `self` of a method (a patched method annotates it with its class)."
    try: sig = inspect.signature(sym)
    except (TypeError, ValueError): return None
    params = list(sig.parameters.values())
    if params and params[0].name in ('self', 'cls') and params[0].kind is not Parameter.KEYWORD_ONLY: params = params[1:]
    return sig.replace(parameters=params)

def _param_texts(sig):
    "The parameters as written in a `def` line, with the bare `/` and `*` separators where they belong."
    texts, prev, star = [], None, False
    for p in sig.parameters.values():
        if prev is Parameter.POSITIONAL_ONLY and p.kind is not prev: texts.append('/')
        if p.kind is Parameter.KEYWORD_ONLY and not star: texts.append('*')
        star = star or p.kind in (Parameter.KEYWORD_ONLY, Parameter.VAR_POSITIONAL)
        texts.append(_param_text(p))
        prev = p.kind
    if prev is Parameter.POSITIONAL_ONLY: texts.append('/')
    return texts

def signature_text(sym, name=None):
    "`def name(...)` or `class Name(...)` for `sym`, wrapped at `MAX_LINE` characters, without inferred types."
    name = name or getattr(sym, '__name__', str(sym))
    keyword = 'class' if inspect.isclass(sym) else 'async def' if inspect.iscoroutinefunction(sym) else 'def'
    sig = _signature(sym)
    if sig is None and inspect.isclass(sym):   # e.g. an exception: its constructor is a builtin's, so show its bases
        bases = [b.__name__ for b in sym.__bases__ if b is not object]
        return f'class {name}({", ".join(bases)}):' if bases else f'class {name}:'
    if sig is None: return f'{keyword} {name}(...)'
    ret = annotation_text(sig.return_annotation)
    close = f'){"->" + ret if ret else ""}:'
    params = _param_texts(sig)
    one_line = f'{keyword} {name}({", ".join(params)}{close}'
    if len(one_line) <= MAX_LINE: return one_line
    lines, line = [], ''
    for text in params:
        if line and 4 + len(line) + len(', ') + len(text) + len(',') > MAX_LINE: lines.append(line + ','); line = ''
        line = f'{line}, {text}' if line else text
    lines.append(line)
    return f'{keyword} {name}(\n' + '\n'.join('    ' + l for l in lines) + f'\n{close}'

def _cell(text): return str(text).replace('|', r'\|').replace('\n', '<br>')

def param_table(sym):
    "A markdown table of the parameters, when any has a docments comment: name, type and default (when any has one), details."
    from fastcore.docments import docments
    sig = _signature(sym)
    if sig is None: return ''
    try: comments = docments(sym, full=False, returns=True, args_kwargs=True)
    except Exception: return ''
    params = list(sig.parameters.values())
    if not any(comments.get(p.name) for p in params): return ''
    code = lambda text: f'`{_cell(text)}`' if text else ''
    rows = [[code(p.name), code(annotation_text(p.annotation)),
             code(default_text(p.default)) if p.default is not Parameter.empty else '', _cell(comments.get(p.name) or '')]
            for p in params]
    if comments.get('return'): rows.append(['**Returns**', code(annotation_text(sig.return_annotation)), '', _cell(comments['return'])])
    header = ['Parameter', 'Type', 'Default', 'Details']
    keep = [i for i in range(4) if i in (0, 3) or any(r[i] for r in rows)]
    lines = [[header[i] for i in keep], ['---'] * len(keep)] + [[r[i] for i in keep] for r in rows]
    return '\n'.join('| ' + ' | '.join(l) + ' |' for l in lines)

def site_renderer():
    "nbdev's markdown `show_doc` renderer with this module's signature and parameter table."
    from nbdev.showdoc import BasicMarkdownRenderer

    class SiteRenderer(BasicMarkdownRenderer):
        "`show_doc` for the site: written annotations only, defaults by name, `class` for classes, a parameter table."
        def __init__(self, sym, name=None, title_level=3, maxline=MAX_LINE):
            super().__init__(sym, name=name, title_level=title_level, maxline=maxline)
            bare = name.rsplit('.', 1)[-1] if name else getattr(self.sym, '__name__', self.nm.rsplit('.', 1)[-1])
            self.dm = signature_text(self.sym, bare)
            self.table = param_table(self.sym)

        def _repr_markdown_(self):
            doc = super()._repr_markdown_()
            return doc + f'\n\n{self.table}' if self.table else doc
    return SiteRenderer

def use_site_renderer():
    "Make nbdev's `show_doc` use `site_renderer()` in this process (the doc processors run here)."
    import nbdev.showdoc as showdoc
    if getattr(showdoc.BasicMarkdownRenderer, 'is_site_renderer', False): return
    renderer = site_renderer()
    renderer.is_site_renderer = True
    showdoc.BasicMarkdownRenderer = renderer
