"""Property tests (hypothesis) for the planner's invariants over random specs and loads."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dopd_builders import T0, make_obs, make_spec
from dopd_operator.api import DisaggregatedModelSpec
from dopd_operator.planner import plan
from dopd_operator.planner_types import PlannerState
from dopd_operator.safety import Layout, gpus

rates = st.floats(min_value=0.0, max_value=300.0, allow_nan=False)
lengths = st.floats(min_value=1.0, max_value=16000.0, allow_nan=False)
outputs = st.floats(min_value=1.0, max_value=2000.0, allow_nan=False)
counts = st.integers(min_value=0, max_value=40)


@st.composite
def specs(draw: st.DrawFn) -> DisaggregatedModelSpec:
    pmin, dmin = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    pmax, dmax = pmin + draw(st.integers(1, 40)), dmin + draw(st.integers(1, 40))
    pg, dg = draw(st.sampled_from([1, 2, 8])), draw(st.sampled_from([1, 2, 8]))
    budget = draw(st.one_of(st.none(), st.integers(pmin * pg + dmin * dg, 200).filter(lambda b: b >= 1)))
    lo = draw(st.floats(0.1, 2.0))
    hi = lo * draw(st.floats(1.0, 10.0))
    return make_spec(
        prefill={"minReplicas": pmin, "maxReplicas": pmax, "gpusPerReplica": pg},
        decode={"minReplicas": dmin, "maxReplicas": dmax, "gpusPerReplica": dg},
        profile={"preset": draw(st.sampled_from(["llama3-8b-h100", "opt-13b-a100"]))},
        scaling={
            "gpuBudget": budget,
            "ratioBand": {"min": lo, "max": hi},
            "scaleUp": {"maxStepReplicas": draw(st.integers(1, 8)), "stabilizationSeconds": 0},
            "scaleDown": {
                "maxStepReplicas": draw(st.integers(1, 8)),
                "stabilizationSeconds": draw(st.sampled_from([0, 300])),
            },
            "tolerance": draw(st.sampled_from([0.0, 0.1])),
        },
    )


COMMON = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(spec=specs(), rate=rates, isl=lengths, osl=outputs, p=counts, d=counts)
def test_bounds_and_budget_always_hold(
    spec: DisaggregatedModelSpec, rate: float, isl: float, osl: float, p: int, d: int
) -> None:
    decision = plan(
        spec, make_obs(rate=rate, isl=isl, osl=osl, prefill=p, decode=d), None, PlannerState(), T0
    )
    assert spec.prefill.min_replicas <= decision.prefill <= spec.prefill.max_replicas
    assert spec.decode.min_replicas <= decision.decode <= spec.decode.max_replicas
    if spec.scaling.gpu_budget is not None:
        assert decision.gpus <= spec.scaling.gpu_budget
    assert decision.gpus == gpus(Layout(decision.prefill, decision.decode), spec)


@COMMON
@given(spec=specs(), rate=rates, extra=st.floats(0.0, 200.0), isl=lengths, osl=outputs)
def test_more_load_never_yields_fewer_replicas(
    spec: DisaggregatedModelSpec, rate: float, extra: float, isl: float, osl: float
) -> None:
    """Raw and shaped targets (bounds, ratio band, budget) are monotone in the arrival rate.
    Steps and windows are taken out of play by starting each from the target itself."""
    low = plan(spec, make_obs(rate=rate, isl=isl, osl=osl, prefill=0, decode=0), None, PlannerState(), T0)
    high = plan(
        spec, make_obs(rate=rate + extra, isl=isl, osl=osl, prefill=0, decode=0), None, PlannerState(), T0
    )
    assert high.raw_prefill >= low.raw_prefill
    assert high.raw_decode >= low.raw_decode
    # after bounds, ratio band and budget too (steps and tolerance out of play)
    free = spec.model_copy(
        update={
            "scaling": spec.scaling.model_copy(
                update={
                    "scale_up": spec.scaling.scale_up.model_copy(update={"max_step_replicas": 1000}),
                    "tolerance": 0.0,
                }
            )
        }
    )
    lo = plan(free, make_obs(rate=rate, isl=isl, osl=osl, prefill=0, decode=0), None, PlannerState(), T0)
    hi = plan(
        free, make_obs(rate=rate + extra, isl=isl, osl=osl, prefill=0, decode=0), None, PlannerState(), T0
    )
    assert hi.prefill >= lo.prefill and hi.decode >= lo.decode


@COMMON
@given(spec=specs(), rate=rates, isl=lengths, longer=st.floats(0.0, 8000.0), osl=outputs)
def test_longer_prompts_never_need_fewer_replicas(
    spec: DisaggregatedModelSpec, rate: float, isl: float, longer: float, osl: float
) -> None:
    a = plan(spec, make_obs(rate=rate, isl=isl, osl=osl, prefill=0, decode=0), None, PlannerState(), T0)
    b = plan(
        spec, make_obs(rate=rate, isl=isl + longer, osl=osl, prefill=0, decode=0), None, PlannerState(), T0
    )
    assert b.raw_prefill >= a.raw_prefill and b.raw_decode >= a.raw_decode


@COMMON
@given(spec=specs(), rate=rates, p=counts, d=counts)
def test_ratio_stays_in_band_when_bounds_and_budget_allow(
    spec: DisaggregatedModelSpec, rate: float, p: int, d: int
) -> None:
    free = spec.model_copy(
        update={
            "scaling": spec.scaling.model_copy(
                update={
                    "gpu_budget": None,
                    "tolerance": 0.0,
                    "scale_up": spec.scaling.scale_up.model_copy(update={"max_step_replicas": 1000}),
                    "scale_down": spec.scaling.scale_down.model_copy(
                        update={"max_step_replicas": 1000, "stabilization_seconds": 0.0}
                    ),
                }
            )
        }
    )
    decision = plan(free, make_obs(rate=rate, prefill=p, decode=d), None, PlannerState(), T0)
    band = spec.scaling.ratio_band
    at_a_bound = decision.prefill == spec.prefill.max_replicas or decision.decode == spec.decode.max_replicas
    if decision.decode > 0 and decision.prefill > 0 and not at_a_bound:
        assert band.min - 1e-9 <= decision.prefill / decision.decode <= band.max + 1e-9


@COMMON
@given(spec=specs(), rate=rates, p=counts, d=counts)
def test_same_inputs_same_decision(spec: DisaggregatedModelSpec, rate: float, p: int, d: int) -> None:
    obs = make_obs(rate=rate, prefill=p, decode=d)
    assert plan(spec, obs, None, PlannerState(), T0) == plan(spec, obs, None, PlannerState(), T0)


@COMMON
@given(spec=specs(), peak=st.floats(50.0, 300.0), after_s=st.floats(1.0, 299.0))
def test_scale_down_respects_its_window(spec: DisaggregatedModelSpec, peak: float, after_s: float) -> None:
    windowed = spec.model_copy(
        update={
            "scaling": spec.scaling.model_copy(
                update={
                    "scale_down": spec.scaling.scale_down.model_copy(
                        update={
                            "stabilization_seconds": 300.0,
                            "max_step_replicas": 1000,
                            "max_step_percent": 100.0,
                        }
                    )
                }
            )
        }
    )
    first = plan(windowed, make_obs(rate=peak, prefill=0, decode=0), None, PlannerState(), T0)
    calm = make_obs(rate=0.0, prefill=first.prefill, decode=first.decode)
    second = plan(windowed, calm, None, first.state, T0 + timedelta(seconds=after_s))
    assert second.prefill >= first.prefill and second.decode >= first.decode
