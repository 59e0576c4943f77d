"""Bad arguments give a clear Python error naming the argument, at trace time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxseg

X = np.ones((2, 5, 5, 3), np.float32)
W = np.ones((3, 3, 3, 4), np.float32)


@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((X, W[0], (2, 2), "SAME"), {}, TypeError, "same rank"),
    ((X[0, 0, 0], W[0, 0, 0], (), []), {}, TypeError, "rank >= 2"),
    ((X, np.ones((3, 3, 5, 4), np.float32), (2, 2), "SAME"), {}, ValueError, "feature channels"),
    ((X, W, (2,), "SAME"), {}, ValueError, "strides"),
    ((X, W, (2, 0), "SAME"), {}, ValueError, "strides must be positive"),
    ((X, W, (2, 1.5), "SAME"), {}, TypeError, "strides"),
    ((X, W, "22", "SAME"), {}, TypeError, "strides"),
    ((X, W, (2, 2), "HALF"), {}, ValueError, "padding"),
    ((X, W, (2, 2), [(1, 1)]), {}, ValueError, "padding must have one"),
    ((X, W, (2, 2), [(1, 1), (1,)]), {}, TypeError, "padding"),
    ((X, W, (2, 2), 3), {}, TypeError, "padding"),
    ((X, W, (1, 1), [(-4, -4), (0, 0)]), {}, ValueError, "crops more than"),
    ((X, W, (2, 2), "SAME"), {"rhs_dilation": (1, 0)}, ValueError, "rhs_dilation"),
    ((X, W, (2, 2), "SAME"), {"rhs_dilation": (1, 1, 1)}, ValueError, "rhs_dilation"),
    ((X, W, (2, 2), "SAME"), {"dimension_numbers": ("NHWC", "HWIO")}, TypeError, "dimension_numbers"),
    ((X, W, (2, 2), "SAME"), {"dimension_numbers": ("NHWC", "HWXO", "NHWC")}, TypeError, "dimension_numbers"),
    ((X, W, (2, 2), "SAME"), {"dimension_numbers": ("NHC", "HIO", "NHC")}, TypeError, "dimension_numbers"),
    ((X, W, (2, 2), "SAME"), {"dimension_numbers": ("NHWC", "HWIO", "NHWDC")}, TypeError, "dimension_numbers"),
    # A ConvDimensionNumbers object, which lax passes through unchecked: of another rank, or not a permutation.
    ((X, W, (2, 2), "SAME"), {"dimension_numbers": lax.ConvDimensionNumbers((0, 2, 1), (2, 1, 0), (0, 2, 1))},
     ValueError, r"dimension_numbers .* its lhs spec \(0, 2, 1\) must order the 4 axes"),
    ((X, W, (2, 2), "SAME"), {"dimension_numbers": lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1),
                                                                             (0, 3, 1, 2, 4))},
     ValueError, "dimension_numbers .* its out spec"),
    ((X, W, (2, 2), "SAME"), {"dimension_numbers": lax.ConvDimensionNumbers((0, 3, 1, 1), (3, 2, 0, 1),
                                                                             (0, 3, 1, 2))},
     ValueError, "dimension_numbers .* its lhs spec"),
    ((X, W, (2, 2), "SAME"), {"dimension_numbers": lax.ConvDimensionNumbers("NHWC", "HWIO", "NHWC")},
     ValueError, "dimension_numbers .* its lhs spec"),
    ((X, W.astype(np.float16), (2, 2), "SAME"), {}, TypeError, "same dtype"),
    ((X, W, (2, 2), "SAME"), {"preferred_element_type": jnp.bfloat16}, TypeError, "preferred_element_type"),
    ((X, W, (2, 2), "SAME"), {"precision": "bogus"}, ValueError, "precision"),
    ((np.ones((1,) * 7, np.float32), np.ones((1,) * 7, np.float32), (1,) * 5, "SAME"), {}, ValueError,
     "dimension_numbers must be given"),
    ((X, W, (2, 2), "SAME"), {"feature_group_count": 0}, ValueError, "feature_group_count must be >= 1"),
    ((X, W, (2, 2), "SAME"), {"feature_group_count": 1.0}, TypeError, "feature_group_count must be an integer"),
    ((X, W, (2, 2), "SAME"), {"feature_group_count": 2}, ValueError, "feature_group_count=2 must divide lhs"),
    ((X, W, (2, 2), "SAME"), {"feature_group_count": 3}, ValueError, "rhs expects 3 per group, 3 groups"),
    ((X, W[:, :, :1], (2, 2), "SAME"), {"feature_group_count": 3}, ValueError,
     "feature_group_count=3 must divide rhs's output features"),
    ((X, W, (2, 2), "SAME"), {"feature_group_count": 3, "transpose_kernel": True}, ValueError,
     "rhs expects 4"),
])
def test_bad_arguments(args, kwargs, exc, match):
  with pytest.raises(exc, match=match):
    jaxseg.conv_transpose(*args, **kwargs)
  # Raised at trace time, under jit too.
  with pytest.raises(exc, match=match):
    jax.jit(lambda: jaxseg.conv_transpose(*args, **kwargs)).lower()


def test_torch_padding_arguments():
  assert jaxseg.torch_padding(4, 1) == ((2, 2),)
  assert jaxseg.torch_padding((3, 3), 1, 1) == ((1, 2), (1, 2))
  assert jaxseg.torch_padding(3, (1, 0), dilation=2) == ((3, 3), (4, 4))
  with pytest.raises(ValueError, match="kernel_size"):
    jaxseg.torch_padding(0, 1)
  with pytest.raises(ValueError, match="padding"):
    jaxseg.torch_padding(3, -1)
  with pytest.raises(ValueError, match="output_padding must have one"):
    jaxseg.torch_padding((3, 3), 1, (1, 1, 1))
