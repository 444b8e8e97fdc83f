"""The package's layering: imports only go down
tools → apis → engine → core → components → nn → quantizers → observers → registry,
there is no import cycle, and every module imports in a fresh interpreter."""
import ast
import os
import os.path as osp
import pkgutil
import subprocess
import sys
from typing import Dict, List, Set, Tuple

import pytest

#: the source tree (read, not imported: a cycle must not stop the checks)
PACKAGE_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                       'mmptq')

#: top-level part of mmptq -> layer (a part may import only lower layers
#: and itself; parts of one layer do not import each other)
LAYERS: Dict[str, int] = {
    'tools': 9,
    'apis': 8,
    'engine': 7,
    'core': 6,
    'reconstruction': 5, 'transforms': 5, 'models': 5, 'datasets': 5,
    'export': 5,
    'nn': 4,
    'quantizers': 3,
    'observers': 2,
    'registry': 1, 'utils': 1, 'version': 1,
}


def modules() -> List[str]:
    names = ['mmptq']
    for info in pkgutil.walk_packages([PACKAGE_DIR], 'mmptq.'):
        names.append(info.name)
    return sorted(names)


def _path(module: str) -> str:
    rel = module.split('.')[1:]
    pkg = osp.join(PACKAGE_DIR, *rel)
    return osp.join(pkg, '__init__.py') if osp.isdir(pkg) else pkg + '.py'


def module_imports(module: str) -> List[Tuple[str, int, bool]]:
    """(imported mmptq module, line, at module level) of ``module``."""
    path = _path(module)
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith('__init__.py') else \
        module.rpartition('.')[0]
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # imports under `if` / `try` at module level
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                prefix = '.'.join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ''
            names = [prefix]
        else:
            continue
        for name in names:
            if name == 'mmptq' or name.startswith('mmptq.'):
                out.append((name, node.lineno, id(node) in top_level))
    return out


def part(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_every_part_has_a_layer():
    parts = {part(m) for m in modules()} - {''}
    assert parts == set(LAYERS), (
        f'give each part of mmptq a layer: {parts ^ set(LAYERS)}')


def test_imports_only_go_down():
    wrong = []
    for module in modules():
        src = part(module)
        if not src:  # mmptq/__init__: the package root imports all layers
            continue
        for target, line, _ in module_imports(module):
            dst = part(target)
            if dst == src or (src == 'tools' and target == 'mmptq'):
                continue  # the command lines call mmptq.import_all
            if not dst or LAYERS[dst] >= LAYERS[src]:
                wrong.append(f'{_path(module)}:{line}: {src} (layer '
                             f'{LAYERS[src]}) imports {target}')
    assert not wrong, '\n'.join(wrong)


def test_tools_call_the_apis():
    """The command lines are thin: ``mmptq.tools.*`` import ``mmptq.apis``
    (and their argument groups in ``mmptq.tools.args``, the log set-up of
    ``mmptq.utils``); the checkout's
    ``tools/*.py`` are shims of ``mmptq.tools`` (build_data.py is the CLI
    of the demo data package)."""
    tools = osp.join(osp.dirname(PACKAGE_DIR), 'tools')
    wrong = []
    for folder, allowed in ((tools, ('mmptq.tools', 'mmptq.apis')),
                            (osp.join(PACKAGE_DIR, 'tools'),
                             ('mmptq.tools', 'mmptq.apis', 'mmptq.utils'))):
        for name in sorted(os.listdir(folder)):
            if not name.endswith('.py'):
                continue
            with open(osp.join(folder, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    mods = [node.module or '']
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    continue
                for mod in mods:
                    if not mod.startswith('mmptq') or mod == 'mmptq' or \
                            mod.startswith(allowed):
                        continue
                    if name == 'build_data.py' and mod == 'mmptq.datasets':
                        continue
                    wrong.append(f'{folder}/{name}:{node.lineno}: {mod}')
    assert not wrong, '\n'.join(wrong)


def test_no_import_inside_functions():
    """Imports of mmptq modules inside functions hide cycles. Except in the
    package root (``import_all``) and the top layer, the command lines,
    which import the stack after parsing their arguments (``--help``
    without torch); nothing imports them."""
    inner = [f'{_path(m)}:{line}: {t}' for m in modules()
             if m != 'mmptq' and part(m) != 'tools'
             for t, line, top in module_imports(m) if not top]
    assert not inner, '\n'.join(inner)


def test_no_import_cycle():
    graph: Dict[str, Set[str]] = {}
    names = set(modules())
    for module in names:
        graph[module] = set()
        for target, _, _ in module_imports(module):
            # `from pkg import name` may name a submodule
            while target not in names:
                target = target.rpartition('.')[0]
            if target != module:
                graph[module].add(target)
    # a package imports its parents' __init__ first: drop those edges
    for module, targets in graph.items():
        targets -= {p for p in targets if module.startswith(p + '.')}
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The layer check fails on an upward import (guards the parser)."""
    bad = tmp_path / 'mmptq' / 'observers'
    bad.mkdir(parents=True)
    (bad / 'x.py').write_text('from mmptq.engine import unwrap\n'
                              'from ..core import quantize_model\n')
    monkeypatch.setattr(sys.modules[__name__], 'PACKAGE_DIR',
                        str(tmp_path / 'mmptq'))
    found = module_imports('mmptq.observers.x')
    assert [t for t, _, _ in found] == ['mmptq.engine', 'mmptq.core']


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module first in its own interpreter would take minutes; one
    fresh interpreter importing them all in sorted order catches import
    errors, and the static graph above the cycles."""
    code = ('import importlib, sys\n'
            f'for name in {modules()!r}:\n'
            '    importlib.import_module(name)\n'
            'print("ok")\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr
