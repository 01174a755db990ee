"""Pieces of the NovaEdge vs nginx benchmark (loadtests/bench_nginx.py).

servers.py   the processes: backend nginx, nginx as proxy, NovaEdge; their CPU time
wrk.py       the load: wrk runs, the header sets, the parsed result
profile.py   py-spy sampling and strace syscall counts, summarised as text
"""
