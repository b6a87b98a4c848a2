"""The checked mode: the API's value checks enforced inside `jax.jit`.

Outside `jax.jit` the API reads concrete values and refuses bad ones at once
(checks.py). Inside a jitted function values are abstract, so by default only
shapes and dtypes are checked. `checked(fun)` compiles `fun` with
`jax.experimental.checkify`: every value check of the API functions that `fun`
calls (integer images within [0, 2^b), continuous inputs within range, finite
latents, a temperature >= 0) becomes part of the program, and a call whose
inputs fail one raises `UserError` with the same one-line message, after the
computation. The checks cost a reduction per input per call; `fun` alone, jitted
as usual, has none.
"""
from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable

import jax
from jax.experimental import checkify

from eiw_jax.errors import UserError

_TRACING_CHECKED = contextvars.ContextVar('eiw_jax_tracing_checked', default=False)


def active() -> bool:
  """True while a function given to `checked` is being traced."""
  return _TRACING_CHECKED.get()


def require(ok, message: str, **values) -> None:
  """In the checked mode, fails the call with `message` where the traced boolean `ok`
  is False; `message`'s `{name}` fields are filled from `values` (arrays) at run time.
  Outside it, does nothing."""
  if active():
    checkify.check(ok, message, **values)


def checked(fun: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
  """`jax.jit(fun, **jit_kwargs)` with the API's value checks enforced inside it.

  Calling the result runs the compiled program and raises `UserError` (one line)
  when an input failed a check; otherwise it returns `fun`'s output. Every argument
  is traced, so Python values such as `n` of `sample` are closed over:

      log_prob = eiw_jax.checked(lambda v, x, k: eiw_jax.log_prob(model, v, x, k))
      log_prob(variables, images, key)   # UserError if an image value is out of range
  """

  def traced(*args, **kwargs):
    token = _TRACING_CHECKED.set(True)
    try:
      return fun(*args, **kwargs)
    finally:
      _TRACING_CHECKED.reset(token)

  program = jax.jit(checkify.checkify(traced, errors=checkify.user_checks), **jit_kwargs)

  @functools.wraps(fun)
  def call(*args, **kwargs):
    error, out = program(*args, **kwargs)
    message = error.get()
    if message:
      raise UserError(message.replace(' (`check` failed)', '').splitlines()[0])
    return out

  return call
