"""Imports point down: the layers the folder layout shows, checked from the source (no
import runs). Leaves (errors, names, contract, data/limits) import nothing of the
project's own that is above them; data/ reads no experiment; the model reads no data
code; config.py loads no kernel."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'dvlm_jax')


def _module_name(path):
  rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-len('.py')]
  return rel.replace(os.sep, '.').removesuffix('.__init__')


def _imports(path, module_level_only=False):
  """Project modules `path` imports (`from a import b` counts as a.b when a.b is a module)."""
  tree = ast.parse(open(path).read(), path)
  nodes = tree.body if module_level_only else ast.walk(tree)
  found = set()
  for node in nodes:
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found |= {f'{node.module}.{a.name}' for a in node.names}
  return {name for name in found if name.startswith('dvlm_jax')}


def _sources(*parts):
  root = os.path.join(PACKAGE, *parts)
  if root.endswith('.py'):
    return [root]
  return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith('.py')]


def _offending(paths, forbidden, module_level_only=False):
  return {_module_name(p): sorted(n for n in _imports(p, module_level_only)
                                  if any(n == f or n.startswith(f + '.') for f in forbidden))
          for p in paths if any(n == f or n.startswith(f + '.') for f in forbidden
                                for n in _imports(p, module_level_only))}


ABOVE_DATA = ('dvlm_jax.config', 'dvlm_jax.validation', 'dvlm_jax.variants', 'dvlm_jax.model',
              'dvlm_jax.training', 'dvlm_jax.inference', 'dvlm_jax.evaluation', 'dvlm_jax.train')


@pytest.mark.parametrize('where,forbidden,module_level_only', [
    # data/ is read by everything above it and reads no experiment (the commands that do,
    # build_data and inspect_data, sit at the top).
    (('data',), ABOVE_DATA, False),
    (('cli.py',), ('dvlm_jax.config',), False),
    # Loading a config must not load the kernels: names are validated from registries.
    (('config.py',), ('dvlm_jax.model', 'dvlm_jax.evaluation', 'dvlm_jax.inference',
                      'dvlm_jax.training'), True),
    # The model reads rows through the contract, not the data code that writes them.
    (('model',), ('dvlm_jax.data', 'dvlm_jax.training', 'dvlm_jax.evaluation',
                  'dvlm_jax.inference', 'dvlm_jax.config'), False),
])
def test_imports_point_down(where, forbidden, module_level_only):
  assert _offending(_sources(*where), forbidden, module_level_only) == {}


@pytest.mark.parametrize('leaf', ['errors.py', 'names.py', 'contract.py', 'data/limits.py'])
def test_leaves_import_nothing_of_the_project(leaf):
  assert _imports(_sources(*leaf.split('/'))[0]) == set()


def test_the_checker_sees_a_function_level_import(tmp_path):
  # The check above must be able to fail: an import inside a function counts.
  path = tmp_path / 'm.py'
  path.write_text('def f():\n  from dvlm_jax import config as c\n  return c\n')
  assert _imports(str(path)) == {'dvlm_jax', 'dvlm_jax.config'}
  assert _imports(str(path), module_level_only=True) == set()
