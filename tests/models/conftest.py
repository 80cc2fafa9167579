import pytest

from trixmed.testing import FakeTitles, make_vocab
from trixmed.data.dataset import Vocab


@pytest.fixture
def vocab() -> Vocab:
    return make_vocab()


@pytest.fixture
def titles() -> FakeTitles:
    return FakeTitles()
