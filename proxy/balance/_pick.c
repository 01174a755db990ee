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
    PyObject *last_resort;               /* balance Selector._last_resort (the function) */
    PyObject *math_exp;                  /* math.exp: C's exp() gives the same doubles */
    PyObject *s_plans, *s_node, *s_hooks, *s_residency_active, *s_balancer, *s_cluster, *s_view,
        *s_next_event, *s_gen, *s_name, *s_lat, *s_lon, *s_reason, *s_random, *s_exp, *s_ok,
        *s_latency, *s_geo, *s_slow_factor, *s_backend;
    PyObject *one, *no_backend;
} S;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static void
slot_set(PyObject *obj, Py_ssize_t off, PyObject *v)   /* steals v */
{
    PyObject *old = SLOT(obj, off);
    SLOT(obj, off) = v;
    Py_XDECREF(old);
}

static int
offsets(PyObject *type, const char **names, int n, Py_ssize_t *off)
{
    for (int i = 0; i < n; i++) {
        PyObject *d = PyDict_GetItemString(((PyTypeObject *)type)->tp_dict, names[i]);
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)
            || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "setup: %s.%s is not an object slot",
                         ((PyTypeObject *)type)->tp_name, names[i]);
            return -1;
        }
        off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    return 0;
}

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

static PyObject *p2c_cost_owned(PyObject *ewma, PyObject *stamp, PyObject *inf, PyObject *weight,
                                PyObject *slow_until, PyObject *b, PyObject *now, PyObject *k,
                                PyObject *slow, PyObject *exp_fn);

/* b.ewma_ms * _exp((now - b.stamp) * k) * (b.in_flight + 1) / b.weight, then
 * divided by b.slow_factor(now, *slow) when now < b.slow_until: the Python
 * expression, as a new float (or what Python's number protocol gives). */
static PyObject *
p2c_cost(PyObject *b, PyObject *now, PyObject *k, PyObject *slow, PyObject *exp_fn)
{
    /* exp_fn is math.exp (then C's exp(), which math.exp calls) or a stand-in */
    /* owned: the number protocol and exp_fn may run Python code that reassigns them */
    PyObject *v[5];
    for (int i = 0; i < 5; i++) {
        static const int which[5] = {B_EWMA, B_STAMP, B_IN_FLIGHT, B_WEIGHT, B_SLOW_UNTIL};
        v[i] = SLOT(b, S.b[which[i]]);
        if (v[i] == NULL) {
            PyErr_SetString(PyExc_AttributeError, "BackendState slot not set");
            while (i--)
                Py_DECREF(v[i]);
            return NULL;
        }
        Py_INCREF(v[i]);
    }
    PyObject *cost = p2c_cost_owned(v[0], v[1], v[2], v[3], v[4], b, now, k, slow, exp_fn);
    for (int i = 0; i < 5; i++)
        Py_DECREF(v[i]);
    return cost;
}

static PyObject *
p2c_cost_owned(PyObject *ewma, PyObject *stamp, PyObject *inf, PyObject *weight,
               PyObject *slow_until, PyObject *b, PyObject *now, PyObject *k, PyObject *slow,
               PyObject *exp_fn)
{
    PyObject *cost;
    double de, ds, dn, dk, dw;
    long long li, lw;
    if (exp_fn == S.math_exp && as_double(ewma, &de) && PyFloat_CheckExact(stamp)
        && as_double(now, &dn) && PyFloat_CheckExact(now) && PyFloat_CheckExact(k)
        && as_small_int(inf, &li) && as_small_int(weight, &lw) && lw != 0) {
        ds = PyFloat_AS_DOUBLE(stamp);
        dk = PyFloat_AS_DOUBLE(k);
        double arg = (dn - ds) * dk;
        double e = exp(arg);
        if (!isfinite(e) && isfinite(arg)) {
            PyErr_SetString(PyExc_OverflowError, "math range error");
            return NULL;
        }
        dw = (double)lw;
        cost = PyFloat_FromDouble(de * e * (double)(li + 1) / dw);
    }
    else {
        /* the number protocol, step by step as Python evaluates it */
        PyObject *t = PyNumber_Subtract(now, stamp), *u, *e, *c, *c2, *i1;
        if (!t)
            return NULL;
        u = PyNumber_Multiply(t, k);
        Py_DECREF(t);
        if (!u)
            return NULL;
        e = PyObject_CallOneArg(exp_fn, u);
        Py_DECREF(u);
        if (!e)
            return NULL;
        c = PyNumber_Multiply(ewma, e);
        Py_DECREF(e);
        if (!c)
            return NULL;
        i1 = PyNumber_Add(inf, S.one);
        if (!i1) {
            Py_DECREF(c);
            return NULL;
        }
        c2 = PyNumber_Multiply(c, i1);
        Py_DECREF(c);
        Py_DECREF(i1);
        if (!c2)
            return NULL;
        cost = PyNumber_TrueDivide(c2, weight);
        Py_DECREF(c2);
    }
    if (cost == NULL)
        return NULL;
    /* if now < b.slow_until: cost /= b.slow_factor(now, *slow) */
    int lt = PyObject_RichCompareBool(now, slow_until, Py_LT);
    if (lt < 0) {
        Py_DECREF(cost);
        return NULL;
    }
    if (lt) {
        PyObject *full = NULL, *meth = NULL, *f = NULL;
        PyObject *head = PyTuple_Pack(1, now);
        PyObject *rest = head ? PySequence_Tuple(slow) : NULL;
        if (rest)
            full = PySequence_Concat(head, rest);
        Py_XDECREF(head);
        Py_XDECREF(rest);
        if (full)
            meth = PyObject_GetAttr(b, S.s_slow_factor);
        if (meth)
            f = PyObject_Call(meth, full, NULL);
        Py_XDECREF(meth);
        Py_XDECREF(full);
        if (!f) {
            Py_DECREF(cost);
            return NULL;
        }
        PyObject *q = PyNumber_InPlaceTrueDivide(cost, f);
        Py_DECREF(f);
        Py_DECREF(cost);
        cost = q;
    }
    return cost;
}

/* int(_random() * n), Python's way */
static int
draw(PyObject *rnd, Py_ssize_t n, Py_ssize_t *out)
{
    PyObject *r = PyObject_CallNoArgs(rnd);
    if (r == NULL)
        return -1;
    if (PyFloat_CheckExact(r)) {
        double x = PyFloat_AS_DOUBLE(r) * (double)n;
        Py_DECREF(r);
        if (x > -9.0e15 && x < 9.0e15) {
            *out = (Py_ssize_t)x;   /* truncation toward zero, as int() */
            return 0;
        }
        PyErr_SetString(PyExc_OverflowError, "random draw out of range");
        return -1;
    }
    PyObject *pn = PyLong_FromSsize_t(n);
    PyObject *p = pn ? PyNumber_Multiply(r, pn) : NULL;
    Py_XDECREF(pn);
    Py_DECREF(r);
    if (p == NULL)
        return -1;
    PyObject *i = PyNumber_Long(p);
    Py_DECREF(p);
    if (i == NULL)
        return -1;
    *out = PyLong_AsSsize_t(i);
    Py_DECREF(i);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* RegionPool._pick_p2c(now, None, None) on `rp`: a new reference to the backend
 * or None, NULL on an error, or NotImplemented (nothing drawn yet) for a view
 * with something other than BackendStates in it */
static PyObject *
pick_p2c(PyObject *rp, PyObject *now, int *drawn)
{
    PyObject *view = SLOT(rp, S.rp[R_VIEW]);
    if (view == NULL || !PyList_CheckExact(view)) {
        PyErr_SetString(PyExc_TypeError, "RegionPool.view is not a list");
        return NULL;
    }
    Py_INCREF(view);
    Py_ssize_t n = PyList_GET_SIZE(view);
    PyObject *res = NULL;
    for (Py_ssize_t x = 0; x < n; x++) {
        if (Py_TYPE(PyList_GET_ITEM(view, x)) != S.b_type) {
            Py_DECREF(view);
            return Py_NewRef(Py_NotImplemented);   /* not drawn yet: the caller asks Python */
        }
    }
    if (n < 2) {
        res = Py_NewRef(n ? PyList_GET_ITEM(view, 0) : Py_None);
        Py_DECREF(view);
        return res;
    }
    PyObject *rnd = PyDict_GetItemWithError(S.pool_globals, S.s_random);
    PyObject *expf = PyDict_GetItemWithError(S.pool_globals, S.s_exp);
    if (rnd == NULL || expf == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_NameError, "proxy.balance.pool._random/_exp");
        Py_DECREF(view);
        return NULL;
    }
    Py_INCREF(rnd);
    Py_INCREF(expf);
    Py_ssize_t i, j;
    PyObject *a = NULL, *b = NULL, *k = NULL, *slow = NULL, *ca = NULL, *cb = NULL;
    *drawn = 1;
    if (draw(rnd, n, &i) < 0 || draw(rnd, n - 1, &j) < 0)
        goto done;
    if (j >= i)
        j += 1;
    /* view may have changed under random() (it is Python): index as Python would */
    a = PySequence_GetItem(view, i);
    if (a == NULL)
        goto done;
    b = PySequence_GetItem(view, j);
    if (b == NULL)
        goto done;
    if (SLOT(rp, S.rp[R_NEG_INV_TAU]) == NULL || SLOT(rp, S.rp[R_SLOW]) == NULL) {
        PyErr_SetString(PyExc_AttributeError, "RegionPool slot not set");
        goto done;
    }
    k = Py_NewRef(SLOT(rp, S.rp[R_NEG_INV_TAU]));
    slow = Py_NewRef(SLOT(rp, S.rp[R_SLOW]));
    if (Py_TYPE(a) != S.b_type || Py_TYPE(b) != S.b_type) {
        PyErr_SetString(PyExc_TypeError, "p2c: not a BackendState");
        goto done;
    }
    ca = p2c_cost(a, now, k, slow, expf);
    if (ca == NULL)
        goto done;
    cb = p2c_cost(b, now, k, slow, expf);
    if (cb == NULL)
        goto done;
    int le = PyObject_RichCompareBool(ca, cb, Py_LE);
    if (le < 0)
        goto done;
    res = Py_NewRef(le ? a : b);
done:
    Py_XDECREF(ca);
    Py_XDECREF(cb);
    Py_XDECREF(k);
    Py_XDECREF(slow);
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_DECREF(rnd);
    Py_DECREF(expf);
    Py_DECREF(view);
    return res;
}

/* ---------------------------------------------------------------- pick */

static PyObject *
fallback_pick(PyObject *self, PyObject *ctx, PyObject *exclude, PyObject *now)
{
    return PyObject_CallFunctionObjArgs(S.pick_py, self, ctx, exclude, now, NULL);
}

/* getattr, with a borrowed-looking contract: returns a new reference */
#define GA(o, s) PyObject_GetAttr((o), (s))

/* Selector.pick(self, ctx, exclude, now) -> BackendState | (status, reason) */
static PyObject *
pick(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pick(ctx, exclude, now)");
        return NULL;
    }
    PyObject *ctx = args[0], *exclude = args[1], *now = args[2];
    if (!S.ready || Py_TYPE(self) != S.sel_type || Py_TYPE(ctx) != S.ctx_type
        || !PyFloat_CheckExact(now) || !PyAnySet_CheckExact(exclude) || PySet_GET_SIZE(exclude) != 0)
        return fallback_pick(self, ctx, exclude, now);

    PyObject *res = NULL, *plans = NULL, *route = NULL, *name = NULL, *node = NULL, *hooks = NULL,
        *resid = NULL, *bal = NULL, *cluster = NULL, *view = NULL, *next_event = NULL,
        *cgen = NULL, *vgen = NULL, *gsum = NULL, *order = NULL, *latlon = NULL, *backend = NULL,
        *region = NULL, *plan = NULL;
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
    PyObject *valid_until = SLOT(plan, S.plan[P_VALID_UNTIL]), *pgen = SLOT(plan, S.plan[P_GEN]);
    if (valid_until == NULL || pgen == NULL)
        goto python;
    ge = PyObject_RichCompareBool(now, valid_until, Py_GE);
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
    if (!PyLong_CheckExact(cgen) || !PyLong_CheckExact(vgen) || !PyLong_CheckExact(pgen))
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
    PyObject *cap = SLOT(plan, S.plan[P_MAX_IFPB]);
    if (ranking == NULL || !PyList_CheckExact(ranking) || cap == NULL
        || (cap != Py_None && !PyLong_CheckExact(cap)))
        goto python;
    order = Py_NewRef(ranking);
    long long lcap = 0;
    int has_cap = cap != Py_None;   /* cap itself is not used past here */
    if (has_cap) {
        int of;
        lcap = PyLong_AsLongLongAndOverflow(cap, &of);
        if (of || lcap < 0 || lcap > (1LL << 30))
            goto python;
    }
    for (Py_ssize_t r = 0; r < PyList_GET_SIZE(order); r++) {
        PyObject *rp = PyList_GET_ITEM(order, r);
        if (Py_TYPE(rp) != S.rp_type) {
            if (drawn)
                goto error_type;
            goto python;
        }
        Py_INCREF(rp);
        if (has_cap) {
            /* rp.in_flight >= len(rp.view) * cap: saturated, next region */
            PyObject *inf = SLOT(rp, S.rp[R_IN_FLIGHT]), *rview = SLOT(rp, S.rp[R_VIEW]);
            long long li;
            if (inf == NULL || rview == NULL || !PyList_CheckExact(rview) || !as_small_int(inf, &li)) {
                Py_DECREF(rp);
                if (drawn)
                    goto error_type;
                goto python;
            }
            if (li >= (long long)PyList_GET_SIZE(rview) * lcap) {
                Py_DECREF(rp);
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
    d = PyObject_CallFunctionObjArgs(S.last_resort, bal, plan, order, Py_None, Py_None, latlon,
                                     Py_None, now, Py_None, NULL);
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
        /* exclude is empty: b.id in exclude is False */
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
    return res;
}

static PyMethodDef pick_def = {
    "pick", (PyCFunction)(void (*)(void))pick, METH_FASTCALL,
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
on_done(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "on_done(backend, latency, outcome, now)");
        return NULL;
    }
    PyObject *b = args[0], *latency = args[1], *outcome = args[2], *now = args[3];
    if (!S.ready || Py_TYPE(self) != S.sel_type || Py_TYPE(b) != S.b_type
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
    "on_done", (PyCFunction)(void (*)(void))on_done, METH_FASTCALL,
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
 *       pick_py, on_done_py, pool_module_dict, OK) -> (pick, on_done) */
static PyObject *
setup(PyObject *module, PyObject *args)
{
    PyObject *sel, *bsel, *ctx, *plan, *rp, *b, *d, *pick_py, *done_py, *pool_globals, *ok;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO!U:setup", &sel, &bsel, &ctx, &plan, &rp, &b, &d,
                          &pick_py, &done_py, &PyDict_Type, &pool_globals, &ok))
        return NULL;
    PyObject *types[7] = {sel, bsel, ctx, plan, rp, b, d};
    for (int i = 0; i < 7; i++)
        if (!PyType_Check(types[i])) {
            PyErr_SetString(PyExc_TypeError, "setup: not a class");
            return NULL;
        }
    if (offsets(ctx, ctx_names, N_CTX, S.ctx) < 0 || offsets(plan, plan_names, N_PLAN, S.plan) < 0
        || offsets(rp, rp_names, N_RP, S.rp) < 0 || offsets(b, b_names, N_B, S.b) < 0
        || offsets(d, d_names, N_D, S.d) < 0)
        return NULL;
    PyObject *p2c = PyObject_GetAttrString(rp, "_pick_p2c");
    PyObject *lr = PyObject_GetAttrString(bsel, "_last_resort");
    PyObject *math = PyImport_ImportModule("math");
    PyObject *mexp = math ? PyObject_GetAttrString(math, "exp") : NULL;
    Py_XDECREF(math);
    if (p2c == NULL || lr == NULL || mexp == NULL || !PyFunction_Check(p2c) || !PyFunction_Check(lr)) {
        Py_XDECREF(p2c);
        Py_XDECREF(lr);
        Py_XDECREF(mexp);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "setup: RegionPool._pick_p2c / _last_resort are not functions");
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
    S.last_resort = lr;
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
