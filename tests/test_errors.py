"""One base class for errors meant for the user: the CLI, evaluate and the app catch it."""

from __future__ import annotations

import pytest

from segdemo.checkpoint import CheckpointError
from segdemo.errors import SegdemoError
from segdemo.images import ImageError
from segdemo.metrics import MetricInputError
from segdemo.models import ModelLoadError
from segdemo.registry import ModelNotAllowedError, UnsupportedTaskError
from segdemo.result_files import LabelMapError
from segdemo.service import RequestError
from segdemo.thresholds import ThresholdError


@pytest.mark.parametrize(
    "error",
    [
        CheckpointError,  # a folder that is no loadable checkpoint
        ImageError,  # an upload or file that is no usable image
        MetricInputError,  # maps that cannot be scored
        ModelLoadError,  # not cached offline, download failed, broken weights
        ModelNotAllowedError,  # outside the app's allowlist
        UnsupportedTaskError,  # a task the model cannot do
        RequestError,  # a request missing its image or model, a bad option
        ThresholdError,  # a threshold outside 0..1
        LabelMapError,  # ids that do not fit a 16-bit PNG
    ],
)
def test_user_errors_derive_from_the_one_base(error):
    assert issubclass(error, SegdemoError) and issubclass(error, ValueError)
