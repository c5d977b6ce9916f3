"""ldm/training/periodic.py: which steps run a periodic task, the rule both trainers share."""
import pytest

from ldm.training.periodic import due


@pytest.mark.parametrize("every, last, expected", [
    (2, 7, [2, 4, 6, 7]),    # every second step, and the last one although 7 is odd
    (3, 6, [3, 6]),          # the last step coincides with a period: once, not twice
    (0, 5, [5]),             # 0: only at the end
    (10, 4, [4]),            # a period longer than the run: only at the end
])
def test_due_steps(every, last, expected):
    assert [s for s in range(1, last + 1) if due(s, every, last_step=last)] == expected
