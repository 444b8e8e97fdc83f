"""Session set-up shared by all tests.

mmpretrain 1.2 imports torchvision at module level and torchvision is not
installed beside the CPU torch: let ``import torchvision`` fall back to
mmptq's stand-in (a no-op where a real torchvision exists).
"""
from mmptq.utils import install_torchvision_shim

install_torchvision_shim()
