"""The device check's report: device_check.json (everything) and device_check.md
(one table, for docs/PERFORMANCE.md). Ratios that need two phases (EIW against the
peer, the short compile's step against the fully autotuned one) are worked out here.
"""
from __future__ import annotations

import json
import os


def _num(x, fmt='.3g'):
  return '-' if x is None else format(x, fmt)


def _gb(x):
  if x is None:
    return '-'
  return f'{x / 1e9:.2f} GB' if x >= 1e8 else f'{x / 1e6:.2f} MB'


def derived(phases: dict) -> dict:
  """Ratios across phases, where both sides were measured."""
  out = {}
  paper, peer, tuned = (phases.get(k, {}) for k in ('paper', 'peer', 'autotune'))
  if paper.get('status') == 'ok' and peer.get('status') == 'ok':
    out['eiw_over_peer_images_per_s'] = paper['eiw']['images_per_s'] / peer['images_per_s']
    out['peer_batch'] = peer.get('batch')
  if paper.get('status') == 'ok' and tuned.get('status') == 'ok':
    out['short_compile_step_over_autotuned'] = paper['eiw']['step_s'] / tuned['step_s']
  return out


def _start(p):
  if p.get('status') != 'ok':
    return None
  return (f"{p['first_step_s']:.1f} s to the end of the first step (init {p['init_s']:.1f} s, "
          f"step compile {p['compile_s']:.1f} s); process {p['seconds']:.1f} s; peak RSS "
          f"{_gb(p['peak_rss_bytes'])}, device peak {_gb(p.get('device_peak_bytes'))}")


def rows(report: dict) -> list:
  """(what, value, status) per line of the table."""
  ph, out = report['phases'], []
  add = lambda what, value, name: out.append(
      (what, value or ph.get(name, {}).get('reason', '-'), ph.get(name, {}).get('status', '-')))
  t = ph.get('tests', {})
  add('tests on the device', 'seconds' in t and (
      f"{t['passed']} passed, {t['failed']} failed, {t['error']} errors, {t['skipped']} "
      f"skipped in {t['seconds']:.0f} s" + (f": {', '.join(t['not_passed'])}" if t['not_passed']
                                            else '')), 'tests')
  add('start-up, empty compilation cache', _start(ph.get('cold', {})), 'cold')
  add('start-up, the cache warm', _start(ph.get('warm', {})), 'warm')
  p = ph.get('paper', {})
  ok = p.get('status') == 'ok'
  for name, label in (('eiw', 'EIW'), ('vanilla', 'vanilla'), ('eiw_bf16', 'EIW, bfloat16')):
    add(f'training step, {label}, batch {report["options"]["batch"]}', ok and (
        f"{p[name]['images_per_s']:.1f} images/s ({p[name]['step_s'] * 1e3:.1f} ms/step; "
        f"rounds {', '.join(f'{s * 1e3:.1f}' for s in p[name]['round_step_s'])}); XLA's "
        f"peak {_gb(p[name]['peak_memory_bytes'])}"),
        'paper')
  add('EIW / vanilla step time', ok and _num(p['eiw_step_time_over_vanilla'], '.4f'), 'paper')
  add('bfloat16 speed-up; its loss minus float32', ok and (
      f"{p['bf16_speedup']:.3f}x; {p['bf16_loss_minus_float32']:+.3g} nats (float32: "
      f"{p['eiw']['trained_loss']:.6g}, after {p['trained_steps']} steps)"), 'paper')
  add('device peak memory over the three models', ok and _gb(p.get('device_peak_bytes')), 'paper')
  two = ph.get('two', {})
  add('1 against 2 devices', two.get('status') == 'ok' and f"{two['compared']} arrays agree", 'two')
  d = report.get('derived', {})
  peer = ph.get('peer', {})
  add("DenseFlow's PyTorch step", peer.get('status') == 'ok' and (
      f"{peer['images_per_s']:.1f} images/s at batch {peer.get('batch')}; EIW / peer "
      f"{_num(d.get('eiw_over_peer_images_per_s'))}"), 'peer')
  tuned = ph.get('autotune', {})
  add("XLA's default autotuning: start-up; step", tuned.get('status') == 'ok' and (
      f"{tuned['first_step_s']:.1f} s to the first step; {tuned['step_s'] * 1e3:.1f} ms/step; "
      "the short compile's step / this one: "
      f"{_num(d.get('short_compile_step_over_autotuned'), '.3f')}"),
      'autotune')
  return out


def markdown(report: dict) -> str:
  m = report.get('machine', {})
  head = (f"Device check, {report['started']}: {m.get('device_kind', '?')} "
          f"({m.get('backend', '?')}, {len(m.get('devices', []))} device(s)), jax {m.get('jax')}, "
          f"jaxlib {m.get('jaxlib')}, flax {m.get('flax')}, Python {m.get('python')}, "
          f"{m.get('cpu_count')} CPUs ({m.get('cpu')}, load {m.get('load')}). "
          f"Command: `{report['command']}`; autotune level "
          f"{report['options']['autotune_level'] or 'default'} except where said.\n")
  if report.get('missing_packages'):
    return head + f"\nNot run: missing Python packages {report['missing_packages']}.\n"
  lines = ['| what | value | status |', '|---|---|---|']
  lines += [f'| {w} | {v} | {s} |' for w, v, s in rows(report)]
  return head + '\n' + '\n'.join(lines) + '\n'


def write(report: dict, out: str) -> None:
  report['derived'] = derived(report.get('phases', {}))
  with open(os.path.join(out, 'device_check.json'), 'w') as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(out, 'device_check.md'), 'w') as f:
    f.write(markdown(report))
