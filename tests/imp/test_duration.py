import pytest

from imp.base.duration import Duration
from imp.base.errors import UserError


@pytest.mark.parametrize("text, epochs, iterations", [
    ("40ep", 40, 0), ("500it", 0, 500), ("2ep100it", 2, 100), ("0it", 0, 0), (" 3ep ", 3, 0),
])
def test_parse(text, epochs, iterations):
    assert Duration.parse(text) == Duration(epochs, iterations)


def test_bare_integer_means_epochs():
    assert Duration.parse(7) == Duration(epochs=7)


@pytest.mark.parametrize("text", ["", "40", "ep", "3 ep", "100it2ep", "-1ep", "1.5ep", "40epochs"])
def test_bad_text_names_the_format(text):
    with pytest.raises(UserError, match="e.g. '40ep'"):
        Duration.parse(text)


@pytest.mark.parametrize("value", [True, 1.5, None, [1]])
def test_bad_types(value):
    with pytest.raises(UserError):
        Duration.parse(value)


def test_iterations_at():
    assert Duration.parse("2ep100it").iterations_at(469) == 2 * 469 + 100
    assert Duration.parse("500it").iterations_at(1) == 500
    with pytest.raises(ValueError):
        Duration(1).iterations_at(0)


@pytest.mark.parametrize("text", ["40ep", "500it", "2ep100it", "0it"])
def test_str_round_trips(text):
    assert str(Duration.parse(text)) == text


def test_negative_is_an_error():
    with pytest.raises(UserError):
        Duration(-1, 0)


@pytest.mark.parametrize("text, per_epoch, expected", [
    ("23it", 23, "1ep"), ("0ep23it", 23, "1ep"), ("1ep", 23, "1ep"), ("46it", 23, "2ep"),
    ("2ep5it", 23, "51it"), ("500it", 23, "500it"), ("40ep", 469, "40ep"), ("0ep", 7, "0it"),
])
def test_canonical_is_whole_epochs_or_plain_iterations(text, per_epoch, expected):
    duration = Duration.parse(text)
    canonical = duration.canonical(per_epoch)
    assert str(canonical) == expected
    assert canonical.iterations_at(per_epoch) == duration.iterations_at(per_epoch)  # the same work
