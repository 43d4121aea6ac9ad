"""KV eviction policies, one small file each; POLICIES maps a name to its class."""

from .full import FullPolicy
from .h2o import H2OPolicy
from .indexmem import IndexMemPolicy
from .keydiff import KeyDiffPolicy
from .random import RandomPolicy
from .snapkv import SnapKVPolicy
from .streaming import StreamingPolicy
from .tova import TOVAPolicy

POLICIES = {
    cls.name: cls
    for cls in (
        FullPolicy,
        StreamingPolicy,
        H2OPolicy,
        SnapKVPolicy,
        TOVAPolicy,
        KeyDiffPolicy,
        RandomPolicy,
        IndexMemPolicy,
    )
}
