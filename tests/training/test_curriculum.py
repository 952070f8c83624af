"""The curriculum schedule: stages by global step, a gate that is deterministic and resumes
from its recorded state, settings that fail by field name, and the stage's own decoding."""

from __future__ import annotations

import pytest
import torch
from tiny import EXAMPLES, make_model

from training.curriculum import Curriculum, CurriculumSettings, _greedy_after_latents, stage_accuracy


def _run(cur: Curriculum, start: int, end: int) -> tuple[list[int], list[dict]]:
    """Drive the schedule as the trainer does: tag step i, train it, then after_step(i + 1)."""
    stages, events = [], []
    for i in range(start, end):
        stages.append(cur.fields(i)["stage"])
        event = cur.after_step(i + 1)
        if event:
            events.append({"step": i + 1, **event})
    return stages, events


def test_fixed_schedule_is_a_function_of_the_step():
    cur = Curriculum(CurriculumSettings(stages=3, steps_per_stage=2))
    stages, events = _run(cur, 0, 10)
    assert stages == [1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    assert [cur.written_from(i) for i in range(8)] == [1, 1, 2, 2, 3, 3, None, None]
    assert [(e["step"], e["curriculum"]["next_stage"]) for e in events] == [(2, 2), (4, 3), (6, 4)]
    fresh = Curriculum(CurriculumSettings(stages=3, steps_per_stage=2))  # no state needed to know a stage
    assert [fresh.stage_at(i) for i in range(10)] == stages


def test_gate_holds_a_stage_until_its_accuracy_is_reached_or_capped():
    # stage 1 passes at its second check; stage 2 never does and is capped at 5 steps
    script = iter([0.1, 0.6, 0.2, 0.3, 0.4, 0.45])
    settings = CurriculumSettings(stages=2, steps_per_stage=2, advance_at=0.5, gate_every=1, max_steps_per_stage=5)
    cur = Curriculum(settings, evaluate=lambda: next(script))
    stages, events = _run(cur, 0, 12)
    assert stages == [1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3]
    assert cur.starts == [3, 8]
    decisions = [(e["step"], e["curriculum"]["stage_accuracy"], e["curriculum"]["advanced"]) for e in events]
    assert decisions == [(2, 0.1, False), (3, 0.6, True)] + [(5, 0.2, False), (6, 0.3, False), (7, 0.4, False)] + [
        (8, 0.45, True)  # capped at max_steps_per_stage: measured, logged, and moved on
    ]


def test_gated_schedule_resumes_from_its_state():
    settings = CurriculumSettings(stages=2, steps_per_stage=2, advance_at=0.5, gate_every=2, max_steps_per_stage=6)

    def scripted():  # accuracy as a function of how often the stage was measured: deterministic
        accs = iter([0.0, 0.7, 0.1, 0.2, 0.9])
        return lambda: next(accs)

    straight = Curriculum(settings, evaluate=scripted())
    stages, events = _run(straight, 0, 14)
    ev = scripted()
    first = Curriculum(settings, evaluate=ev)
    s1, e1 = _run(first, 0, 7)  # stop mid-stage 2, after the stage-1 boundary
    state = first.state_dict()
    resumed = Curriculum(settings, evaluate=ev)
    resumed.load_state_dict(state)
    s2, e2 = _run(resumed, 7, 14)
    assert s1 + s2 == stages and e1 + e2 == events
    assert resumed.starts == straight.starts == [4, 10]
    with pytest.raises(ValueError, match="no curriculum state"):
        Curriculum(settings, evaluate=ev).load_state_dict({})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stages=-1), "curriculum.stages=-1"),
        (dict(stages=2), "curriculum.steps_per_stage=0"),
        (dict(stages=2, steps_per_stage=10, advance_at=1.5), "curriculum.advance_at=1.5"),
        (dict(stages=2, steps_per_stage=10, advance_at=0.5), "curriculum.max_steps_per_stage=0"),
        (dict(stages=2, steps_per_stage=10, gate_every=-3), "curriculum.gate_every=-3"),
    ],
)
def test_bad_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        CurriculumSettings(**kwargs)


def test_stage_decoding_is_the_same_batched_and_alone(tiny_bases):
    model = make_model(tiny_bases["llama"], num_latents=3, num_iterations=2)
    questions = [e.question for e in EXAMPLES]
    with torch.no_grad():
        batched = _greedy_after_latents(model, questions, 6)
        alone = [_greedy_after_latents(model, [q], 6)[0] for q in questions]
    assert batched == alone
    acc = stage_accuracy(model, EXAMPLES, batch_size=3, max_new_tokens=6)
    assert 0.0 <= acc <= 1.0 and not model.training
