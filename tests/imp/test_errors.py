from imp.base.errors import closest, did_you_mean


def test_closest_prefers_fewest_edits():
    names = ["resnet20", "resnet32", "resnet56", "lr", "momentum"]
    assert closest("resnet2O", names) == "resnet20"  # one substitution beats two
    assert closest("resnet2", names) == "resnet20"  # a tie on edits goes to the first by name
    assert closest("momentun", names) == "momentum"
    assert closest("zzz", names) is None


def test_did_you_mean_text():
    assert did_you_mean("lrr", ["lr", "seed"]) == "; did you mean 'lr'?"
    assert did_you_mean("qqq", ["lr", "seed"]) == ""
