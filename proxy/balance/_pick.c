/* proxy.balance._pick: the balancer's per-request common case in C:
 * proxy.selection.Selector.pick (with proxy.balance.selector.Selector.pick
 * and RegionPool._pick_p2c inlined) and Selector.on_done for an "ok"
 * outcome (proxy.balance.cluster.on_done inlined).
 *
 * Why C: picking a backend is ~1 us of Python per request (two adapter
 * layers, the plan checks, the region walk, p2c, a Decision object), and
 * on_done another ~0.3 us; the arithmetic itself is a few nanoseconds.
 *
 * Contract: the result and every side effect are those of the Python
 * versions (selection.py, kept as Selector._pick_py / _on_done_py), which
 * get the call, before anything is changed, whenever the case is not the
 * common one: a retry (non-empty exclude), residency or affinity in play,
 * a plan whose cached ranking must be refreshed or a cluster tick due, the
 * weighted policy or geo with a client location, and any object of an
 * unexpected type. random.random is the same function object the Python
 * calls (read from proxy.balance.pool at each call), in the same order, so
 * a seeded generator gives the same picks. Once it has drawn a random
 * number the C cannot hand over any more: from there it computes with the
 * Python number protocol whenever a value is not a plain float or int, so
 * the result, or the exception, is still Python's.
 * tests/unit/balance/test_balance_pick_c.py runs both on the same states.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>

#include "../_slots.h"

enum { C_ROUTE, C_GEO, C_POLICY_NOTE, N_CTX };
static const char *ctx_names[N_CTX] = {"route", "geo", "policy_note"};
enum { P_KIND, P_MAX_IFPB, P_RANKING, P_VALID_UNTIL, P_GEN, P_AFFINITY, N_PLAN };
static const char *plan_names[N_PLAN] = {"kind", "max_ifpb", "ranking", "valid_until", "gen", "affinity"};
enum { R_REGION, R_VIEW, R_IN_FLIGHT, R_CHOOSE, R_NEG_INV_TAU, R_SLOW, N_RP };
static const char *rp_names[N_RP] = {"region", "view", "in_flight", "choose", "_neg_inv_tau", "_slow"};
enum { B_ID, B_POOL, B_EWMA, B_STAMP, B_SAMPLES, B_IN_FLIGHT, B_WEIGHT, B_C5XX, B_CCONN,
       B_SLOW_UNTIL, N_B };
static const char *b_names[N_B] = {"id", "pool", "ewma_ms", "stamp", "samples", "in_flight",
                                   "weight", "consecutive_5xx", "consecutive_conn", "slow_until"};
enum { D_REGION, D_BACKEND, D_PLAN, D_WHY, N_D };
static const char *d_names[N_D] = {"region", "backend", "plan", "why"};

static struct {
    int ready;
    PyTypeObject *sel_type, *bsel_type, *ctx_type, *plan_type, *rp_type, *b_type, *d_type;
    Py_ssize_t ctx[N_CTX], plan[N_PLAN], rp[N_RP], b[N_B], d[N_D];
    PyObject *pick_py, *on_done_py;      /* the Python reference methods */
    PyObject *p2c_func;                  /* RegionPool._pick_p2c (the function) */
    PyObject *pool_globals;              /* proxy.balance.pool's dict: _random, _exp */
    PyObject *sel_globals, *cluster_globals;   /* proxy.selection's, proxy.balance.cluster's */
    PyObject *cluster_on_done;                 /* proxy.balance.cluster.on_done */
    PyObject *math_exp;                  /* math.exp: C's exp() gives the same doubles */
    PyObject *s_plans, *s_node, *s_hooks, *s_residency_active, *s_balancer, *s_cluster, *s_view,
        *s_next_event, *s_gen, *s_name, *s_lat, *s_lon, *s_reason, *s_random, *s_exp, *s_ok,
        *s_latency, *s_geo, *s_slow_factor, *s_backend,
        *s_ewma_ms, *s_stamp, *s_in_flight, *s_weight, *s_slow_until, *s_slow, *s_neg_inv_tau, *s_id,
        *s_last_resort, *s_on_done;
    PyObject *one, *no_backend;
} S;



/* a plain float or int as a double (1), or not (0: use the number protocol) */
static int
as_double(PyObject *o, double *out)
{
    if (PyFloat_CheckExact(o)) {
        *out = PyFloat_AS_DOUBLE(o);
        return 1;
    }
    if (PyLong_CheckExact(o)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || v > (1LL << 53) || v < -(1LL << 53))
            return 0;
        *out = (double)v;
        return 1;
    }
    return 0;
}

/* a plain int small enough to add one to and convert exactly */
static int
as_small_int(PyObject *o, long long *out)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || v >= (1LL << 52) || v <= -(1LL << 52))
        return 0;
    *out = v;
    return 1;
}

/* ------------------------------------------------------------------ p2c */

static PyObject *
no_attr(PyObject *o, PyObject *name)
{
    PyErr_Format(PyExc_AttributeError, "'%.50s' object has no attribute '%U'", Py_TYPE(o)->tp_name, name);
    return NULL;
}

/* x.<name>: the slot of a BackendState, getattr for anything else (new reference) */
static PyObject *
b_attr(PyObject *x, int which, PyObject *name)
{
    if (Py_TYPE(x) == S.b_type) {
        PyObject *v = SLOT(x, S.b[which]);
        return v != NULL ? Py_NewRef(v) : no_attr(x, name);
    }
    return PyObject_GetAttr(x, name);
}

/* x.ewma_ms * _exp((now - x.stamp) * k) * (x.in_flight + 1) / x.weight, the
 * Python expression: in doubles when every value is a plain float or small
 * int and _exp is math.exp (which calls the same C exp()), else with the
 * number protocol step by step, as Python evaluates it. A new reference. */
static PyObject *
raw_cost(PyObject *x, PyObject *now, PyObject *k, PyObject *expf)
{
    PyObject *ewma = NULL, *stamp = NULL, *inf = NULL, *weight = NULL, *cost = NULL;
    if ((ewma = b_attr(x, B_EWMA, S.s_ewma_ms)) == NULL || (stamp = b_attr(x, B_STAMP, S.s_stamp)) == NULL
        || (inf = b_attr(x, B_IN_FLIGHT, S.s_in_flight)) == NULL
        || (weight = b_attr(x, B_WEIGHT, S.s_weight)) == NULL)
        goto done;
    double de, dn;
    long long li, lw;
    if (expf == S.math_exp && as_double(ewma, &de) && PyFloat_CheckExact(stamp) && PyFloat_CheckExact(now)
        && PyFloat_CheckExact(k) && as_small_int(inf, &li) && as_small_int(weight, &lw) && lw != 0) {
        dn = PyFloat_AS_DOUBLE(now);
        double arg = (dn - PyFloat_AS_DOUBLE(stamp)) * PyFloat_AS_DOUBLE(k);
        double e = exp(arg);
        if (!isfinite(e) && isfinite(arg)) {
            PyErr_SetString(PyExc_OverflowError, "math range error");
            goto done;
        }
        cost = PyFloat_FromDouble(de * e * (double)(li + 1) / (double)lw);
        goto done;
    }
    PyObject *t = PyNumber_Subtract(now, stamp), *u = NULL, *e = NULL, *c = NULL, *i1 = NULL, *c2 = NULL;
    if (t != NULL)
        u = PyNumber_Multiply(t, k);
    if (u != NULL)
        e = PyObject_CallOneArg(expf, u);
    if (e != NULL)
        c = PyNumber_Multiply(ewma, e);
    if (c != NULL)
        i1 = PyNumber_Add(inf, S.one);
    if (i1 != NULL)
        c2 = PyNumber_Multiply(c, i1);
    if (c2 != NULL)
        cost = PyNumber_TrueDivide(c2, weight);
    Py_XDECREF(t);
    Py_XDECREF(u);
    Py_XDECREF(e);
    Py_XDECREF(c);
    Py_XDECREF(i1);
    Py_XDECREF(c2);
done:
    Py_XDECREF(ewma);
    Py_XDECREF(stamp);
    Py_XDECREF(inf);
    Py_XDECREF(weight);
    return cost;
}

/* if now < x.slow_until: cost /= x.slow_factor(now, *rp._slow). Steals cost. */
static PyObject *
slow_div(PyObject *x, PyObject *cost, PyObject *now, PyObject *rp)
{
    PyObject *su = b_attr(x, B_SLOW_UNTIL, S.s_slow_until);
    if (su == NULL) {
        Py_DECREF(cost);
        return NULL;
    }
    int lt = PyObject_RichCompareBool(now, su, Py_LT);
    Py_DECREF(su);
    if (lt <= 0) {
        if (lt < 0)
            Py_CLEAR(cost);
        return cost;
    }
    PyObject *slow = SLOT(rp, S.rp[R_SLOW]), *head = NULL, *rest = NULL, *full = NULL, *meth = NULL,
        *f = NULL, *q = NULL;
    if (slow == NULL)
        no_attr(rp, S.s_slow);
    else if ((head = PyTuple_Pack(1, now)) != NULL && (rest = PySequence_Tuple(slow)) != NULL
             && (full = PySequence_Concat(head, rest)) != NULL
             && (meth = PyObject_GetAttr(x, S.s_slow_factor)) != NULL
             && (f = PyObject_Call(meth, full, NULL)) != NULL)
        q = PyNumber_InPlaceTrueDivide(cost, f);
    Py_XDECREF(head);
    Py_XDECREF(rest);
    Py_XDECREF(full);
    Py_XDECREF(meth);
    Py_XDECREF(f);
    Py_DECREF(cost);
    return q;
}

/* int(_random() * n), as a Python int (the global looked up at each draw, as Python does) */
static PyObject *
draw(Py_ssize_t n)
{
    PyObject *rnd = PyDict_GetItemWithError(S.pool_globals, S.s_random);
    if (rnd == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_NameError, "name '_random' is not defined");
        return NULL;
    }
    Py_INCREF(rnd);
    PyObject *r = PyObject_CallNoArgs(rnd);
    Py_DECREF(rnd);
    if (r == NULL)
        return NULL;
    if (PyFloat_CheckExact(r)) {
        double x = PyFloat_AS_DOUBLE(r) * (double)n;
        if (x > -9.0e15 && x < 9.0e15) {   /* finite and exact: truncate toward zero, as int() */
            Py_DECREF(r);
            return PyLong_FromLongLong((long long)x);
        }
    }
    PyObject *pn = PyLong_FromSsize_t(n);
    PyObject *p = pn ? PyNumber_Multiply(r, pn) : NULL;
    Py_XDECREF(pn);
    Py_DECREF(r);
    if (p == NULL)
        return NULL;
    PyObject *i = PyNumber_Long(p);   /* int(): ValueError for NaN, OverflowError for inf */
    Py_DECREF(p);
    return i;
}

/* RegionPool._pick_p2c(now, None, None) on `rp`: a new reference to the backend
 * or None, NULL on an error, or NotImplemented (nothing drawn: the caller asks
 * Python) when rp.view is not a list */
static PyObject *
pick_p2c(PyObject *rp, PyObject *now, int *drawn)
{
    PyObject *view = SLOT(rp, S.rp[R_VIEW]);
    if (view == NULL || !PyList_CheckExact(view))
        return Py_NewRef(Py_NotImplemented);
    Py_INCREF(view);
    Py_ssize_t n = PyList_GET_SIZE(view);
    PyObject *res = NULL;
    if (n < 2) {
        res = Py_NewRef(n ? PyList_GET_ITEM(view, 0) : Py_None);
        Py_DECREF(view);
        return res;
    }
    *drawn = 1;
    PyObject *i = NULL, *j = NULL, *a = NULL, *b = NULL, *k = NULL, *expf = NULL, *ca = NULL, *cb = NULL;
    if ((i = draw(n)) == NULL || (j = draw(n - 1)) == NULL)
        goto done;
    int ge = PyObject_RichCompareBool(j, i, Py_GE);
    if (ge < 0)
        goto done;
    if (ge) {
        PyObject *j1 = PyNumber_Add(j, S.one);
        Py_SETREF(j, j1);
        if (j == NULL)
            goto done;
    }
    /* view[i], view[j]: Python's indexing (negative indices, IndexError) */
    if ((a = PyObject_GetItem(view, i)) == NULL || (b = PyObject_GetItem(view, j)) == NULL)
        goto done;
    if (SLOT(rp, S.rp[R_NEG_INV_TAU]) == NULL) {
        no_attr(rp, S.s_neg_inv_tau);
        goto done;
    }
    k = Py_NewRef(SLOT(rp, S.rp[R_NEG_INV_TAU]));
    expf = PyDict_GetItemWithError(S.pool_globals, S.s_exp);
    if (expf == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_NameError, "name '_exp' is not defined");
        goto done;
    }
    Py_INCREF(expf);
    if ((ca = raw_cost(a, now, k, expf)) == NULL || (cb = raw_cost(b, now, k, expf)) == NULL)
        goto done;
    if ((ca = slow_div(a, ca, now, rp)) == NULL || (cb = slow_div(b, cb, now, rp)) == NULL)
        goto done;
    int le = PyObject_RichCompareBool(ca, cb, Py_LE);
    if (le >= 0)
        res = Py_NewRef(le ? a : b);
done:
    Py_XDECREF(i);
    Py_XDECREF(j);
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(k);
    Py_XDECREF(expf);
    Py_XDECREF(ca);
    Py_XDECREF(cb);
    Py_DECREF(view);
    return res;
}

/* ---------------------------------------------------------------- pick */

/* rp.in_flight >= len(rp.view) * cap: 1, 0, or -1 on an error */
static int
saturated(PyObject *rp, PyObject *cap)
{
    PyObject *inf = SLOT(rp, S.rp[R_IN_FLIGHT]), *rview = SLOT(rp, S.rp[R_VIEW]);
    if (inf == NULL || rview == NULL) {
        no_attr(rp, inf == NULL ? S.s_in_flight : S.s_view);
        return -1;
    }
    long long li, lc;
    if (PyList_CheckExact(rview) && as_small_int(inf, &li) && as_small_int(cap, &lc) && lc >= 0
        && lc < (1LL << 30))
        return li >= (long long)PyList_GET_SIZE(rview) * lc;
    Py_INCREF(inf);
    Py_INCREF(rview);
    int r = -1;
    Py_ssize_t n = PyObject_Size(rview);
    PyObject *pn = n < 0 ? NULL : PyLong_FromSsize_t(n), *prod = NULL;
    if (pn != NULL && (prod = PyNumber_Multiply(pn, cap)) != NULL)
        r = PyObject_RichCompareBool(inf, prod, Py_GE);
    Py_XDECREF(pn);
    Py_XDECREF(prod);
    Py_DECREF(inf);
    Py_DECREF(rview);
    return r;
}

/* fn(self, *args, **kw) for a call the C leaves to Python (keywords, a wrong count) */
static PyObject *
forward(PyObject *fn, PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[8], **buf = small;
    if (nargs + nkw + 1 > 8 && (buf = PyMem_Malloc((nargs + nkw + 1) * sizeof(PyObject *))) == NULL)
        return PyErr_NoMemory();
    buf[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        buf[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(fn, buf, nargs + 1, kwnames);
    if (buf != small)
        PyMem_Free(buf);
    return r;
}

static PyObject *
fallback_pick(PyObject *self, PyObject *ctx, PyObject *exclude, PyObject *now)
{
    return PyObject_CallFunctionObjArgs(S.pick_py, self, ctx, exclude, now, NULL);
}

/* getattr, with a borrowed-looking contract: returns a new reference */
#define GA(o, s) PyObject_GetAttr((o), (s))

/* Selector.pick(self, ctx, exclude, now) -> BackendState | (status, reason) */
static PyObject *
pick(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 3 || (kwnames && PyTuple_GET_SIZE(kwnames)))
        return forward(S.pick_py, self, args, nargs, kwnames);
    PyObject *ctx = args[0], *exclude = args[1], *now = args[2];
    if (!S.ready || Py_TYPE(self) != S.sel_type || Py_TYPE(ctx) != S.ctx_type
        || !PyFloat_CheckExact(now) || !PyAnySet_CheckExact(exclude) || PySet_GET_SIZE(exclude) != 0)
        return fallback_pick(self, ctx, exclude, now);

    PyObject *res = NULL, *plans = NULL, *route = NULL, *name = NULL, *node = NULL, *hooks = NULL,
        *resid = NULL, *bal = NULL, *cluster = NULL, *view = NULL, *next_event = NULL,
        *cgen = NULL, *vgen = NULL, *gsum = NULL, *order = NULL, *latlon = NULL, *backend = NULL,
        *region = NULL, *plan = NULL, *cap = NULL;
    int drawn = 0;   /* once a random number is drawn, no handing over to Python */

    /* plan = self.plans[ctx.route.name] */
    route = SLOT(ctx, S.ctx[C_ROUTE]);
    if (route == NULL)
        goto python;
    Py_INCREF(route);
    name = GA(route, S.s_name);
    if (name == NULL)
        goto error;
    plans = GA(self, S.s_plans);
    if (plans == NULL)
        goto error;
    if (!PyDict_CheckExact(plans) || !PyUnicode_CheckExact(name))
        goto python;
    plan = PyDict_GetItemWithError(plans, name);
    if (plan == NULL) {
        if (PyErr_Occurred())
            goto error;
        goto python;   /* the KeyError is Python's to raise */
    }
    Py_INCREF(plan);
    if (Py_TYPE(plan) != S.plan_type)
        goto python;
    /* residency and affinity: Python's */
    node = GA(self, S.s_node);
    if (node == NULL)
        goto error;
    hooks = GA(node, S.s_hooks);
    if (hooks == NULL)
        goto error;
    resid = GA(hooks, S.s_residency_active);
    if (resid == NULL)
        goto error;
    if (resid != Py_False)
        goto python;
    PyObject *aff = SLOT(plan, S.plan[P_AFFINITY]);
    if (aff != Py_None)
        goto python;
    /* latlon = (geo.lat, geo.lon) if geo is not None and geo.lat is not None else None */
    PyObject *geo = SLOT(ctx, S.ctx[C_GEO]);
    if (geo == NULL)
        goto python;
    if (geo == Py_None)
        latlon = Py_NewRef(Py_None);
    else {
        Py_INCREF(geo);
        PyObject *lat = GA(geo, S.s_lat);
        if (lat == NULL) {
            Py_DECREF(geo);
            goto error;
        }
        if (lat == Py_None) {
            latlon = Py_NewRef(Py_None);
            Py_DECREF(lat);
        }
        else {
            PyObject *lon = GA(geo, S.s_lon);
            if (lon == NULL) {
                Py_DECREF(lat);
                Py_DECREF(geo);
                goto error;
            }
            latlon = PyTuple_Pack(2, lat, lon);
            Py_DECREF(lat);
            Py_DECREF(lon);
        }
        Py_DECREF(geo);
        if (latlon == NULL)
            goto error;
    }
    /* the balance Selector: a tick due or a stale plan is Python's */
    bal = GA(self, S.s_balancer);
    if (bal == NULL)
        goto error;
    if (Py_TYPE(bal) != S.bsel_type)
        goto python;
    cluster = GA(bal, S.s_cluster);
    if (cluster == NULL)
        goto error;
    view = GA(bal, S.s_view);
    if (view == NULL)
        goto error;
    next_event = GA(cluster, S.s_next_event);
    if (next_event == NULL)
        goto error;
    int ge = PyObject_RichCompareBool(now, next_event, Py_GE);
    if (ge < 0)
        goto error;
    if (ge)
        goto python;
    cgen = GA(cluster, S.s_gen);
    if (cgen == NULL)
        goto error;
    vgen = GA(view, S.s_gen);
    if (vgen == NULL)
        goto error;
    /* plan.valid_until and plan.gen last, after every call that could run Python code,
     * and only a plain float and int (comparing them runs none) */
    PyObject *valid_until = SLOT(plan, S.plan[P_VALID_UNTIL]), *pgen = SLOT(plan, S.plan[P_GEN]);
    if (valid_until == NULL || pgen == NULL || !PyFloat_CheckExact(valid_until)
        || !PyLong_CheckExact(cgen) || !PyLong_CheckExact(vgen) || !PyLong_CheckExact(pgen))
        goto python;
    if (PyFloat_AS_DOUBLE(now) >= PyFloat_AS_DOUBLE(valid_until))
        goto python;
    gsum = PyNumber_Add(cgen, vgen);
    if (gsum == NULL)
        goto error;
    int ne = PyObject_RichCompareBool(pgen, gsum, Py_NE);
    if (ne < 0)
        goto error;
    if (ne)
        goto python;
    /* the walk: plan.ranking for latency, failover and geo without a location */
    PyObject *kind = SLOT(plan, S.plan[P_KIND]);
    if (kind == NULL || !PyUnicode_CheckExact(kind))
        goto python;
    if (PyUnicode_CompareWithASCIIString(kind, "weighted") == 0
        || (PyUnicode_CompareWithASCIIString(kind, "geo") == 0 && latlon != Py_None))
        goto python;
    PyObject *ranking = SLOT(plan, S.plan[P_RANKING]);
    if (ranking == NULL || !PyList_CheckExact(ranking) || SLOT(plan, S.plan[P_MAX_IFPB]) == NULL)
        goto python;
    for (Py_ssize_t r = 0; r < PyList_GET_SIZE(ranking); r++)
        if (Py_TYPE(PyList_GET_ITEM(ranking, r)) != S.rp_type)
            goto python;
    order = Py_NewRef(ranking);
    cap = Py_NewRef(SLOT(plan, S.plan[P_MAX_IFPB]));
    for (Py_ssize_t r = 0; r < PyList_GET_SIZE(order); r++) {
        PyObject *rp = PyList_GET_ITEM(order, r);
        if (Py_TYPE(rp) != S.rp_type) {   /* the list changed under a Python call */
            if (drawn)
                goto error_type;
            goto python;
        }
        Py_INCREF(rp);
        if (cap != Py_None) {
            /* rp.in_flight >= len(rp.view) * cap: saturated, next region */
            int sat = saturated(rp, cap);
            if (sat != 0) {
                Py_DECREF(rp);
                if (sat < 0)
                    goto error;
                continue;
            }
        }
        /* b = rp.choose(now, None, None) */
        PyObject *choose = SLOT(rp, S.rp[R_CHOOSE]);
        PyObject *b;
        if (choose != NULL && PyMethod_Check(choose) && PyMethod_GET_FUNCTION(choose) == S.p2c_func
            && PyMethod_GET_SELF(choose) == rp) {
            Py_INCREF(choose);
            b = pick_p2c(rp, now, &drawn);
            if (b == Py_NotImplemented) {
                Py_DECREF(b);
                b = PyObject_CallFunctionObjArgs(choose, now, Py_None, Py_None, NULL);
                drawn = 1;   /* it may have drawn */
            }
            Py_DECREF(choose);
        }
        else if (choose != NULL) {
            Py_INCREF(choose);
            b = PyObject_CallFunctionObjArgs(choose, now, Py_None, Py_None, NULL);
            Py_DECREF(choose);
            drawn = 1;   /* it may have drawn */
        }
        else {
            PyErr_SetString(PyExc_AttributeError, "choose");
            b = NULL;
        }
        if (b == NULL) {
            Py_DECREF(rp);
            goto error;
        }
        if (b != Py_None) {
            backend = b;
            region = SLOT(rp, S.rp[R_REGION]);
            Py_XINCREF(region);
            Py_DECREF(rp);
            if (region == NULL) {
                PyErr_SetString(PyExc_AttributeError, "region");
                goto error;
            }
            break;
        }
        Py_DECREF(b);
        Py_DECREF(rp);
    }
    PyObject *d;
    if (backend != NULL) {
        PyObject *bid = b_attr(backend, B_ID, S.s_id);   /* b.id in exclude: read, then False */
        if (bid == NULL)
            goto error;
        Py_DECREF(bid);
        /* Decision(rp.region, b, plan, (now, None, latlon)), as __init__ makes it */
        PyObject *why = PyTuple_Pack(3, now, Py_None, latlon);
        if (why == NULL)
            goto error;
        d = S.d_type->tp_alloc(S.d_type, 0);
        if (d == NULL) {
            Py_DECREF(why);
            goto error;
        }
        SLOT(d, S.d[D_REGION]) = Py_NewRef(region);
        SLOT(d, S.d[D_BACKEND]) = Py_NewRef(backend);
        SLOT(d, S.d[D_PLAN]) = Py_NewRef(plan);
        SLOT(d, S.d[D_WHY]) = why;
        /* ctx.policy_note = d; return b (exclude is empty: never "every backend failed") */
        slot_set(ctx, S.ctx[C_POLICY_NOTE], d);
        res = Py_NewRef(backend);
        goto out;
    }
    /* nothing in the walk: balancer._last_resort(plan, order, None, None, latlon, None, now, None) */
    {
        PyObject *lr = GA(bal, S.s_last_resort);
        if (lr == NULL)
            goto error;
        d = PyObject_CallFunctionObjArgs(lr, plan, order, Py_None, Py_None, latlon, Py_None, now,
                                         Py_None, NULL);
        Py_DECREF(lr);
    }
    if (d == NULL)
        goto error;
    {
        PyObject *b = GA(d, S.s_backend);
        if (b == NULL) {
            Py_DECREF(d);
            goto error;
        }
        if (b == Py_None) {
            Py_DECREF(b);
            PyObject *reason = GA(d, S.s_reason);
            Py_DECREF(d);
            if (reason == NULL)
                goto error;
            int t = PyObject_IsTrue(reason);
            if (t < 0) {
                Py_DECREF(reason);
                goto error;
            }
            res = Py_BuildValue("(iO)", 503, t ? reason : S.no_backend);
            Py_DECREF(reason);
            goto out;
        }
        /* b.id in exclude: read (it may raise), and False for the empty set */
        PyObject *bid = b_attr(b, B_ID, S.s_id);
        if (bid == NULL) {
            Py_DECREF(b);
            Py_DECREF(d);
            goto error;
        }
        Py_DECREF(bid);
        slot_set(ctx, S.ctx[C_POLICY_NOTE], d);
        res = b;
        goto out;
    }
error_type:
    PyErr_SetString(PyExc_TypeError, "balancer state changed during a pick");
    goto error;
python:
    if (PyErr_Occurred())
        goto error;
    res = fallback_pick(self, ctx, exclude, now);
    goto out;
error:
    res = NULL;
out:
    Py_XDECREF(route);
    Py_XDECREF(name);
    Py_XDECREF(plans);
    Py_XDECREF(plan);
    Py_XDECREF(node);
    Py_XDECREF(hooks);
    Py_XDECREF(resid);
    Py_XDECREF(latlon);
    Py_XDECREF(bal);
    Py_XDECREF(cluster);
    Py_XDECREF(view);
    Py_XDECREF(next_event);
    Py_XDECREF(cgen);
    Py_XDECREF(vgen);
    Py_XDECREF(gsum);
    Py_XDECREF(order);
    Py_XDECREF(backend);
    Py_XDECREF(region);
    Py_XDECREF(cap);
    return res;
}

static PyMethodDef pick_def = {
    "pick", (PyCFunction)(void (*)(void))pick, METH_FASTCALL | METH_KEYWORDS,
    "Selector.pick(ctx, exclude, now) in C for the common case (proxy/balance/_pick.c).",
};

/* ------------------------------------------------------------- on_done */

static PyObject *
fallback_done(PyObject *self, PyObject *const *args)
{
    return PyObject_CallFunctionObjArgs(S.on_done_py, self, args[0], args[1], args[2], args[3], NULL);
}

/* a new int: v + delta (small ints only, checked by the caller) */
static int
add_slot(PyObject *o, Py_ssize_t off, long long v, long long delta)
{
    PyObject *n = PyLong_FromLongLong(v + delta);
    if (n == NULL)
        return -1;
    slot_set(o, off, n);
    return 0;
}

/* Selector.on_done(self, backend, latency, outcome, now): cluster.on_done for "ok" */
static PyObject *
on_done(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 4 || (kwnames && PyTuple_GET_SIZE(kwnames)))
        return forward(S.on_done_py, self, args, nargs, kwnames);
    PyObject *b = args[0], *latency = args[1], *outcome = args[2], *now = args[3];
    if (!S.ready)
        return fallback_done(self, args);
    /* the module globals the Python calls: selection.on_done, cluster._exp */
    PyObject *g_done = PyDict_GetItemWithError(S.sel_globals, S.s_on_done);
    PyObject *g_exp = g_done ? PyDict_GetItemWithError(S.cluster_globals, S.s_exp) : NULL;
    if (PyErr_Occurred())
        return NULL;
    if (!S.ready || g_done != S.cluster_on_done || g_exp != S.math_exp
        || Py_TYPE(self) != S.sel_type || Py_TYPE(b) != S.b_type
        || !PyFloat_CheckExact(latency) || !PyFloat_CheckExact(now)
        || !PyUnicode_CheckExact(outcome) || PyUnicode_Compare(outcome, S.s_ok) != 0)
        return fallback_done(self, args);
    PyObject *pool = SLOT(b, S.b[B_POOL]);
    PyObject *b_inf = SLOT(b, S.b[B_IN_FLIGHT]), *ewma = SLOT(b, S.b[B_EWMA]);
    PyObject *samples = SLOT(b, S.b[B_SAMPLES]), *stamp = SLOT(b, S.b[B_STAMP]);
    PyObject *c5 = SLOT(b, S.b[B_C5XX]), *cc = SLOT(b, S.b[B_CCONN]);
    long long bi, pi, ns, n5, ncc;
    if (pool == NULL || Py_TYPE(pool) != S.rp_type || b_inf == NULL || !as_small_int(b_inf, &bi)
        || ewma == NULL || !PyFloat_CheckExact(ewma) || samples == NULL || !as_small_int(samples, &ns)
        || stamp == NULL || !PyFloat_CheckExact(stamp) || c5 == NULL || !as_small_int(c5, &n5)
        || cc == NULL || !as_small_int(cc, &ncc))
        return fallback_done(self, args);
    PyObject *p_inf = SLOT(pool, S.rp[R_IN_FLIGHT]), *k = SLOT(pool, S.rp[R_NEG_INV_TAU]);
    if (p_inf == NULL || !as_small_int(p_inf, &pi) || k == NULL || !PyFloat_CheckExact(k))
        return fallback_done(self, args);
    double dn = PyFloat_AS_DOUBLE(now), ds = PyFloat_AS_DOUBLE(stamp), de = PyFloat_AS_DOUBLE(ewma);
    double ms = PyFloat_AS_DOUBLE(latency) * 1000.0;
    double ne;   /* the new ewma_ms */
    PyObject *ms_obj = NULL;
    if (ms >= de || ns == 0)
        ne = ms;
    else {
        double w = 1.0;
        if (dn > ds) {
            double arg = (dn - ds) * PyFloat_AS_DOUBLE(k);
            w = exp(arg);
            if (!isfinite(w) && isfinite(arg))
                return fallback_done(self, args);   /* math.exp raises: Python's to say */
        }
        ne = de * w + ms * (1.0 - w);
    }
    ms_obj = PyFloat_FromDouble(ne);
    if (ms_obj == NULL)
        return NULL;
    /* b.in_flight -= 1; pool.in_flight -= 1; a success clears the failure streaks;
     * the EWMA; b.stamp = now; b.samples += 1 */
    if (add_slot(b, S.b[B_IN_FLIGHT], bi, -1) < 0 || add_slot(pool, S.rp[R_IN_FLIGHT], pi, -1) < 0) {
        Py_DECREF(ms_obj);
        return NULL;
    }
    if (n5 || ncc) {
        PyObject *zero = PyLong_FromLong(0);
        slot_set(b, S.b[B_C5XX], Py_NewRef(zero));
        slot_set(b, S.b[B_CCONN], zero);
    }
    slot_set(b, S.b[B_EWMA], ms_obj);
    slot_set(b, S.b[B_STAMP], Py_NewRef(now));
    if (add_slot(b, S.b[B_SAMPLES], ns, 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef on_done_def = {
    "on_done", (PyCFunction)(void (*)(void))on_done, METH_FASTCALL | METH_KEYWORDS,
    "Selector.on_done(backend, latency, outcome, now) in C for \"ok\" (proxy/balance/_pick.c).",
};

/* --------------------------------------------------------------- setup */

static PyObject *
method_on(PyMethodDef *def, PyObject *type)
{
    /* a method descriptor for `type`, so `self` is bound like a Python method's */
    return PyDescr_NewMethod((PyTypeObject *)type, def);
}

/* setup(Selector, BalanceSelector, RequestContext, Plan, RegionPool, BackendState, Decision,
 *       pick_py, on_done_py, vars(pool), vars(cluster), vars(selection), cluster.on_done, OK)
 *   -> (pick, on_done); once per process */
static PyObject *
setup(PyObject *module, PyObject *args)
{
    PyObject *sel, *bsel, *ctx, *plan, *rp, *b, *d, *pick_py, *done_py, *pool_globals,
        *cluster_globals, *sel_globals, *cluster_on_done, *ok;
    if (S.ready) {
        PyErr_SetString(PyExc_RuntimeError, "proxy.balance._pick is already set up");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO!O!O!OU:setup", &sel, &bsel, &ctx, &plan, &rp, &b, &d,
                          &pick_py, &done_py, &PyDict_Type, &pool_globals, &PyDict_Type,
                          &cluster_globals, &PyDict_Type, &sel_globals, &cluster_on_done, &ok))
        return NULL;
    PyObject *types[7] = {sel, bsel, ctx, plan, rp, b, d};
    for (int i = 0; i < 7; i++)
        if (!PyType_Check(types[i])) {
            PyErr_SetString(PyExc_TypeError, "setup: not a class");
            return NULL;
        }
    if (slot_offsets((PyTypeObject *)ctx, ctx_names, N_CTX, S.ctx) < 0
        || slot_offsets((PyTypeObject *)plan, plan_names, N_PLAN, S.plan) < 0
        || slot_offsets((PyTypeObject *)rp, rp_names, N_RP, S.rp) < 0
        || slot_offsets((PyTypeObject *)b, b_names, N_B, S.b) < 0
        || slot_offsets((PyTypeObject *)d, d_names, N_D, S.d) < 0)
        return NULL;
    PyObject *p2c = PyObject_GetAttrString(rp, "_pick_p2c");
    PyObject *math = PyImport_ImportModule("math");
    PyObject *mexp = math ? PyObject_GetAttrString(math, "exp") : NULL;
    Py_XDECREF(math);
    if (p2c == NULL || mexp == NULL || !PyFunction_Check(p2c)) {
        Py_XDECREF(p2c);
        Py_XDECREF(mexp);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "setup: RegionPool._pick_p2c is not a function");
        return NULL;
    }
    S.sel_type = (PyTypeObject *)Py_NewRef(sel);
    S.bsel_type = (PyTypeObject *)Py_NewRef(bsel);
    S.ctx_type = (PyTypeObject *)Py_NewRef(ctx);
    S.plan_type = (PyTypeObject *)Py_NewRef(plan);
    S.rp_type = (PyTypeObject *)Py_NewRef(rp);
    S.b_type = (PyTypeObject *)Py_NewRef(b);
    S.d_type = (PyTypeObject *)Py_NewRef(d);
    S.pick_py = Py_NewRef(pick_py);
    S.on_done_py = Py_NewRef(done_py);
    S.pool_globals = Py_NewRef(pool_globals);
    S.p2c_func = p2c;
    S.cluster_globals = Py_NewRef(cluster_globals);
    S.sel_globals = Py_NewRef(sel_globals);
    S.cluster_on_done = Py_NewRef(cluster_on_done);
    S.math_exp = mexp;
    S.s_ok = Py_NewRef(ok);
#define INTERN(f, s) if ((S.f = PyUnicode_InternFromString(s)) == NULL) return NULL
    INTERN(s_plans, "plans");
    INTERN(s_node, "node");
    INTERN(s_hooks, "hooks");
    INTERN(s_residency_active, "residency_active");
    INTERN(s_balancer, "balancer");
    INTERN(s_cluster, "cluster");
    INTERN(s_view, "view");
    INTERN(s_next_event, "next_event");
    INTERN(s_gen, "gen");
    INTERN(s_name, "name");
    INTERN(s_lat, "lat");
    INTERN(s_lon, "lon");
    INTERN(s_reason, "reason");
    INTERN(s_random, "_random");
    INTERN(s_exp, "_exp");
    INTERN(s_slow_factor, "slow_factor");
    INTERN(s_backend, "backend");
    INTERN(s_ewma_ms, "ewma_ms");
    INTERN(s_stamp, "stamp");
    INTERN(s_in_flight, "in_flight");
    INTERN(s_weight, "weight");
    INTERN(s_slow_until, "slow_until");
    INTERN(s_slow, "_slow");
    INTERN(s_neg_inv_tau, "_neg_inv_tau");
    INTERN(s_id, "id");
    INTERN(s_last_resort, "_last_resort");
    INTERN(s_on_done, "on_done");
    INTERN(no_backend, "no backend available");
#undef INTERN
    if ((S.one = PyLong_FromLong(1)) == NULL)
        return NULL;
    PyObject *pk = method_on(&pick_def, sel), *dn = method_on(&on_done_def, sel);
    if (pk == NULL || dn == NULL) {
        Py_XDECREF(pk);
        Py_XDECREF(dn);
        return NULL;
    }
    S.ready = 1;
    PyObject *r = PyTuple_Pack(2, pk, dn);
    Py_DECREF(pk);
    Py_DECREF(dn);
    return r;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "setup(...) -> (pick, on_done): see proxy/selection.py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "proxy.balance._pick",
    "The balancer's per-request common case in C (proxy/selection.py keeps the reference).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__pick(void)
{
    return PyModule_Create(&moddef);
}
