"""Summarise arms: mean training metrics over the last 60 steps, final ShapesEval vs chance."""
import glob, json, os, sys
keys = ['text', 'imun/scale_1', 'imun/scale_2', 'imgen/scale_1', 'imgen/scale_2', 'tokens_per_sec']
ev = ['caption/colour', 'caption/kind', 'caption/position', 'caption/count', 'caption/unparseable',
      'generation/colour', 'generation/kind', 'generation/position', 'generation/count']
chance = {}
for d in sys.argv[1:]:
  if not os.path.isdir(d):
    continue
  name = os.path.basename(d.rstrip('/'))
  try:
    lines = [json.loads(l) for l in open(os.path.join(d, 'metrics.jsonl'))]
  except OSError:
    print(name, 'no metrics'); continue
  lines = [l for l in lines if 'step' in l]
  if not lines:
    print(name, 'no steps'); continue
  last = lines[-1]['step']
  tail = [l for l in lines if l['step'] > last - 60]
  r = {k: sum(l.get(k, float('nan')) for l in tail) / len(tail) for k in keys}
  evs = [p for p in glob.glob(os.path.join(d, 'eval', '*.json')) if os.path.basename(p)[:-5].isdigit()]
  if evs:
    rec = json.load(open(max(evs, key=lambda p: int(os.path.basename(p)[:-5]))))
    chance = rec.get('chance', chance)
    r.update({k: rec['metrics'].get('shapes/' + k, float('nan')) for k in ev})
  print(f'{name:18s} step {last:5d} ' + ' '.join(f'{k}={v:.3f}' for k, v in r.items()))
print('chance', ' '.join(f'{k}={chance.get("shapes/" + k, float("nan")):.3f}' for k in ev))
