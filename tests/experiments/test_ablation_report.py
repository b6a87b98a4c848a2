"""The ablation report (experiments/ablation_report.py): the continuous-flow block is
written beside the Glow one, from the runs' result.json, keeping the hand-written text."""
import json
import os

import numpy as np

from experiments import ablation_report


def _run(arm, seed, bpd, kl_weight=1e-4):
  return dict(name=f'{arm}_s{seed}', arm=arm, seed=seed, kl_weight=kl_weight, steps=500,
              bpd=dict(bpd=bpd, bpd_iw=bpd, num_examples=2000, iw_samples=1),
              train_bpd_last=bpd + 0.1, entropy=dict(test=[]),
              split_changes_1=3 if arm == 'likelihood' else 0,
              split_changes_1_after_warmup=1 if arm == 'likelihood' else 0)


def test_cnf_block_is_computed_from_the_runs_and_keeps_the_rest(tmp_path):
  runs = tmp_path / 'runs'
  bpds = {'vanilla': (6.0, 6.2), 'random': (6.3, 6.5), 'likelihood': (6.9, 7.3)}
  for arm, values in bpds.items():
    for seed, bpd in enumerate(values):
      os.makedirs(runs / f'{arm}_s{seed}')
      (runs / f'{arm}_s{seed}' / 'result.json').write_text(json.dumps(_run(arm, seed, bpd)))
  docs = tmp_path / 'docs'
  os.makedirs(docs)
  hand = ('# The Shuffle ablation\n\nhand-written reading\n\n'
          f'{ablation_report.BEGIN}\nglow tables\n{ablation_report.END}\n\nmore hand text\n')
  (docs / 'RESULTS.md').write_text(hand)

  results = ablation_report.load_results(str(runs))
  ablation_report.write_cnf(results, str(docs), 'python experiments/shuffle_ablation.py')
  text = (docs / 'RESULTS.md').read_text()
  assert text.startswith(hand.rstrip())  # everything before is kept, the block appended
  block = text.split(ablation_report.CNF_BEGIN)[1].split(ablation_report.CNF_END)[0]
  for arm, values in bpds.items():
    mean, std = np.mean(values), np.std(values, ddof=1)
    assert f'| {arm} | 2 | {mean:.4f} ± {std:.4f} |' in block, arm
  assert '| likelihood | 2 | 7.1000 ± 0.2828 | 7.2000 ± 0.2828 | 3/1, 3/1 |' in block
  assert '**likelihood**: +1.0000 bits/dim against vanilla' in block
  assert 'worse by more than the spread' in block
  assert (docs / 'shuffle_ablation_cnf.png').stat().st_size > 0

  # A second write replaces the block instead of adding one.
  ablation_report.write_cnf(results, str(docs), 'python experiments/shuffle_ablation.py')
  again = (docs / 'RESULTS.md').read_text()
  assert again == text and again.count(ablation_report.CNF_BEGIN) == 1
