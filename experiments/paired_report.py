"""The paired Shuffle experiment's arms and report (experiments/shuffle_paired.py).

Arms of phase B, per seed and unit, from the phase-A model's scores of u_1's units
(statistics.dataset_kl over training images: how far each unit is from N(0, 1)):

    B0  the identity (the vanilla split);
    B1  the paper's direction: the highest-scoring half goes on, the units closest
        to the prior (highest entropy) are factored out;
    B2  the reverse: the lowest-scoring half goes on;
    B3  a random split moving as many units across it as B1 does.

Each half keeps its units' order in u_k. An arm whose order equals an earlier
arm's for that seed is not trained again (its result is that arm's).
"""
from __future__ import annotations

import math
import os

import numpy as np

from experiments import ablation_report

ARMS = ('B0', 'B1', 'B2', 'B3')
COMPARISONS = (('B1', 'B0'), ('B1', 'B2'), ('B1', 'B3'))
BEGIN = '<!-- paired tables: begin (written by the script) -->'
END = '<!-- paired tables: end -->'


def keep_order(kept: set, n: int) -> list:
  """The order of n units that sends `kept` on, each half in increasing index."""
  return sorted(kept) + sorted(set(range(n)) - set(kept))


def arm_orders(scores, seed: int) -> dict:
  """{'B0'..'B3': order of units or None} and 'moved': units B1 moves across the split."""
  scores = np.asarray(scores, np.float64)
  n = len(scores)
  half = n // 2
  ranked = np.argsort(-scores, kind='stable')
  first = set(range(half))
  b1 = set(ranked[:half].tolist())
  moved = len(b1 - first)
  out = dict(B0=keep_order(first, n), B1=keep_order(b1, n),
             B2=keep_order(set(ranked[half:].tolist()), n), moved=moved)
  # B3: as many units out of the first half and into it as B1, at random among
  # the splits other than B1's and B2's (None if there is none).
  rng = np.random.default_rng([seed, n])
  second = sorted(set(range(n)) - first)
  out['B3'] = None
  for _ in range(1000 if moved else 0):
    kept = (first - set(rng.choice(sorted(first), moved, replace=False).tolist())
            | set(rng.choice(second, moved, replace=False).tolist()))
    if kept not in (b1, set(ranked[half:].tolist())):
      out['B3'] = keep_order(kept, n)
      break
  return out


def paired(values: dict, arm: str, ref: str) -> dict:
  """Per-seed differences arm - ref (test bits/dim) over the seeds that have both,
  their mean, standard error, and whether the effect counts as real (its sign
  holds in every seed and |mean| > 2 standard errors)."""
  seeds = sorted(s for s in values.get(arm, {}) if s in values.get(ref, {}))
  diffs = [values[arm][s] - values[ref][s] for s in seeds]
  if len(diffs) < 2:
    return dict(seeds=seeds, diffs=diffs, mean=float('nan'), se=float('nan'), real=False)
  d = np.asarray(diffs, np.float64)
  mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
  same_sign = bool(np.all(d > 0) or np.all(d < 0))
  return dict(seeds=seeds, diffs=diffs, mean=mean, se=se,
              real=same_sign and abs(mean) > 2 * se)


def _cell(p) -> str:
  if not p['diffs']:
    return '–'
  per = ', '.join(f'{d:+.4f}' for d in p['diffs'])
  if math.isnan(p['mean']):
    return per
  tag = '**real**' if p['real'] else 'not real'
  return f'{p["mean"]:+.4f} ± {p["se"]:.4f} ({tag}; {per})'


def verdict_lines(tables: dict) -> list:
  lines = []
  for unit, comps in tables.items():
    for (arm, ref), p in comps.items():
      if len(p['diffs']) < 2:
        continue
      word = ('better' if p['mean'] < 0 else 'worse') if p['real'] else 'no different'
      lines.append(f'- unit = {unit}, {arm} - {ref}: {p["mean"]:+.4f} ± {p["se"]:.4f} bits/dim '
                   f'over {len(p["diffs"])} seeds: {arm} is {word}'
                   f'{"" if p["real"] else " (the rule above is not met)"}.')
  return lines or ['Not yet: no comparison has two seeds.']


SCRATCH_ARMS = ('vanilla', 'random_map', 'random_channel', 'likelihood_map',
                'likelihood_channel', 'oracle_map', 'oracle_channel')


def scratch_lines(runs: dict, steps: dict) -> list:
  """The runs from scratch as rows comparable with the first ablation's table."""
  rows = {}
  for r in runs.values():
    if r.get('phase') == 'A' and 'scratch' in r:
      rows.setdefault('vanilla', []).append(dict(r['scratch'], seed=r['seed'],
                                                 split_changes_1=0, order_changes_1=0))
    elif r.get('phase') == 'S':
      rows.setdefault(r['arm'], []).append(r)
  if not rows:
    return []
  lines = ['', f'From scratch, {steps["scratch"]} steps (the first ablation\'s budget and '
           'model; defaults of issue 26: `dataset_kl`, each half in its order, the guider at '
           'least 8 wide). Mean ± standard deviation over seeds; R2E2 after the Shuffle on 1000 '
           'test images; changes: steps whose update changed the factored-out set / reordered '
           'a half.', '',
           '| arm | seeds | test bits/dim | IW bound | R2E2 after | set / order changes |',
           '|---|---|---|---|---|---|']
  for arm in [a for a in SCRATCH_ARMS if a in rows] + sorted(set(rows) - set(SCRATCH_ARMS)):
    rs = sorted(rows[arm], key=lambda r: r['seed'])
    bpd = [r['bpd']['bpd'] for r in rs]
    iw = [r['bpd']['bpd_iw'] for r in rs if 'bpd_iw' in r['bpd']]
    r2 = [x for x in (ablation_report.r2e2_after(r) for r in rs if 'entropy' in r)
          if x is not None]
    changes = ', '.join(f'{r.get("split_changes_1", 0)}/{r.get("order_changes_1", 0)}'
                        for r in rs)
    lines.append(f'| {arm} | {len(rs)} | {ablation_report.fmt(bpd)} | '
                 f'{ablation_report.fmt(iw)} | {ablation_report.fmt(r2, 3)} | {changes} |')
  lines += ['', 'Per run (test bits/dim): ' + '; '.join(
      f'{arm} ' + ', '.join(f's{r["seed"]} {r["bpd"]["bpd"]:.4f}'
                            for r in sorted(rs, key=lambda r: r['seed']))
      for arm, rs in rows.items()) + '.']
  return lines


def write(runs: dict, docs: str, command: str, device: str, steps: dict,
          kind: str = 'cpu') -> None:
  """The paired block of docs/RESULTS.md (per device) from the finished runs.

  runs: {name: result dict}; B runs carry 'arm', 'unit', 'seed', 'bpd', 'moved'.
  """
  values, moved = {}, {}
  for r in runs.values():
    if r.get('phase') != 'B' or r.get('bpd') is None:
      continue
    for unit in ([r['unit']] if r['unit'] else ['map', 'channel']):
      values.setdefault(unit, {}).setdefault(r['arm'], {})[r['seed']] = r['bpd']
  for r in runs.values():
    if r.get('phase') == 'A' and 'moved' in r:
      for unit, m in r['moved'].items():
        moved.setdefault(unit, {})[r['seed']] = m
  tables = {unit: {c: paired(v, *c) for c in COMPARISONS} for unit, v in sorted(values.items())}
  lines = [
      f'Device: {device}. Made by (resumable; rewrites this block after every run):', '',
      '```bash', command, '```', '',
      f'Phase A trains the vanilla model for {steps["a"]} steps per seed; its u_1 units are '
      f'scored on {steps["score_images"]} training images by `dataset_kl` (each element\'s '
      'KL to N(0, 1) over the images); phase B continues that checkpoint for '
      f'{steps["b"]} more steps under each fixed order, with the same data order and noise. '
      'Test bits/dim over all 10,000 test images with the same dequantisation key in every '
      'arm. A cell is mean ± standard error of the per-seed differences (negative: the first '
      'arm is better), then the differences per seed. An effect is real only if its sign '
      'holds in every seed and |mean| > 2 standard errors.', '',
      '| unit | B1 - B0 (vs identity) | B1 - B2 (vs reverse) | B1 - B3 (vs random) |',
      '|---|---|---|---|']
  for unit, comps in tables.items():
    lines.append(f'| {unit} | ' + ' | '.join(_cell(comps[c]) for c in COMPARISONS) + ' |')
  lines += ['', 'Units B1 moves across the split, per seed (0: B1 is the identity): ' + '; '.join(
      f'{unit} ' + ', '.join(f's{s} {m}' for s, m in sorted(ms.items()))
      for unit, ms in sorted(moved.items())) + '.', '', 'Test bits/dim per arm and seed:', '']
  for unit, arms in sorted(values.items()):
    for arm in ARMS:
      if arm in arms:
        lines.append(f'- {unit} {arm}: ' + ', '.join(
            f's{s} {v:.4f}' for s, v in sorted(arms[arm].items())))
  lines += ['', 'Verdict (computed):', ''] + verdict_lines(tables)
  lines += scratch_lines(runs, steps)
  ablation_report.replace_block(os.path.join(docs, 'RESULTS.md'), '\n'.join(lines),
                                '# Results', (BEGIN.replace('tables', f'tables {kind}'),
                                              END.replace('tables', f'tables {kind}')))
