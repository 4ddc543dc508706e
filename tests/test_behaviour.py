"""The re-laid data path changes no image and no score: every case of `behaviour_cases` against its recording."""

import numpy as np
import pytest
from behaviour_cases import FAMILIES, FIXTURE, run_family


@pytest.fixture(scope="module")
def recorded():
    return np.load(FIXTURE)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_outputs_equal_the_recorded_ones(family, recorded, one_thread):
    found = run_family(family)
    expected = {key: recorded[key] for key in recorded.files if key.split("/")[0].split("_")[0] == family}
    assert sorted(found) == sorted(expected)
    for key, value in found.items():
        scale = float(np.abs(expected[key]).max()) if expected[key].size else 0.0
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6 * scale + 1e-12, err_msg=key)
