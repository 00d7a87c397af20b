"""The data package has no import cycle, no reader imports another reader, and nothing in it
imports a stage: every gwsss_jax.data module imports on its own in a fresh interpreter, and the
imports in its source (also those inside functions) form an acyclic graph."""

import ast
import os
import subprocess
import sys

import gwsss_jax
from gwsss_jax.data import datasets

DATA_DIR = os.path.join(os.path.dirname(gwsss_jax.__file__), 'data')
MODULES = sorted(f[:-3] for f in os.listdir(DATA_DIR) if f.endswith('.py') and f != '__init__.py')


def _imports(name: str) -> set:
  """The gwsss_jax modules that gwsss_jax/data/<name>.py imports anywhere in its source."""
  with open(os.path.join(DATA_DIR, name + '.py')) as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      out.add(node.module)
      out.update(f'{node.module}.{a.name}' for a in node.names)
  return {m for m in out if m.startswith('gwsss_jax.')}


def _data_graph() -> dict:
  return {m: {i.split('.')[2] for i in _imports(m)
              if i.startswith('gwsss_jax.data.') and i.split('.')[2] in MODULES}
          for m in MODULES}


def _cycle(graph: dict):
  """A cycle of `graph` as a list of nodes, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_cycle_finder_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None


def test_data_modules_have_no_import_cycle():
  graph = _data_graph()
  assert _cycle(graph) is None, f'import cycle: {" -> ".join(_cycle(graph))}'
  for m in MODULES:
    stages = [i for i in _imports(m) if i.startswith('gwsss_jax.stages')]
    assert not stages, f'gwsss_jax/data/{m}.py imports {stages}'


def test_no_reader_imports_another_reader():
  readers = {module.__name__.split('.')[-1] for module in datasets.READERS.values()}
  assert {'voc', 'coco', 'tfds_source'} <= readers
  graph = _data_graph()
  for r in sorted(readers):
    assert not graph[r] & (readers - {r}), f'{r} imports the readers {graph[r] & readers}'


def test_each_data_module_imports_alone():
  """Each module first in an interpreter where no gwsss_jax module is loaded (a cycle shows
  as an ImportError or AttributeError that depends on which module comes first)."""
  script = ('import importlib, sys\n'
            f'for name in {MODULES!r}:\n'
            '  for m in [m for m in sys.modules if m.startswith("gwsss_jax")]:\n'
            '    del sys.modules[m]\n'
            '  importlib.import_module("gwsss_jax.data." + name)\n'
            'print("ok", len(sys.modules) > 0)\n')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(gwsss_jax.__file__)), check=False)
  assert proc.returncode == 0 and 'ok True' in proc.stdout, proc.stderr[-3000:]
