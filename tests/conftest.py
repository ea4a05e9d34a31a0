import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("project", max_examples=25, deadline=None)
settings.load_profile("project")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
