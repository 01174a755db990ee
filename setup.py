"""The one compiled part: proxy/observe/_finish.c (the access log line and the
request metrics in C; see proxy/observe/finish.py). optional=True: without a
C compiler the install still works and finish.py uses its Python version."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("proxy.observe._finish", ["proxy/observe/_finish.c"],
                             extra_compile_args=["-O2", "-Wall"], optional=True)])
