"""The paired Shuffle experiment's arms and statistics (experiments/paired_report.py)."""
import math

import numpy as np

from experiments import paired_report


def test_arms_from_scores():
  scores = [0.1, 2.0, 0.2, 3.0, 0.05, 1.0, 0.3, 0.0]  # units 1, 3, 5, 6 score highest
  orders = paired_report.arm_orders(scores, seed=0)
  assert orders['B0'] == list(range(8))
  assert orders['B1'] == [1, 3, 5, 6, 0, 2, 4, 7]  # the paper's direction, halves in order
  assert orders['B2'] == [0, 2, 4, 7, 1, 3, 5, 6]  # its reverse
  assert orders['moved'] == 2  # units 5, 6 move in, two of 0..3 move out
  b3 = set(orders['B3'][:4])
  assert len(b3 - {0, 1, 2, 3}) == 2 and b3 not in ({1, 3, 5, 6}, {0, 2, 4, 7})
  assert orders['B3'][:4] == sorted(orders['B3'][:4])
  # Seeded: the same seed draws the same B3, another seed (usually) another.
  assert paired_report.arm_orders(scores, seed=0)['B3'] == orders['B3']


def test_no_random_arm_when_the_paper_direction_is_the_identity_or_unique():
  same = paired_report.arm_orders([3.0, 2.0, 0.1, 0.2], seed=1)
  assert same['B1'] == same['B0'] and same['moved'] == 0 and same['B3'] is None
  swap = paired_report.arm_orders([0.1, 0.2, 3.0, 2.0], seed=1)  # all of 4 units move
  assert swap['moved'] == 2 and swap['B2'] == swap['B0'] and swap['B3'] is None


def test_paired_statistics_and_the_rule_for_a_real_effect():
  values = {'B1': {0: 4.0, 1: 4.1, 2: 4.3}, 'B0': {0: 4.2, 1: 4.25, 2: 4.5, 3: 9.0}}
  p = paired_report.paired(values, 'B1', 'B0')
  d = np.array([-0.2, -0.15, -0.2])
  assert p['seeds'] == [0, 1, 2]
  np.testing.assert_allclose(p['diffs'], d)
  np.testing.assert_allclose(p['mean'], d.mean())
  np.testing.assert_allclose(p['se'], d.std(ddof=1) / math.sqrt(3))
  assert p['real']  # every sign negative, |mean| > 2 SE
  values['B1'][2] = 4.6  # one seed the other way: not real
  assert not paired_report.paired(values, 'B1', 'B0')['real']
  assert not paired_report.paired({'B1': {0: 1.0}, 'B0': {0: 2.0}}, 'B1', 'B0')['real']


def test_the_block_is_written_between_its_markers(tmp_path):
  (tmp_path / 'RESULTS.md').write_text('# Results\n\nhand-written verdict\n')
  runs = {f'B{a}_map_s{s}': dict(phase='B', arm=f'B{a}', unit='map', seed=s, bpd=4.0 + a + s / 10)
          for a in (1, 2) for s in range(3)}
  runs.update({f'B0_s{s}': dict(phase='B', arm='B0', unit=None, seed=s, bpd=4.0 + s / 10)
               for s in range(3)})
  paired_report.write(runs, str(tmp_path), 'python experiments/shuffle_paired.py', 'a CPU',
                      dict(a=30, b=30, scratch=20, score_images=64))
  text = (tmp_path / 'RESULTS.md').read_text()
  assert text.startswith('# Results\n\nhand-written verdict')
  block = text.split(paired_report.BEGIN.replace('tables', 'tables cpu'))[1]
  assert '| map | +1.0000 ± 0.0000 (' in block  # B1 - B0 = 1 in every seed
  assert 'unit = map, B1 - B2: -1.0000' in block
