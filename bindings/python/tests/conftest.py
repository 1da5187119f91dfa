import pytest

import rayhpc as ray


@pytest.fixture(scope="module")
def ray_start():
    ray.init(num_cpus=2)
    yield ray
    ray.shutdown()
