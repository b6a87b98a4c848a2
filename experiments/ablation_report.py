"""docs/RESULTS.md and its plots from the finished ablation runs: the Glow-backbone
ablation (docs/shuffle_ablation.png) and the continuous-flow one (--backbone=ffjord,
its own block of RESULTS.md and docs/shuffle_ablation_cnf.png)."""
from __future__ import annotations

import glob
import json
import math
import os
import platform
from typing import Optional

import numpy as np

ARM_ORDER = ('vanilla', 'random', 'kl', 'likelihood', 'oracle', 'oracle_frozen',
             'likelihood_divergence', 'oracle_divergence')


def load_results(workdir: str) -> dict:
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, '*', 'result.json'))):
    with open(path) as f:
      r = json.load(f)
    out[r['name']] = r
  return out


LAMBDA_ARMS = ('kl', 'likelihood')  # the arms whose behaviour depends on λ


def _arm_runs(results: dict, arm: str, kl_weight: float = 1e-3) -> list:
  """The runs of `arm`; for a λ-dependent arm only those at `kl_weight`."""
  return [r for r in results.values() if r['arm'] == arm and (
      arm not in LAMBDA_ARMS or math.isclose(r['kl_weight'], kl_weight))]


def best_reading(results: dict, readings, num_seeds: int,
                 kl_weight: float = 1e-3) -> Optional[str]:
  """The reading with the lowest mean test bits/dim, once each has num_seeds runs."""
  means = {}
  for arm in readings:
    runs = _arm_runs(results, arm, kl_weight)
    if len(runs) < num_seeds:
      return None
    means[arm] = np.mean([r['bpd']['bpd'] for r in runs])
  return min(means, key=means.get)


def _stats(values) -> tuple:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float('nan')


def fmt(values, digits=4) -> str:
  if not values:
    return '–'
  m, s = _stats(values)
  return f'{m:.{digits}f} ± {s:.{digits}f}' if not math.isnan(s) else f'{m:.{digits}f}'


def r2e2_after(r, split='test'):
  rows = r['entropy'].get(split, [])
  if not rows:
    return None
  row = rows[0]
  return (row.get('after') or row['before'])['r2e2']


def _changes(r):
  keys = [k for k in r if k.startswith('split_changes_') and not k.endswith('after_warmup')]
  return sum(r[k] for k in keys), sum(r[f'{k}_after_warmup'] for k in keys)


def arm_rows(results: dict, arms, kl_weight=1e-3) -> list:
  rows = []
  for arm in arms:
    runs = sorted(_arm_runs(results, arm, kl_weight), key=lambda r: r['seed'])
    if not runs:
      continue
    bpd = [r['bpd']['bpd'] for r in runs]
    iw = [r['bpd']['bpd_iw'] for r in runs if 'bpd_iw' in r['bpd']]
    r2 = [x for x in (r2e2_after(r) for r in runs) if x is not None]
    changes = [_changes(r) for r in runs]
    rows.append(dict(arm=arm, runs=runs, bpd=bpd, iw=iw, r2e2=r2, changes=changes))
  return rows


def verdict(rows: list) -> str:
  by = {r['arm']: r for r in rows}
  if 'vanilla' not in by or 'random' not in by:
    return 'Not yet: the vanilla and random arms are needed.'
  lines = []
  for arm in ARM_ORDER[2:]:
    if arm not in by or len(by[arm]['bpd']) < 2:
      continue
    m, s = _stats(by[arm]['bpd'])
    parts = []
    for ref in ('vanilla', 'random'):
      mr, sr = _stats(by[ref]['bpd'])
      spread = max(s, sr)
      diff = m - mr
      beats = diff < -spread
      parts.append(f'{diff:+.4f} bits/dim against {ref} (seed spread {spread:.4f}: '
                   f'{"better by more than the spread" if beats else "within the spread" if abs(diff) <= spread else "worse by more than the spread"})')
    lines.append(f'- **{arm}**: ' + '; '.join(parts) + '.')
  return '\n'.join(lines) if lines else 'Not yet: no reading has two seeds.'


def write(results: dict, docs: str, command: str) -> None:
  os.makedirs(docs, exist_ok=True)
  rows = arm_rows(results, ARM_ORDER)
  if not rows:
    return
  any_run = next(iter(results.values()))
  lines = [
      '# The Shuffle ablation (issue 9)', '',
      'Made by (resumable; rewrites this file after every run; the `_divergence` arms by the '
      'same command with `--arms=oracle_divergence,likelihood_divergence --frozen_arms= '
      '--lambdas=`):', '', '```bash', command, '```', '',
      f'Each run: {any_run["steps"]} steps of batch 64 on Fashion-MNIST, the same small '
      'Glow-backbone model (K = 2 scales of 4 steps, width 64, the paper\'s fixed N(0, I) split '
      'prior, a learned per-channel base for the last latent, uniform dequantisation, Adamax '
      'lr 5e-4 with 200 warm-up steps): one transition with 4C = 16 channels, '
      '8 of which are factored out. For a given seed every arm has the same data order, '
      'per-step noise and initial flow weights; only the Shuffle differs. '
      'Test bits/dim over all 10,000 test images (one dequantisation draw; IW: the '
      f'importance-weighted bound with k = {any_run["bpd"].get("iw_samples", "–")}); '
      'mean ± standard deviation over seeds. R2E2 of the halves after the Shuffle on 1000 test '
      'images (eval.py --mode=entropy; the vanilla model\'s halves are its only halves). '
      'Set changes: training steps whose update changed the factored-out channel set '
      '(all steps / after the 200 warm-up steps). `oracle_frozen` is the oracle with '
      '`optim.shuffle_freeze_after=200`: its order is refreshed at steps 100 and 200 and then '
      'fixed. Arms ending in `_divergence` (if present) use `model.shuffle_statistic='
      '\'divergence\'` and were added after the first results, as an exploration.', '',
      '| arm | seeds | test bits/dim | IW bound | R2E2 after | set changes (all / after warm-up) |',
      '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["arm"]} | {len(r["bpd"])} | {fmt(r["bpd"])} | {fmt(r["iw"])} | '
                 f'{fmt(r["r2e2"], 3)} | {_changes_cell(r)} |')
  lines += _per_run(rows)
  sweep = sorted({(r['arm'], r['kl_weight']) for r in results.values()
                  if r['arm'] in ('kl', 'likelihood')})
  arms_swept = sorted({a for a, w in sweep if not math.isclose(w, 1e-3)})
  if arms_swept:
    arm = arms_swept[0]
    lines += ['', f'## λ sweep ({arm}, the reading with the lowest mean test bits/dim)', '',
              '| λ | seeds | test bits/dim | IW bound | set changes (all / after warm-up) |',
              '|---|---|---|---|---|']
    for lam in sorted({w for a, w in sweep if a == arm}, reverse=True):
      (r,) = arm_rows(results, [arm], lam) or [None]
      if r is None:
        continue
      ch = ', '.join(f'{a}/{b}' for a, b in r['changes'])
      lines.append(f'| {lam:g} | {len(r["bpd"])} | {fmt(r["bpd"])} | {fmt(r["iw"])} | {ch} |')
  lines += ['', '## Verdict (computed from the table)', '',
            'A reading beats a reference when its mean test bits/dim is lower by more than the '
            'larger of the two arms\' seed standard deviations.', '', verdict(rows), '',
            f'Machine: {cpu_name()}, {os.cpu_count()} cores. '
            '![test bits/dim per arm](shuffle_ablation.png)', '']
  replace_block(os.path.join(docs, 'RESULTS.md'), '\n'.join(lines[2:]), lines[0],
                 (BEGIN, END))
  plot(rows, os.path.join(docs, 'shuffle_ablation.png'))


def write_cnf(results: dict, docs: str, command: str, kl_weight: float = 1e-4) -> None:
  """The continuous-flow ablation's block of RESULTS.md and its plot (all at λ = kl_weight)."""
  os.makedirs(docs, exist_ok=True)
  rows = arm_rows(results, ARM_ORDER, kl_weight)
  if not rows:
    return
  any_run = next(iter(results.values()))
  lines = [
      'Made by (resumable; rewrites this block after every run):', '', '```bash', command,
      '```', '',
      f'Each run: {any_run["steps"]} steps of `configs/fashion_mnist.py:ffjord` (a multi-scale '
      'FFJORD: an initial squeeze, K = 2 scales of one CNF block, dynamics nets of two hidden '
      '3x3 convolutions of width 32, Dopri5 at rtol = atol = 1e-3, Hutchinson\'s trace, batch '
      '32, Adam lr 1e-3 with 100 warm-up steps, uniform dequantisation, the fixed N(0, I) '
      f'split prior, λ = {kl_weight:g}): one transition, 14x14x4 squeezed to 7x7x16, whose '
      '4C = 16 channels the Shuffle orders before 8 of them are factored out. '
      'For a given seed every arm has the same data order, noise and initial weights; only '
      'the Shuffle differs. Test bits/dim over the first '
      f'{any_run["bpd"].get("num_examples", "–")} test images, one dequantisation draw and '
      'one Hutchinson probe per image (an unbiased estimate of the bound); mean ± standard '
      'deviation over seeds. Set changes as in the table above.', '',
      '| arm | seeds | test bits/dim | last train bits/dim | set changes (all / after warm-up) |',
      '|---|---|---|---|---|']
  for r in rows:
    train = [run['train_bpd_last'] for run in r['runs'] if run.get('train_bpd_last')]
    lines.append(f'| {r["arm"]} | {len(r["bpd"])} | {fmt(r["bpd"])} | {fmt(train)} | '
                 f'{_changes_cell(r)} |')
  lines += _per_run(rows)
  lines += ['', 'Verdict (computed from the table, the rule above):', '', verdict(rows), '',
            f'Machine: {cpu_name()}, {os.cpu_count()} cores. '
            '![test bits/dim per arm, continuous flow](shuffle_ablation_cnf.png)']
  replace_block(os.path.join(docs, 'RESULTS.md'), '\n'.join(lines),
                 '# The Shuffle ablation', (CNF_BEGIN, CNF_END))
  plot(rows, os.path.join(docs, 'shuffle_ablation_cnf.png'))


def _changes_cell(row) -> str:
  if row['arm'] in ('vanilla', 'random'):
    return '0 (fixed)'
  return ', '.join(f'{a}/{b}' for a, b in row['changes'])


def _per_run(rows) -> list:
  return ['', 'Per run (test bits/dim):', ''] + [
      f'- {r["arm"]}: ' + ', '.join(f's{run["seed"]} {run["bpd"]["bpd"]:.4f}'
                                   for run in r['runs']) for r in rows]


BEGIN, END = '<!-- ablation tables: begin (written by the script) -->', '<!-- ablation tables: end -->'
CNF_BEGIN = '<!-- continuous-flow ablation tables: begin (written by the script) -->'
CNF_END = '<!-- continuous-flow ablation tables: end -->'


def replace_block(path: str, block: str, title: str, markers) -> None:
  """Writes `block` between the `markers` (begin, end) of `path`, keeping the text
  around them (the hand-written reading of the numbers); a file without them gets
  them appended; creates the file if needed."""
  begin, end = markers
  text = f'{title}\n'
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
  if begin not in text or end not in text:
    text = f'{text.rstrip()}\n\n{begin}\n{end}\n'
  head, rest = text.split(begin, 1)
  tail = rest.split(end, 1)[1]
  tmp = f'{path}.{os.getpid()}.tmp'  # several writers may rewrite it at once
  with open(tmp, 'w') as f:
    f.write(f'{head}{begin}\n{block}\n{end}{tail}')
  os.replace(tmp, path)


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.machine()


def plot(rows: list, path: str) -> None:
  """A dot plot: one column per arm, one dot per seed, a bar at the mean."""
  from PIL import Image, ImageDraw
  w, h, left, top, bottom = 120 * len(rows) + 80, 360, 70, 30, 50
  img = Image.new('RGB', (w, h), 'white')
  d = ImageDraw.Draw(img)
  values = [v for r in rows for v in r['bpd']]
  lo, hi = min(values), max(values)
  pad = max((hi - lo) * 0.15, 1e-3)
  lo, hi = lo - pad, hi + pad
  y_of = lambda v: top + (hi - v) / (hi - lo) * (h - top - bottom)
  d.text((left, 8), 'test bits/dim per arm (dots: seeds, bar: mean)', fill='black')
  for i in range(5):
    v = lo + (hi - lo) * i / 4
    d.line([(left - 5, y_of(v)), (w - 10, y_of(v))], fill=(225, 225, 225))
    d.text((4, y_of(v) - 6), f'{v:.3f}', fill='black')
  for i, r in enumerate(rows):
    x = left + 60 + 120 * i
    for v in r['bpd']:
      d.ellipse([x - 4, y_of(v) - 4, x + 4, y_of(v) + 4], fill=(40, 90, 200))
    m = float(np.mean(r['bpd']))
    d.line([(x - 25, y_of(m)), (x + 25, y_of(m))], fill=(200, 40, 40), width=3)
    d.text((x - 25, h - bottom + 12), r['arm'], fill='black')
  img.save(path)
