"""Pacing schedules: pure functions of the training step to a competence in (0, 1].

Competence ``c`` is the share of the difficulty range admitted: with ``N`` samples, the easiest
``admitted(step, N) = ceil(c * N)`` by rank. A pacing holds no hidden state - it *is* its
config - so it prints, round-trips through ``to_config()`` / :func:`from_config`, and can be
evaluated at any step (resume needs nothing but the step).

=====================  ===========================================================  =========================
class                  competence c(t)                                              reference
=====================  ===========================================================  =========================
``Linear``             ``min(1, t (1 - c0) / T + c0)``                              Platanios et al. 2019
``Root``               ``min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``                  Platanios et al. 2019
``Exponential``        ``min(1, start * inc^floor(t / step_length))``               Hacohen & Weinshall 2019
``FixedLinear``        DeepSpeed ``fixed_linear``: integer difficulty / max         DeepSpeed curriculum
``FixedRoot``          DeepSpeed ``fixed_root`` (degree-th root)                    DeepSpeed curriculum
``FixedDiscrete``      DeepSpeed ``fixed_discrete``                                 DeepSpeed curriculum
``Wu``                 ``b + (1 - b) h(t / aT)``, h in linear/quad/root/step/exp/log  Wu et al. 2021
``Cosine``             ``c0 + (1 - c0) (1 - cos(pi t / T)) / 2``                    (cosine ramp)
``Constant``           ``value`` (1.0 = the uniform baseline)
``FromCallable``       a user function, checked to reach 1 by ``steps``
``SelfPaced``          admit samples with loss < ``lambda0 * growth^epoch``          Kumar et al. 2010
=====================  ===========================================================  =========================

Every schedule that claims to reach full competence is checked to do so at construction: a
schedule that would stall below 1 is an error, not a silent plateau.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from ._util import checks as C

_EPS = 1e-9


class Pacing:
    """Base class. Subclasses implement :meth:`competence` and list their config ``fields``.

    Example:
        >>> class Half(Pacing):
        ...     def competence(self, step):
        ...         return 0.5
        >>> Half()(10), Half().admitted(10, n=7)
        (0.5, 4)
    """

    fields: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str] = "pacing"

    def competence(self, step: float) -> float:  # pragma: no cover - abstract
        """The admitted share of the data at ``step``, in (0, 1] (``pacing(step)`` calls it)."""
        raise NotImplementedError

    def __call__(self, step: float) -> float:
        if isinstance(step, bool) or not isinstance(step, (int, float, np.integer, np.floating)):
            raise TypeError(f"step: expected a number >= 0, got {type(step).__name__} {step!r}")
        if not math.isfinite(step) or step < 0:
            raise ValueError(f"step: expected a finite step >= 0, got {step}")
        return float(min(1.0, max(self.competence(step), 0.0)))

    def admitted(self, step: float, n: int) -> int:
        """How many of ``n`` samples (easiest first) are admitted at ``step``: ``ceil(c * n)``, at least 1."""
        return int(self.admit(np.array([self(step)]), np.array([n]))[0])

    def admit(self, competence: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Vectorised admission rounding (the one place it lives): admitted counts for
        competences ``competence`` over pools of ``n`` samples (broadcast), at least 1, at most n.
        ``ceil(c * n)`` here; a schedule whose reference rounds otherwise overrides it."""
        return np.clip(np.ceil(np.asarray(competence, np.float64) * n - 1e-7), 1, n).astype(np.int64)

    @property
    def end_step(self) -> int | None:
        """First step with competence 1 (None when the schedule is not step-driven)."""
        return None

    def to_config(self) -> dict[str, Any]:
        """Plain values that :func:`from_config` turns back into an equal schedule."""
        return {"name": self.name, **{f: _plain(getattr(self, f)) for f in self.fields}}

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.fields)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_config() == other.to_config()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(repr(self))

    def curve(self, steps: Sequence[int] | np.ndarray) -> np.ndarray:
        """Competence at each of ``steps`` (for plots)."""
        return np.array([self(int(s)) for s in steps])

    def _check_reaches_one(self) -> None:
        end = self.end_step
        if end is not None and self(end) < 1.0 - 1e-9:
            raise ValueError(f"{type(self).__name__}: competence only reaches {self(end):.6g} at step {end}, "
                             "expected 1 (a schedule that never admits all data stalls training)")


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _start(start: Any) -> float:
    return C.finite_float(start, "start", 0.0, 1.0, low_open=True)


def _steps(steps: Any, name: str = "steps") -> int:
    return C.positive_int(steps, name)


class Linear(Pacing):
    """Platanios et al. 2019 linear competence: ``c(t) = min(1, t (1 - c0) / T + c0)``.

    Example:
        >>> round(Linear(start=0.01, steps=1000)(250), 4)
        0.2575
    """

    fields = ("start", "steps")
    name = "linear"

    def __init__(self, start: float = 0.1, steps: int = 1000) -> None:
        self.start, self.steps = _start(start), _steps(steps)

    def competence(self, step: float) -> float:
        if step >= self.steps:
            return 1.0
        return step * (1 - self.start) / self.steps + self.start

    @property
    def end_step(self) -> int:
        return self.steps


class Root(Pacing):
    """Platanios et al. 2019 root competence with the p-th root (``degree``; 2 = square root).

    ``c(t) = min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``.

    Example:
        >>> round(Root(start=0.01, steps=1000)(10), 4)
        0.1005
    """

    fields = ("start", "steps", "degree")
    name = "root"

    def __init__(self, start: float = 0.1, steps: int = 1000, degree: float = 2) -> None:
        self.start, self.steps = _start(start), _steps(steps)
        self.degree = C.finite_float(degree, "degree", 0.0, low_open=True)

    def competence(self, step: float) -> float:
        if step >= self.steps:
            return 1.0
        p = self.degree
        c0p = self.start ** p
        return (step * (1 - c0p) / self.steps + c0p) ** (1.0 / p)

    @property
    def end_step(self) -> int:
        return self.steps


class Exponential(Pacing):
    """Hacohen & Weinshall 2019 fixed exponential pacing: ``min(1, start * inc^floor(t / step_length))``.

    Example:
        >>> Exponential(start=0.04, inc=1.9, step_length=100).admitted(300, 50_000)
        13718
    """

    fields = ("start", "inc", "step_length")
    name = "exponential"

    def __init__(self, start: float = 0.04, inc: float = 1.9, step_length: int = 100) -> None:
        self.start = _start(start)
        self.inc = C.finite_float(inc, "inc", 1.0, low_open=self.start < 1.0)
        self.step_length = _steps(step_length, "step_length")

    def competence(self, step: float) -> float:
        return self.start * self.inc ** math.floor(step / self.step_length)

    @property
    def end_step(self) -> int:
        if self.start >= 1.0:
            return 0
        return self.step_length * math.ceil(math.log(1.0 / self.start) / math.log(self.inc) - 1e-12)


class _DeepSpeedFixed(Pacing):
    fields = ("min_difficulty", "max_difficulty", "total_steps", "difficulty_step")

    def __init__(self, min_difficulty: int, max_difficulty: int, total_steps: int, difficulty_step: int = 1) -> None:
        self.min_difficulty = C.positive_int(min_difficulty, "min_difficulty")
        self.max_difficulty = C.positive_int(max_difficulty, "max_difficulty")
        if self.max_difficulty <= self.min_difficulty:
            raise ValueError(f"max_difficulty: expected more than min_difficulty={min_difficulty}, got {max_difficulty}")
        self.total_steps = _steps(total_steps, "total_steps")
        self.difficulty_step = C.positive_int(difficulty_step, "difficulty_step")
        if self.max_difficulty % self.difficulty_step:
            raise ValueError(f"max_difficulty: expected a multiple of difficulty_step={difficulty_step}, got "
                             f"{max_difficulty} (the schedule would stop at "
                             f"{max_difficulty - max_difficulty % difficulty_step} and never reach full competence)")

    def _fraction(self, step: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def difficulty(self, step: float) -> int:
        """DeepSpeed's integer difficulty (e.g. a sequence length) at ``step``."""
        f = math.floor(self._fraction(step) * (self.max_difficulty - self.min_difficulty) + self.min_difficulty)
        f -= f % self.difficulty_step
        return int(min(self.max_difficulty, f))

    def competence(self, step: float) -> float:
        return self.difficulty(step) / self.max_difficulty

    @property
    def end_step(self) -> int:
        return self.total_steps


class FixedLinear(_DeepSpeedFixed):
    """DeepSpeed ``fixed_linear``: ``floor(s/T (max-min) + min)``, rounded down to ``difficulty_step``.

    Example:
        >>> FixedLinear(8, 1024, 30000, difficulty_step=8).difficulty(15000)
        512
    """

    name = "fixed_linear"

    def _fraction(self, step: float) -> float:
        return min(1.0, step / self.total_steps)


class FixedRoot(_DeepSpeedFixed):
    """DeepSpeed ``fixed_root``: ``floor((s/T)^(1/degree) (max-min) + min)``, rounded down to the step.

    Example:
        >>> FixedRoot(1, 100, 110000, degree=2).difficulty(27500)
        50
    """

    fields = _DeepSpeedFixed.fields + ("degree",)
    name = "fixed_root"

    def __init__(self, min_difficulty: int, max_difficulty: int, total_steps: int, difficulty_step: int = 1,
                 degree: float = 2) -> None:
        super().__init__(min_difficulty, max_difficulty, total_steps, difficulty_step)
        self.degree = C.finite_float(degree, "degree", 0.0, low_open=True)

    def _fraction(self, step: float) -> float:
        return min(1.0, step / self.total_steps) ** (1.0 / self.degree)


class FixedDiscrete(Pacing):
    """DeepSpeed ``fixed_discrete``: ``difficulty[i]`` while ``step <= max_step[i]``, then the last.

    Competence is ``difficulty / difficulty[-1]``.

    Example:
        >>> [FixedDiscrete([1, 2, 3], [5, 10]).difficulty(s) for s in (5, 6, 11)]
        [1, 2, 3]
    """

    fields = ("difficulty_levels", "max_step")
    name = "fixed_discrete"

    def __init__(self, difficulty_levels: Sequence[float], max_step: Sequence[int]) -> None:
        lv = [C.finite_float(x, "difficulty_levels", 0.0, low_open=True) for x in difficulty_levels]
        ms = [C.positive_int(x, "max_step", 0) for x in max_step]
        if len(lv) < 1 or len(ms) != len(lv) - 1:
            raise ValueError(f"max_step: expected {len(lv) - 1} entries (one fewer than difficulty_levels), got {len(ms)}")
        if any(b <= a for a, b in zip(lv, lv[1:])) or any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError("difficulty_levels, max_step: expected strictly increasing values")
        self.difficulty_levels, self.max_step = tuple(lv), tuple(ms)

    def difficulty(self, step: float) -> float:
        """The difficulty level in force at ``step`` (DeepSpeed's discrete schedule)."""
        for d, m in zip(self.difficulty_levels, self.max_step):
            if step <= m:
                return _int_if_whole(d)
        return _int_if_whole(self.difficulty_levels[-1])

    def competence(self, step: float) -> float:
        return self.difficulty(step) / self.difficulty_levels[-1]

    @property
    def end_step(self) -> int:
        return (self.max_step[-1] + 1) if self.max_step else 0


def _int_if_whole(x: float) -> float:
    return int(x) if float(x).is_integer() else x


class Wu(Pacing):
    """The pacing family of Wu, Dyer & Neyshabur 2021 ("When do curricula work?").

    With ``b`` the initial share and ``a`` the share of ``total_steps`` after which all data is
    used, the admitted count is ``g(s) = bN + (1 - b) N h(s / aT)`` with ``h``: ``linear`` x,
    ``quad`` x^2, ``root`` sqrt(x), ``step`` floor(x), ``exp`` (e^{cx} - 1)/(e^c - 1),
    ``log`` 1 + log(x + e^{-c}) / c; counts are rounded down (``floor(g)``) as in the paper.

    Example:
        >>> Wu("root", b=0.2, a=0.8, total_steps=1000).admitted(400, 50_000)
        38284
    """

    fields = ("kind", "b", "a", "total_steps", "c")
    name = "wu"
    KINDS = ("linear", "quad", "root", "step", "exp", "log")

    def __init__(self, kind: str = "linear", b: float = 0.2, a: float = 0.8, total_steps: int = 1000,
                 c: float = 10.0) -> None:
        self.kind = C.choice(kind, "kind", self.KINDS)
        self.b = C.finite_float(b, "b", 0.0, 1.0, low_open=True)
        self.a = C.finite_float(a, "a", 0.0, 1.0, low_open=True)
        self.total_steps = _steps(total_steps, "total_steps")
        self.c = C.finite_float(c, "c", 0.0, low_open=True)

    def _h(self, x: float) -> float:
        x = min(max(x, 0.0), 1.0) if self.kind != "step" else max(x, 0.0)
        if self.kind == "linear":
            return x
        if self.kind == "quad":
            return x * x
        if self.kind == "root":
            return math.sqrt(x)
        if self.kind == "step":
            return float(math.floor(x + 1e-12))
        if self.kind == "exp":
            return (math.exp(self.c * x) - 1.0) / (math.exp(self.c) - 1.0)
        return 1.0 + math.log(x + math.exp(-self.c)) / self.c

    def competence(self, step: float) -> float:
        return self.b + (1.0 - self.b) * self._h(step / (self.a * self.total_steps))

    def admit(self, competence: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Counts rounded down (``floor(g)``), as in the paper."""
        return np.clip(np.floor(np.asarray(competence, np.float64) * n + 1e-7), 1, n).astype(np.int64)

    @property
    def end_step(self) -> int:
        return int(math.ceil(self.a * self.total_steps))


class Cosine(Pacing):
    """Half-cosine ramp from ``start`` to 1 over ``steps``.

    Example:
        >>> Cosine(start=0.2, steps=100)(50)
        0.6
    """

    fields = ("start", "steps")
    name = "cosine"

    def __init__(self, start: float = 0.1, steps: int = 1000) -> None:
        self.start, self.steps = _start(start), _steps(steps)

    def competence(self, step: float) -> float:
        x = min(step / self.steps, 1.0)
        return round(self.start + (1 - self.start) * (1 - math.cos(math.pi * x)) / 2, 12)

    @property
    def end_step(self) -> int:
        return self.steps


class Constant(Pacing):
    """Constant competence. ``Constant(1.0)`` admits everything: the uniform baseline.

    A value below 1 never admits the whole dataset, so it needs ``partial=True`` to say that a
    fixed easy subset is what is wanted.

    Example:
        >>> Constant(1.0)(12345)
        1.0
    """

    fields = ("value", "partial")
    name = "constant"

    def __init__(self, value: float = 1.0, partial: bool = False) -> None:
        self.value = C.finite_float(value, "value", 0.0, 1.0, low_open=True)
        self.partial = bool(partial)
        if self.value < 1.0 and not self.partial:
            raise ValueError(f"value: Constant({value}) never reaches full competence; pass partial=True to train "
                             "on a fixed easiest share on purpose")

    def competence(self, step: float) -> float:
        return self.value

    @property
    def end_step(self) -> int | None:
        return 0 if self.value >= 1.0 else None


class FromCallable(Pacing):
    """A user function ``fn(step) -> competence``, checked to reach 1 by ``steps``.

    For :func:`from_config` round trips ``fn`` must be importable (``module:qualname``).

    Example:
        >>> FromCallable(lambda t: min(1.0, 0.1 + t / 100), steps=90)(45)
        0.55
    """

    fields = ("fn", "steps")
    name = "callable"

    def __init__(self, fn: Callable[[float], float] | str, steps: int) -> None:
        if isinstance(fn, str):
            mod, _, qual = fn.partition(":")
            obj: Any = importlib.import_module(mod)
            for part in qual.split("."):
                obj = getattr(obj, part)
            fn = obj
        if not callable(fn):
            raise TypeError(f"fn: expected a callable step -> competence, got {type(fn).__name__}")
        self._fn = fn
        self.steps = _steps(steps)
        for s in np.linspace(0, self.steps, 9):
            v = fn(float(s))
            if not isinstance(v, (int, float, np.floating, np.integer)) or not (0.0 < float(v) <= 1.0 + _EPS):
                raise ValueError(f"fn: expected a competence in (0, 1] at step {s:g}, got {v!r}")
        self._check_reaches_one()

    @property
    def fn(self) -> str:
        """The wrapped callable's ``module:qualname`` (what a saved config records)."""
        f = self._fn
        return f"{getattr(f, '__module__', '?')}:{getattr(f, '__qualname__', repr(f))}"

    def competence(self, step: float) -> float:
        return float(self._fn(float(step)))

    @property
    def end_step(self) -> int:
        return self.steps


class SelfPaced(Pacing):
    """Self-paced learning (Kumar et al. 2010): admit samples whose loss is below ``lambda``.

    ``threshold(epoch) = lambda0 * growth^epoch``; ``growth > 1`` so that every sample is
    eventually admitted. Use with difficulty scores that are losses (e.g. a
    :class:`~curriculum.Recorder`'s ``loss_ema``); the sampler admits by score, not by rank.

    Example:
        >>> SelfPaced(lambda0=0.5, growth=2.0).threshold(2)
        2.0
    """

    fields = ("lambda0", "growth")
    name = "self_paced"

    def __init__(self, lambda0: float = 1.0, growth: float = 1.1) -> None:
        self.lambda0 = C.finite_float(lambda0, "lambda0", 0.0, low_open=True)
        self.growth = C.finite_float(growth, "growth", 1.0, low_open=True)

    def threshold(self, epoch: int) -> float:
        """The loss threshold of ``epoch``: samples with a lower loss are admitted."""
        return self.lambda0 * self.growth ** int(epoch)

    def admit(self, losses: np.ndarray, epoch: int) -> np.ndarray:
        """Mask of samples admitted at ``epoch`` (loss strictly below the threshold)."""
        return np.asarray(losses) < self.threshold(epoch)

    def competence(self, step: float) -> float:
        return 1.0  # admission is decided per sample by threshold(), not by a share


REGISTRY: dict[str, type[Pacing]] = {cls.name: cls for cls in
                                     (Linear, Root, Exponential, FixedLinear, FixedRoot, FixedDiscrete, Wu, Cosine,
                                      Constant, FromCallable, SelfPaced)}


def from_config(config: dict[str, Any]) -> Pacing:
    """Rebuild a pacing from ``to_config()`` output.

    Example:
        >>> from_config(Root(0.1, 500, degree=3).to_config())
        Root(start=0.1, steps=500, degree=3.0)
    """
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"config: expected a dict with a 'name' key, got {config!r}")
    name = config["name"]
    if name not in REGISTRY:
        raise ValueError(f"config: unknown pacing {name!r}, expected one of {sorted(REGISTRY)}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    return REGISTRY[name](**kwargs)


def as_pacing(p: Any) -> Pacing:
    """Accept a :class:`Pacing`, a config dict, or a plain callable (which must then be a Pacing).

    Example:
        >>> round(as_pacing({"name": "linear", "start": 0.2, "steps": 10})(5), 6)
        0.6
    """
    if isinstance(p, Pacing):
        return p
    if isinstance(p, dict):
        return from_config(p)
    raise TypeError(f"pacing: expected a curriculum.pacing.Pacing or its config dict, got {type(p).__name__} "
                    "(wrap a function with curriculum.pacing.FromCallable(fn, steps))")


__all__ = ['Pacing', 'Linear', 'Root', 'Exponential', 'FixedLinear', 'FixedRoot', 'FixedDiscrete', 'Wu', 'Cosine',
           'Constant', 'FromCallable', 'SelfPaced', 'REGISTRY', 'from_config', 'as_pacing']
