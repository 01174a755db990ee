"""The compiled parts, each a C version of a hot Python function that stays
the reference (proxy/_accel.py loads them):
  proxy/observe/_finish.c  the access log line and the request metrics (observe/finish.py)
  proxy/_hotpath.c         the request and response header callbacks, the upstream head, ...
  proxy/balance/_pick.c    the balancer's pick and on_done (selection.py)
  proxy/_response.c        the response parser callbacks (Exchange.on_headers_complete, ...)
  proxy/_request.c         the request head's callbacks and Node.head_complete
optional=True: without a C compiler the install still works and the Python
versions run."""
from setuptools import Extension, setup


def ext(name: str, source: str) -> Extension:
    # -ffp-contract=off: no fused multiply-add, so the C arithmetic rounds as Python's does
    return Extension(name, [source], depends=["proxy/_slots.h", "proxy/_heads.h"],
                     extra_compile_args=["-O2", "-Wall", "-ffp-contract=off"], optional=True)


setup(ext_modules=[ext("proxy.observe._finish", "proxy/observe/_finish.c"),
                   ext("proxy._hotpath", "proxy/_hotpath.c"),
                   ext("proxy.balance._pick", "proxy/balance/_pick.c"),
                   ext("proxy._response", "proxy/_response.c"),
                   ext("proxy._request", "proxy/_request.c")])
