"""Client-side load balancing across the replicas of an AutoDL deployment (a library).

The code lives in ``autodl_esd/serving/pool.py`` beside the registry watcher and the
gateway; this module is the import name user code writes::

    sys.path.insert(0, "<SKILL_DIR>/scripts")
    from service_pool import ServicePool, NoReplicaAvailable
"""

from autodl_esd.serving.pool import *  # noqa: F401,F403
from autodl_esd.serving.pool import __all__, __doc__ as _usage  # noqa: F401

if __name__ == "__main__":
    # A library, not a command: running it (e.g. with --help) shows how to use it.
    import sys

    print("service_pool.py 是给 Python 代码 import 的库, 不是命令行脚本: 直接运行只显示这份说明。")
    print("服务注册表由 scripts/discover_services.py 生成; 用法如下:\n")
    print(_usage)
    sys.exit(0)
