import pytest

from metaplastic_vit.metrics import average_accuracy, backward_transfer, forgetting, forward_transfer, summary

R = [[90.0, 10.0, 12.0],
     [60.0, 80.0, 11.0],
     [70.0, 50.0, 85.0]]


def test_hand_made_matrix():
    assert average_accuracy(R) == pytest.approx((70 + 50 + 85) / 3)
    assert backward_transfer(R) == pytest.approx(((70 - 90) + (50 - 80)) / 2)
    assert forgetting(R) == pytest.approx(((90 - 70) + (80 - 50)) / 2)
    assert forward_transfer(R, [10.0, 9.0, 10.0]) == pytest.approx(((10 - 9) + (11 - 10)) / 2)


def test_forgetting_uses_best_earlier_row_not_diagonal():
    r = [[50.0, 0.0, 0.0], [80.0, 60.0, 0.0], [40.0, 60.0, 70.0]]
    assert forgetting(r) == pytest.approx(((80 - 40) + 0) / 2)
    assert backward_transfer(r) == pytest.approx(((40 - 50) + 0) / 2)


def test_no_forgetting_and_single_task():
    r = [[90.0, 0.0], [90.0, 95.0]]
    assert forgetting(r) == 0 and backward_transfer(r) == 0
    assert summary([[75.0]]) == {"avg_acc": 75.0, "bwt": None, "forgetting": None, "fwt": None}


def test_bad_matrix():
    with pytest.raises(ValueError, match="square"):
        average_accuracy([[1.0, 2.0]])
