"""Type aliases shared across the pipeline, so shapes are named once."""

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
UInt8Array = npt.NDArray[np.uint8]
# A layer id is the module's ``named_modules()`` path ("features.28"); the input is "input".
LayerId = str
INPUT_LAYER: LayerId = "input"
