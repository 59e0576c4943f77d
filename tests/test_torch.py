"""jaxseg.torch_padding reproduces PyTorch's ConvTranspose (skipped without torch)."""

import numpy as np
import pytest

import jaxseg
from tolerances import assert_close

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("n,kernel,stride,padding,output_padding,dilation", [
    (1, 16, 8, 4, 0, 1),
    (2, 4, 2, 1, 0, 1),
    (2, 3, 2, 1, 1, 1),
    (2, 5, 2, 2, 1, 1),
    (2, 3, 3, 0, 2, 2),
    (3, 2, 2, 0, 0, 1),
])
def test_matches_torch_conv_transpose(rng, n, kernel, stride, padding, output_padding, dilation):
  cls = [torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d][n - 1]
  layer = cls(5, 3, kernel, stride, padding, output_padding, dilation=dilation, bias=False).double()
  x = rng.standard_normal((2, 5) + (6, 5, 4)[:n])
  want = layer(torch.from_numpy(x)).detach().numpy()
  weight = layer.weight.detach().numpy()  # (Cin, Cout, k...)
  w = np.transpose(weight, tuple(range(2, 2 + n)) + (1, 0)).astype(np.float32)  # (k..., Cout, Cin)
  x_last = np.moveaxis(x, 1, -1).astype(np.float32)
  got = jaxseg.conv_transpose(x_last, w, (stride,) * n,
                              jaxseg.torch_padding((kernel,) * n, padding, output_padding, dilation),
                              rhs_dilation=(dilation,) * n, transpose_kernel=True)
  got = np.moveaxis(np.asarray(got), -1, 1)
  assert got.shape == want.shape
  assert_close(got, want)
