"""The backbone's iCoT-style internalization (`training.pretrain.internalized`)."""

from kava.prompts import Example
from training.pretrain import internalized

EX = Example("q", ("<<1+2=3>>", "<<3*2=6>>", "<<6-1=5>>", "<<5+5=10>>"), "10")


def test_drops_a_prefix_of_the_steps_and_keeps_the_answer():
    seen = set()
    for pos in range(400):
        out = internalized(EX, pos, share=1.0, seed=0)
        k = len(EX.steps) - len(out.steps)
        assert 1 <= k <= len(EX.steps) - 1, "at least one step dropped, at least one written"
        assert out.steps == EX.steps[k:] and out.answer == EX.answer and out.question == EX.question
        seen.add(k)
    assert seen == {1, 2, 3}


def test_share_is_the_rate_and_positions_are_deterministic():
    dropped = sum(internalized(EX, pos, 0.3, seed=1) != EX for pos in range(2000))
    assert 500 < dropped < 700
    assert [internalized(EX, p, 0.5, 7) for p in range(50)] == [internalized(EX, p, 0.5, 7) for p in range(50)]
    assert [internalized(EX, p, 0.5, 7) for p in range(50)] != [internalized(EX, p, 0.5, 8) for p in range(50)]


def test_off_and_single_step_sequences_stay_whole():
    assert all(internalized(EX, p, 0.0, 0) == EX for p in range(100))
    one = Example("q", ("<<1+2=3>>",), "3")
    assert all(internalized(one, p, 1.0, 0) == one for p in range(100))
