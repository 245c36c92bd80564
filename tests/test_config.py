"""Configs: every experiment loads, overrides are typed, bad keys and values fail by name."""

import glob
import os

import pytest

from dvlm_jax import config as cfg_lib
from dvlm_jax import variants
from dvlm_jax.errors import ConfigError
from dvlm_jax.model.dvlm import param_count
from tests.conftest import ROOT

TINY = os.path.join(ROOT, 'experiments', 'tiny.py')


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'experiments', '*.py'))))
def test_every_experiment_loads_and_names_its_command(path):
  config = cfg_lib.load(path)
  with open(path) as f:
    assert 'python -m dvlm_jax.train --config experiments/' in f.read()
  assert config.data.seq_len > 0


@pytest.mark.parametrize('name,low,high', [('base', 250e6, 400e6), ('b1', 0.9e9, 1.2e9)])
def test_large_configs_have_their_advertised_size(name, low, high):
  n = param_count(cfg_lib.load(os.path.join(ROOT, 'experiments', f'{name}.py')))
  assert low < n < high, n


def test_janus_baseline_is_everything_shared_at_equal_depth():
  dream = cfg_lib.load(os.path.join(ROOT, 'experiments', 'small.py'))
  janus = cfg_lib.load(os.path.join(ROOT, 'experiments', 'janus.py') + ':small')
  for key in ('text_in_layers', 'image_in_layers', 'text_out_layers', 'imun_out_layers',
              'imgen_out_layers'):
    assert janus.model[key] == 0
  assert janus.model.core_layers == dream.model.core_layers + 2
  assert janus.image.attention == 'causal' and not janus.image.dual_copy
  assert len(janus.image.scales) == 1 and not janus.model.imun_head
  # A wider shared MLP gives it the dream model's parameter count.
  assert janus.model.mlp_dim > dream.model.mlp_dim
  assert abs(param_count(janus) / param_count(dream) - 1) <= 0.05


def test_ablations_that_remove_modality_blocks_keep_depth_and_parameters():
  dream = cfg_lib.load(TINY)
  depth = dream.model.core_layers + variants.modality_depth(dream.model)
  for name in ('no_modality_blocks', 'no_in_blocks', 'no_out_blocks'):
    arm = cfg_lib.load(f'{TINY}:{name}')
    assert arm.model.core_layers + variants.modality_depth(arm.model) == depth, name
    assert arm.model.core_layers > dream.model.core_layers and arm.model.mlp_dim > dream.model.mlp_dim
    assert abs(param_count(arm) / param_count(dream) - 1) <= variants.TOLERANCE, name
  # A claim that is a head, not blocks, keeps the rest of the model as it is.
  assert cfg_lib.load(f'{TINY}:no_diffusion').model.mlp_dim == dream.model.mlp_dim


def test_overrides_are_typed():
  c = cfg_lib.load(TINY, ['model.core_layers=3', 'image.scales=1,2,4', 'model.imun_head=false',
                          'optim.lr=1e-3', 'image.attention=causal'])
  assert c.model.core_layers == 3 and c.image.scales == (1, 2, 4)
  assert c.model.imun_head is False and c.optim.lr == 1e-3 and c.image.attention == 'causal'


@pytest.mark.parametrize('override,named', [
    ('model.core_layerz=3', "model.core_layerz"),           # unknown key, with a suggestion
    ('modle.core_layers=3', "modle.core_layers"),           # unknown section
    ('model.core_layers=three', "model.core_layers"),       # wrong type
    ('image.scales=4,2', "image.scales"),                   # not increasing
    ('image.scales=2,2', "image.scales"),
    ('image.scales=1,2,3,4,5,6,7,8,9', "image.scales"),     # more than the marker tokens
    ('image.targets=all', "image.targets"),
    ('image.patch_size=0', "image.patch_size"),
    ('image.attention=sideways', "image.attention"),
    ('image.target_shift=2', "image.target_shift"),
    ('image.mask_ratio_min=0.9', "image.mask_ratio_min"),   # above max
    ('model.n_kv_heads=3', "model.n_kv_heads"),             # heads not a multiple
    ('model.vocab_size=100', "model.vocab_size"),           # smaller than the tokenizer
    ('data.seq_len=20', "data.seq_len"),                    # cannot hold an image
    ('image.targets=next_patch', "image.attention"),        # needs causal images
    ('diffusion.objective=score', "diffusion.objective"),
    ('model.rope_axes=tq', "model.rope_axes"),
    ('model.rope_axes=ty', "model.rope_axes"),               # images need y and x
    ('loss.scale_weighting=pixel', "loss.scale_weighting"),
    ('data.source=files', "data.source"),
    ('data.generation_share=1.5', "data.generation_share"),
    ('data.builtin_text=-0.1', "data.builtin_text"),
    ('data.builtin_max_shapes=10', "data.builtin_max_shapes"),
    ('data.builtin_scenes=-1', "data.builtin_scenes"),
    ('data.pack_lookahead=0', "data.pack_lookahead"),
    ('data.worker_count=-1', "data.worker_count"),
    ('diffusion.time_shift=0', "diffusion.time_shift"),
    ('eval.masked_patch_psnr.mask_ratio=1.5', "eval.masked_patch_psnr.mask_ratio"),
    ('eval.shapes.surprise_percentile=101', "eval.shapes.surprise_percentile"),
    ('eval.mask_ratio=0.3', "eval.mask_ratio"),   # the evaluator's own key is in its section
])
def test_bad_config_fails_at_start_naming_the_key(override, named):
  with pytest.raises(ConfigError) as e:
    cfg_lib.load(TINY, [override])
  assert named in str(e.value)


def test_unknown_key_suggests_the_close_one():
  with pytest.raises(ConfigError, match="did you mean 'model.core_layers'"):
    cfg_lib.load(TINY, ['model.core_layerz=3'])


def test_missing_experiment_and_bad_arg():
  with pytest.raises(ConfigError, match='no such experiment'):
    cfg_lib.load('experiments/nope.py')
  with pytest.raises(ConfigError, match='unknown ablation'):
    cfg_lib.load(TINY + ':no_such_switch')
