/* proxy._hotpath: the request and response header callbacks (Downstream.on_header,
 * Exchange.on_header), request.build_upstream_head, check_head's common case,
 * the response head's field loop and Exchange creation in C.
 *
 * Why C: httptools calls on_header once per request header field; the
 * Python method costs ~0.35 us a field, which with a browser's dozen fields
 * is the largest single item of the request path (loadtests/bench_nginx.py,
 * "tiny browser"). This is the same method for the common field: it
 * lower-cases the name, appends (name, value) and the name as written,
 * counts the bytes and, for Host, counts it and keeps its value.
 *
 * Contract: everything else goes to the Python method (downstream.py,
 * Downstream._on_header_py) before anything is changed: a trailer field,
 * a field over a limit (the Python method raises the 431), a framing or
 * routing field other than Host (Content-Length, Transfer-Encoding,
 * Connection, Expect, Upgrade), a name with "_" (the Python method decides
 * whether it is a disguised framing field), and anything of an unexpected
 * type. tests/unit/test_hotpath.py feeds both the same random heads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

#include "_slots.h"

enum { X_CTX, X_STATE, X_LIMITS, X_HEADERS, X_NAMES, X_HEADER_BYTES, X_URL_LEN, X_HOST_COUNT,
       X_HOST_VALUE, N_EX };
static const char *ex_names[N_EX] = {
    "ctx", "state", "limits", "headers", "names", "header_bytes", "url_len", "host_count",
    "host_value"};

static struct {
    int ready;
    PyTypeObject *down_type, *ex_type;
    Py_ssize_t down_parsing;          /* offset of Downstream.parsing */
    Py_ssize_t ex_off[N_EX];          /* offsets of Exchange slots */
    PyObject *parsing_state;          /* exchange.PARSING */
    PyObject *py_on_header;           /* Downstream._on_header_py */
    PyObject *s_max_headers, *s_max_header_bytes;
    /* The last Limits seen and its two limits: a frozen model (config.Frozen),
     * so one look-up per config, not two per field (~1 us a browser head). */
    PyTypeObject *limits_type;        /* config.Limits, or NULL: no caching */
    PyObject *limits;                 /* owned */
    Py_ssize_t max_headers, max_bytes;
} H;



static PyObject *
py_fallback(PyObject *down, PyObject *name, PyObject *value)
{
    return PyObject_CallFunctionObjArgs(H.py_on_header, down, name, value, NULL);
}

static Py_ssize_t
int_attr(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    Py_ssize_t n = PyLong_Check(v) ? PyLong_AsSsize_t(v) : -1;
    Py_DECREF(v);
    if (n == -1 && PyErr_Occurred())
        PyErr_Clear();
    return n;
}

/* Is the lower-case name one the Python method must see? */
static int
special(const char *p, Py_ssize_t n)
{
    switch (n) {
    case 6:
        return memcmp(p, "expect", 6) == 0;
    case 7:
        return memcmp(p, "upgrade", 7) == 0;
    case 10:
        return memcmp(p, "connection", 10) == 0;
    case 14:
        return memcmp(p, "content-length", 14) == 0;
    case 17:
        return memcmp(p, "transfer-encoding", 17) == 0;
    }
    return 0;
}

static PyObject *on_header_fields(PyObject *down, PyObject *ex, PyObject **f, PyObject *name,
                                  PyObject *value, Py_ssize_t max_headers, Py_ssize_t max_bytes);
static PyObject *on_header_ex(PyObject *down, PyObject *ex, PyObject *name, PyObject *value,
                              Py_ssize_t max_headers, Py_ssize_t max_bytes);

static PyObject *
on_header(PyObject *down, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "on_header(name, value)");
        return NULL;
    }
    PyObject *name = args[0], *value = args[1];
    if (!H.ready || !PyBytes_CheckExact(name) || !PyBytes_CheckExact(value)
        || !PyObject_TypeCheck(down, H.down_type))
        return py_fallback(down, name, value);
    PyObject *ex = SLOT(down, H.down_parsing);
    if (ex == NULL || Py_TYPE(ex) != H.ex_type)
        return py_fallback(down, name, value);
    /* The limits first: their look-ups are the only calls here that could run
     * Python code, and the slots are read after them. Own the exchange and
     * the limits meanwhile. */
    PyObject *limits = SLOT(ex, H.ex_off[X_LIMITS]);
    if (limits == NULL)
        return py_fallback(down, name, value);
    Py_INCREF(ex);
    Py_ssize_t max_headers, max_bytes;
    if (limits == H.limits) {
        max_headers = H.max_headers;
        max_bytes = H.max_bytes;
    }
    else {
        Py_INCREF(limits);
        max_headers = int_attr(limits, H.s_max_headers);
        max_bytes = max_headers < 0 ? -1 : int_attr(limits, H.s_max_header_bytes);
        if (max_headers >= 0 && max_bytes >= 0 && H.limits_type != NULL && Py_TYPE(limits) == H.limits_type) {
            Py_XSETREF(H.limits, Py_NewRef(limits));
            H.max_headers = max_headers;
            H.max_bytes = max_bytes;
        }
        Py_DECREF(limits);
    }
    PyObject *r = on_header_ex(down, ex, name, value, max_headers, max_bytes);
    Py_DECREF(ex);
    return r;
}

static PyObject *
on_header_ex(PyObject *down, PyObject *ex, PyObject *name, PyObject *value, Py_ssize_t max_headers,
             Py_ssize_t max_bytes)
{
    if (max_headers < 0 || max_bytes < 0 || SLOT(down, H.down_parsing) != ex)
        return py_fallback(down, name, value);
    PyObject *f[N_EX];
    for (int i = 0; i < N_EX; i++) {
        f[i] = SLOT(ex, H.ex_off[i]);
        if (f[i] == NULL)
            return py_fallback(down, name, value);
    }
    /* a trailer field (the head is done) */
    if (f[X_CTX] != Py_None || f[X_STATE] != H.parsing_state)
        return py_fallback(down, name, value);
    if (!PyList_CheckExact(f[X_HEADERS]) || !PyList_CheckExact(f[X_NAMES])
        || !PyLong_CheckExact(f[X_HEADER_BYTES]) || !PyLong_CheckExact(f[X_URL_LEN])
        || !PyLong_CheckExact(f[X_HOST_COUNT]))
        return py_fallback(down, name, value);
    /* owned all the same: nothing below runs Python code, but cheap insurance */
    for (int i = 0; i < N_EX; i++)
        Py_INCREF(f[i]);
    PyObject *r = on_header_fields(down, ex, f, name, value, max_headers, max_bytes);
    for (int i = 0; i < N_EX; i++)
        Py_DECREF(f[i]);
    return r;
}

static PyObject *
on_header_fields(PyObject *down, PyObject *ex, PyObject **f, PyObject *name, PyObject *value,
                 Py_ssize_t max_headers, Py_ssize_t max_bytes)
{
    Py_ssize_t n = PyBytes_GET_SIZE(name);
    const char *src = PyBytes_AS_STRING(name);
    if (memchr(src, '_', n) != NULL)
        return py_fallback(down, name, value);
    /* the limits, checked before anything changes: over one, Python raises */
    Py_ssize_t header_bytes = PyLong_AsSsize_t(f[X_HEADER_BYTES]);
    Py_ssize_t url_len = PyLong_AsSsize_t(f[X_URL_LEN]);
    Py_ssize_t new_bytes;
    if (header_bytes < 0 || url_len < 0
        || __builtin_add_overflow(header_bytes, n + PyBytes_GET_SIZE(value) + 4, &new_bytes)) {
        PyErr_Clear();
        return py_fallback(down, name, value);
    }
    if (PyList_GET_SIZE(f[X_HEADERS]) >= max_headers || new_bytes - url_len > max_bytes)
        return py_fallback(down, name, value);

    /* name.lower(): ASCII only, as bytes.lower() */
    PyObject *ln = PyBytes_FromStringAndSize(NULL, n);
    if (ln == NULL)
        return NULL;
    char *dst = PyBytes_AS_STRING(ln);
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = src[i];
        dst[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    int is_host = n == 4 && memcmp(dst, "host", 4) == 0;
    if (!is_host && special(dst, n)) {
        Py_DECREF(ln);
        return py_fallback(down, name, value);
    }
    PyObject *pair = PyTuple_Pack(2, ln, value);
    Py_DECREF(ln);
    if (pair == NULL)
        return NULL;
    PyObject *nb = PyLong_FromSsize_t(new_bytes);
    PyObject *hc = NULL;
    if (nb == NULL)
        goto fail;
    if (is_host) {
        Py_ssize_t count = PyLong_AsSsize_t(f[X_HOST_COUNT]);
        if (count == -1 && PyErr_Occurred())
            goto fail;
        if ((hc = PyLong_FromSsize_t(count + 1)) == NULL)
            goto fail;
    }
    /* nothing can fail from here on but the appends, which go first */
    if (PyList_Append(f[X_HEADERS], pair) < 0)
        goto fail;
    if (PyList_Append(f[X_NAMES], name) < 0) {
        /* undo: the two lists stay the same length */
        PyList_SetSlice(f[X_HEADERS], PyList_GET_SIZE(f[X_HEADERS]) - 1,
                        PyList_GET_SIZE(f[X_HEADERS]), NULL);
        goto fail;
    }
    Py_DECREF(pair);
    slot_set(ex, H.ex_off[X_HEADER_BYTES], nb);
    if (is_host) {
        slot_set(ex, H.ex_off[X_HOST_COUNT], hc);
        Py_INCREF(value);
        slot_set(ex, H.ex_off[X_HOST_VALUE], value);
    }
    Py_RETURN_NONE;
fail:
    Py_DECREF(pair);
    Py_XDECREF(nb);
    Py_XDECREF(hc);
    return NULL;
}

static PyMethodDef on_header_def = {
    "on_header", (PyCFunction)(void (*)(void))on_header, METH_FASTCALL,
    "httptools callback: one request header field (proxy/_hotpath.c).",
};

/* setup(Downstream, Exchange, PARSING, py_on_header) -> a method descriptor
 * for Downstream.on_header */
static PyObject *
setup(PyObject *self, PyObject *args)
{
    PyObject *down_type, *ex_type, *parsing, *py_on_header, *limits_type = NULL;
    if (!PyArg_ParseTuple(args, "O!O!OO|O!:setup", &PyType_Type, &down_type, &PyType_Type, &ex_type,
                          &parsing, &py_on_header, &PyType_Type, &limits_type))
        return NULL;
    Py_ssize_t parsing_off, ex_off[N_EX];
    if (slot_offset((PyTypeObject *)down_type, "parsing", &parsing_off) < 0)
        return NULL;
    if (slot_offsets((PyTypeObject *)ex_type, ex_names, N_EX, ex_off) < 0)
        return NULL;
    /* (each other part keeps the Exchange type it was set up for, and takes
     * only exchanges of that type) */
    H.ready = 0;
    H.down_parsing = parsing_off;
    memcpy(H.ex_off, ex_off, sizeof(ex_off));
    Py_INCREF(down_type); Py_XSETREF(H.down_type, (PyTypeObject *)down_type);
    Py_INCREF(ex_type); Py_XSETREF(H.ex_type, (PyTypeObject *)ex_type);
    Py_INCREF(parsing); Py_XSETREF(H.parsing_state, parsing);
    Py_INCREF(py_on_header); Py_XSETREF(H.py_on_header, py_on_header);
    Py_XINCREF(limits_type); Py_XSETREF(H.limits_type, (PyTypeObject *)limits_type);
    Py_CLEAR(H.limits);
    H.ready = 1;
    return PyDescr_NewMethod((PyTypeObject *)down_type, &on_header_def);
}

/* -- build_upstream_head ----------------------------------------------------
 * request.build_upstream_head in C: the head sent upstream, from the
 * client's fields in order (Host rewritten, hop-by-hop and node-set fields
 * skipped by the `actions` table, fields named in Connection dropped), the
 * connection's memoised forwarding block, the request id, the framing
 * field and the upgrade fields. Python's version (build_upstream_head_py)
 * stays the reference and takes what this one does not do: a request that
 * brings its own X-Forwarded-For (from a trusted peer) or Via, no memo or a
 * memo that does not hold this request's block (a connection's first
 * request: Python makes the block and keeps it), or anything of an
 * unexpected type; nothing is changed before that choice. */

enum { E_METHOD, E_HEADERS, E_NAMES, E_CONN_TOKENS, E_HOST_COUNT, E_CHUNKED, E_DECLARED_LEN,
       E_WANT_UPGRADE, E_UPGRADE, E_HOST_MISSING, E_BODY_CHUNKED_OUT, N_HEAD };
static const char *head_names[N_HEAD] = {
    "method", "headers", "names", "conn_tokens", "host_count", "chunked", "declared_len",
    "want_upgrade", "upgrade", "host_missing", "body_chunked_out"};

static struct {
    int ready;
    PyTypeObject *ex_type;
    Py_ssize_t off[N_HEAD];
    PyObject *py_build;       /* request.build_upstream_head_py */
    PyObject *keep;           /* request._KEEP */
    long skip, xff, via, host;
} B;

typedef struct {
    const char *p;
    Py_ssize_t n;
} Piece;

typedef struct {
    Piece *v;
    Py_ssize_t n, cap, len;
} Pieces;

static int
add(Pieces *s, const char *p, Py_ssize_t n)
{
    if (s->n == s->cap) {
        Py_ssize_t cap = s->cap * 2;
        Piece *v = PyMem_Realloc(s->v, cap * sizeof(Piece));
        if (v == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n].p = p;
    s->v[s->n].n = n;
    s->n++;
    s->len += n;
    return 0;
}

#define ADD_LIT(s, lit) add((s), (lit), (Py_ssize_t)sizeof(lit) - 1)
#define ADD_BYTES(s, b) add((s), PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

static PyObject *
build_py(PyObject *const *args, Py_ssize_t nargs)
{
    return PyObject_Vectorcall(B.py_build, args, nargs, NULL);
}

static PyObject *build_fields(PyObject *const *args, Py_ssize_t nargs, PyObject **f,
                              int trusted_peer);

/* build_upstream_head(ex, target, host, client_ip, trusted_peer, peer_ip, scheme, via,
 *                     request_id, actions, extra, memo) */
static PyObject *
build_upstream_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 12 || !B.ready || !H.ready)
        return build_py(args, nargs);
    PyObject *ex = args[0], *target = args[1], *host = args[2], *trusted = args[4],
        *scheme = args[6], *request_id = args[8], *actions = args[9], *memo = args[11];
    if (Py_TYPE(ex) != B.ex_type || !PyBytes_CheckExact(target) || !PyBytes_CheckExact(host)
        || !PyBytes_CheckExact(request_id) || !PyBytes_CheckExact(scheme)
        || !PyDict_CheckExact(actions) || !PyList_CheckExact(memo) || PyList_GET_SIZE(memo) != 2)
        return build_py(args, nargs);
    PyObject *f[N_HEAD];
    for (int i = 0; i < N_HEAD; i++) {
        f[i] = SLOT(ex, B.off[i]);
        if (f[i] == NULL)
            return build_py(args, nargs);
    }
    PyObject *headers = f[E_HEADERS], *names = f[E_NAMES];
    /* flags as exact bools and a host count that fits: no Python code runs
     * for them, and nothing else is left to the C to interpret */
    if (!PyUnicode_CheckExact(f[E_METHOD]) || !PyList_CheckExact(headers) || !PyList_CheckExact(names)
        || !PyAnySet_CheckExact(f[E_CONN_TOKENS]) || !PyLong_CheckExact(f[E_HOST_COUNT])
        || !PyLong_CheckExact(f[E_DECLARED_LEN]) || !PyBool_Check(trusted) || !PyBool_Check(f[E_CHUNKED])
        || !PyBool_Check(f[E_WANT_UPGRADE]) || !PyBool_Check(f[E_HOST_MISSING]))
        return build_py(args, nargs);
    int overflow;
    long host_count = PyLong_AsLongAndOverflow(f[E_HOST_COUNT], &overflow);
    if (overflow || host_count < 0)
        return build_py(args, nargs);
    int trusted_peer = trusted == Py_True;
    for (int i = 0; i < N_HEAD; i++)
        Py_INCREF(f[i]);
    PyObject *res = build_fields(args, nargs, f, trusted_peer);
    for (int i = 0; i < N_HEAD; i++)
        Py_DECREF(f[i]);
    return res;
}

static PyObject *
build_fields(PyObject *const *args, Py_ssize_t nargs, PyObject **f, int trusted_peer)
{
    PyObject *ex = args[0], *target = args[1], *host = args[2], *client_ip = args[3],
        *request_id = args[8], *actions = args[9], *extra = args[10], *memo = args[11];
    /* own copies of the lists: the pieces point into their bytes until the join */
    PyObject *headers = PyList_GetSlice(f[E_HEADERS], 0, PY_SSIZE_T_MAX);
    if (headers == NULL)
        return NULL;
    PyObject *names = PyList_GetSlice(f[E_NAMES], 0, PY_SSIZE_T_MAX);
    if (names == NULL) {
        Py_DECREF(headers);
        return NULL;
    }
    Py_ssize_t nh = PyList_GET_SIZE(headers);
    if (PyList_GET_SIZE(names) < nh)
        nh = PyList_GET_SIZE(names);   /* zip() stops at the shorter */
    Pieces s;
    s.cap = 4 * nh + 32;
    s.n = s.len = 0;
    s.v = PyMem_Malloc(s.cap * sizeof(Piece));
    if (s.v == NULL)
        return PyErr_NoMemory();
    PyObject *result = NULL, *drop = NULL, *fwd = NULL, *cl = NULL, *up_bytes = NULL, *key = NULL;

    Py_ssize_t mlen;
    const char *m = PyUnicode_AsUTF8AndSize(f[E_METHOD], &mlen);
    if (m == NULL)
        goto done;
    if (add(&s, m, mlen) < 0 || ADD_LIT(&s, " ") < 0 || ADD_BYTES(&s, target) < 0
        || ADD_LIT(&s, " HTTP/1.1\r\n") < 0)
        goto done;
    if (PySet_GET_SIZE(f[E_CONN_TOKENS]) > 0 && (drop = PyNumber_Subtract(f[E_CONN_TOKENS], B.keep)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i), *name = PyList_GET_ITEM(names, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_CheckExact(name))
            goto python;
        PyObject *ln = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        if (!PyBytes_CheckExact(ln) || !PyBytes_CheckExact(value))
            goto python;
        PyObject *act = PyDict_GetItemWithError(actions, ln);
        if (act == NULL) {
            if (PyErr_Occurred())
                goto done;
            if (drop != NULL && PySet_GET_SIZE(drop) > 0) {
                int in = PySet_Contains(drop, ln);
                if (in < 0)
                    goto done;
                if (in)
                    continue;
            }
            if (ADD_BYTES(&s, name) < 0 || ADD_LIT(&s, ": ") < 0 || ADD_BYTES(&s, value) < 0
                || ADD_LIT(&s, "\r\n") < 0)
                goto done;
            continue;
        }
        long a = PyLong_Check(act) ? PyLong_AsLong(act) : -1;
        if (a == -1 && PyErr_Occurred())
            PyErr_Clear();
        if (a == B.host) {
            if (ADD_LIT(&s, "Host: ") < 0 || ADD_BYTES(&s, host) < 0 || ADD_LIT(&s, "\r\n") < 0)
                goto done;
        } else if (a == B.skip || (a == B.xff && !trusted_peer)) {
            continue;
        } else {   /* a forwarded chain or Via to extend, or an unknown action */
            goto python;
        }
    }
    if (PyLong_AsLong(f[E_HOST_COUNT]) == 0 && PyBytes_GET_SIZE(host) > 0) {   /* fits: checked */
        if (ADD_LIT(&s, "Host: ") < 0 || ADD_BYTES(&s, host) < 0 || ADD_LIT(&s, "\r\n") < 0)
            goto done;
    }

    /* the forwarding block: the connection's memo, [key, block], key = (host, client_ip, extra) */
    {
        key = Py_NewRef(PyList_GET_ITEM(memo, 0));
        int hit = 0;
        if (PyTuple_CheckExact(key) && PyTuple_GET_SIZE(key) == 3) {
            PyObject *mine[3] = {host, client_ip, extra};
            hit = 1;
            for (int i = 0; i < 3 && hit; i++) {
                int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(key, i), mine[i], Py_EQ);
                if (eq < 0)
                    goto done;
                hit = eq;
            }
        }
        if (!hit)   /* a connection's first request, or a new host, client or geo fields: */
            goto python;   /* Python makes the block and keeps it in the memo */
        fwd = Py_NewRef(PyList_GET_ITEM(memo, 1));
        if (!PyBytes_CheckExact(fwd))
            goto python;
        if (ADD_BYTES(&s, fwd) < 0)
            goto done;
    }
    if (ADD_LIT(&s, "X-Request-Id: ") < 0 || ADD_BYTES(&s, request_id) < 0 || ADD_LIT(&s, "\r\n") < 0)
        goto done;
    int chunked = f[E_CHUNKED] == Py_True;
    if (chunked) {
        if (ADD_LIT(&s, "Transfer-Encoding: chunked\r\n") < 0)
            goto done;
    } else {
        Py_ssize_t declared = PyLong_AsSsize_t(f[E_DECLARED_LEN]);
        if (declared == -1 && PyErr_Occurred()) {   /* beyond 2**63: Python writes it, dispatch 413s */
            PyErr_Clear();
            goto python;
        }
        if (declared >= 0) {
            if ((cl = PyBytes_FromFormat("Content-Length: %zd\r\n", declared)) == NULL
                || ADD_BYTES(&s, cl) < 0)
                goto done;
        } else if ((mlen == 4 && memcmp(m, "POST", 4) == 0) || (mlen == 3 && memcmp(m, "PUT", 3) == 0)
                   || (mlen == 5 && memcmp(m, "PATCH", 5) == 0)) {
            if (ADD_LIT(&s, "Content-Length: 0\r\n") < 0)
                goto done;
        }
    }
    int want_upgrade = f[E_WANT_UPGRADE] == Py_True;
    if (want_upgrade && f[E_UPGRADE] != Py_None) {
        if (!PyBytes_Check(f[E_UPGRADE]))
            goto python;
        up_bytes = Py_NewRef(f[E_UPGRADE]);
        if (ADD_LIT(&s, "Connection: upgrade\r\nUpgrade: ") < 0 || ADD_BYTES(&s, up_bytes) < 0
            || ADD_LIT(&s, "\r\n") < 0)
            goto done;
    }
    if (ADD_LIT(&s, "\r\n") < 0)
        goto done;

    result = PyBytes_FromStringAndSize(NULL, s.len);
    if (result == NULL)
        goto done;
    {
        char *out = PyBytes_AS_STRING(result);
        for (Py_ssize_t i = 0; i < s.n; i++) {
            memcpy(out, s.v[i].p, s.v[i].n);
            out += s.v[i].n;
        }
    }
    /* the exchange's flags, as Python sets them */
    Py_INCREF(PyBytes_GET_SIZE(host) ? Py_False : Py_True);
    slot_set(ex, B.off[E_HOST_MISSING], PyBytes_GET_SIZE(host) ? Py_False : Py_True);
    if (chunked) {
        Py_INCREF(Py_True);
        slot_set(ex, B.off[E_BODY_CHUNKED_OUT], Py_True);
    }
    goto done;

python:
    /* nothing changed yet (the memo is only written after the loop) */
    result = build_py(args, nargs);
done:
    PyMem_Free(s.v);
    Py_DECREF(headers);
    Py_DECREF(names);
    Py_XDECREF(key);
    Py_XDECREF(drop);
    Py_XDECREF(fwd);
    Py_XDECREF(cl);
    Py_XDECREF(up_bytes);
    return result;
}

static PyMethodDef build_def = {
    "build_upstream_head", (PyCFunction)(void (*)(void))build_upstream_head, METH_FASTCALL,
    "request.build_upstream_head in C (proxy/_hotpath.c).",
};

/* setup_head(Exchange, py_build, keep, (SKIP, XFF, VIA, HOST)) -> the C function */
static PyObject *
setup_head(PyObject *self, PyObject *args)
{
    PyObject *ex_type, *py_build, *keep;
    long skip, xff, via, host;
    if (!PyArg_ParseTuple(args, "O!OO!(llll):setup_head", &PyType_Type, &ex_type, &py_build,
                          &PyFrozenSet_Type, &keep, &skip, &xff, &via, &host))
        return NULL;
    if (!H.ready || (PyTypeObject *)ex_type != H.ex_type) {
        PyErr_SetString(PyExc_RuntimeError, "setup_head: call setup() first, with the same Exchange");
        return NULL;
    }
    B.ready = 0;
    if (slot_offsets((PyTypeObject *)ex_type, head_names, N_HEAD, B.off) < 0)
        return NULL;
    Py_INCREF(ex_type); Py_XSETREF(B.ex_type, (PyTypeObject *)ex_type);
    Py_INCREF(py_build); Py_XSETREF(B.py_build, py_build);
    Py_INCREF(keep); Py_XSETREF(B.keep, keep);
    B.skip = skip; B.xff = xff; B.via = via; B.host = host;
    B.ready = 1;
    return PyCFunction_New(&build_def, NULL);
}

/* -- Exchange.on_header (the response side) ----------------------------------
 * The backend's fields: count the bytes against the head limit, keep each
 * (name, value) of the head (a trailer field is dropped). Python's method
 * (Exchange._on_header_py) raises at the limit and takes anything of an
 * unexpected type. */

enum { R_HEAD_BYTES, R_HEAD_SENT, R_HEADERS, N_RESP };
static const char *resp_names[N_RESP] = {"resp_head_bytes", "resp_head_sent", "resp_headers"};

static struct {
    int ready;
    PyTypeObject *ex_type;
    Py_ssize_t off[N_RESP];
    Py_ssize_t limit;
    PyObject *py_on_header;
} R;

static PyObject *
resp_on_header(PyObject *ex, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "on_header(name, value)");
        return NULL;
    }
    if (!R.ready || Py_TYPE(ex) != R.ex_type || !PyBytes_CheckExact(args[0])
        || !PyBytes_CheckExact(args[1]))
        goto python;
    PyObject *hb = SLOT(ex, R.off[R_HEAD_BYTES]), *sent = SLOT(ex, R.off[R_HEAD_SENT]),
        *headers = SLOT(ex, R.off[R_HEADERS]);
    if (hb == NULL || sent == NULL || headers == NULL || !PyLong_CheckExact(hb)
        || (sent != Py_False && sent != Py_True) || !PyList_CheckExact(headers))
        goto python;
    Py_ssize_t have = PyLong_AsSsize_t(hb);
    if (have == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        goto python;
    }
    Py_ssize_t n;
    if (have < 0 || __builtin_add_overflow(have, PyBytes_GET_SIZE(args[0]) + PyBytes_GET_SIZE(args[1]) + 4, &n)
        || n > R.limit)
        goto python;   /* it raises */
    PyObject *nb = PyLong_FromSsize_t(n);
    if (nb == NULL)
        return NULL;
    if (sent == Py_False) {
        PyObject *pair = PyTuple_Pack(2, args[0], args[1]);
        if (pair == NULL || PyList_Append(headers, pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(nb);
            return NULL;
        }
        Py_DECREF(pair);
    }
    slot_set(ex, R.off[R_HEAD_BYTES], nb);
    Py_RETURN_NONE;
python:
    {
        PyObject *full[3] = {ex, args[0], args[1]};
        return PyObject_Vectorcall(R.py_on_header, full, 3, NULL);
    }
}

static PyMethodDef resp_on_header_def = {
    "on_header", (PyCFunction)(void (*)(void))resp_on_header, METH_FASTCALL,
    "httptools callback: one response header field (proxy/_hotpath.c).",
};

/* setup_response(Exchange, limit, py_on_header) -> a method descriptor for Exchange.on_header */
static PyObject *
setup_response(PyObject *self, PyObject *args)
{
    PyObject *ex_type, *py_on_header;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O!nO:setup_response", &PyType_Type, &ex_type, &limit, &py_on_header))
        return NULL;
    if (!H.ready || (PyTypeObject *)ex_type != H.ex_type) {
        PyErr_SetString(PyExc_RuntimeError, "setup_response: call setup() first, with the same Exchange");
        return NULL;
    }
    R.ready = 0;
    if (slot_offsets((PyTypeObject *)ex_type, resp_names, N_RESP, R.off) < 0)
        return NULL;
    Py_INCREF(ex_type); Py_XSETREF(R.ex_type, (PyTypeObject *)ex_type);
    R.limit = limit;
    Py_INCREF(py_on_header); Py_XSETREF(R.py_on_header, py_on_header);
    R.ready = 1;
    return PyDescr_NewMethod((PyTypeObject *)ex_type, &resp_on_header_def);
}

/* -- check_head's common case ---------------------------------------------------
 * request.check_head for the request almost every client sends: HTTP/1.1 or
 * 1.0, origin-form target of RFC 3986 characters with well-formed
 * percent-encoding, one Host equal to the one this connection already had
 * validated, no Transfer-Encoding, Content-Length, Expect or Upgrade. Its
 * result is Python's: (target, host), declared_len = -1. Anything else goes
 * to the Python function (check_head_py), which validates it or raises. */

enum { C_VERSION, C_METHOD, C_URL, C_HOST_COUNT, C_HOST_VALUE, C_TE_VALUE, C_EXPECT, C_HAS_CL,
       C_UPGRADE, C_WANT_UPGRADE, C_DECLARED_LEN, N_CHECK };
static const char *check_names[N_CHECK] = {
    "version", "method", "url", "host_count", "host_value", "te_value", "expect", "has_cl",
    "upgrade", "want_upgrade", "declared_len"};

static struct {
    int ready;
    PyTypeObject *ex_type;
    Py_ssize_t off[N_CHECK];
    PyObject *py_check;
    PyObject *minus_one;
    unsigned char uri_ok[256];   /* request.URI_CHARS */
} K;

static int
is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* an exact int equal to v (no exception left set, whatever its size) */
static int
long_is(PyObject *o, long v)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    long x = PyLong_AsLongAndOverflow(o, &overflow);
    return !overflow && x == v;
}

static int
str_is(PyObject *o, const char *s, Py_ssize_t n)
{
    return PyUnicode_CheckExact(o) && PyUnicode_IS_COMPACT_ASCII(o) && PyUnicode_GET_LENGTH(o) == n
        && memcmp(PyUnicode_1BYTE_DATA(o), s, n) == 0;
}

static PyObject *
check_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!K.ready || nargs != 2 || Py_TYPE(args[0]) != K.ex_type)
        goto python;
    PyObject *ex = args[0], *known = args[1];
    PyObject *f[N_CHECK];
    for (int i = 0; i < N_CHECK; i++) {
        f[i] = SLOT(ex, K.off[i]);
        if (f[i] == NULL)
            goto python;
    }
    if (!(str_is(f[C_VERSION], "1.1", 3) || str_is(f[C_VERSION], "1.0", 3))
        || !PyUnicode_CheckExact(f[C_METHOD]) || str_is(f[C_METHOD], "CONNECT", 7)
        || !PyList_CheckExact(f[C_URL]) || PyList_GET_SIZE(f[C_URL]) != 1
        || f[C_TE_VALUE] != Py_None || f[C_EXPECT] != Py_None || f[C_HAS_CL] != Py_False
        || f[C_UPGRADE] != Py_None || f[C_WANT_UPGRADE] != Py_False
        || !long_is(f[C_HOST_COUNT], 1)
        || !PyBytes_CheckExact(f[C_HOST_VALUE]) || !PyBytes_CheckExact(known))
        goto python;
    PyObject *host = f[C_HOST_VALUE];
    if (host != known && (PyBytes_GET_SIZE(host) != PyBytes_GET_SIZE(known)
                          || memcmp(PyBytes_AS_STRING(host), PyBytes_AS_STRING(known),
                                    PyBytes_GET_SIZE(host)) != 0))
        goto python;   /* a Host this connection has not validated yet */
    PyObject *url = PyList_GET_ITEM(f[C_URL], 0);
    if (!PyBytes_CheckExact(url))
        goto python;
    const unsigned char *u = (const unsigned char *)PyBytes_AS_STRING(url);
    Py_ssize_t n = PyBytes_GET_SIZE(url);
    if (n < 1 || u[0] != '/')
        goto python;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!K.uri_ok[u[i]])
            goto python;   /* "#" and everything else outside URI_CHARS */
        if (u[i] == '%' && !(i + 2 < n && is_hex(u[i + 1]) && is_hex(u[i + 2])))
            goto python;
    }
    PyObject *result = PyTuple_Pack(2, url, host);
    if (result == NULL)
        return NULL;
    Py_INCREF(K.minus_one);
    slot_set(ex, K.off[C_DECLARED_LEN], K.minus_one);
    return result;
python:
    return PyObject_Vectorcall(K.py_check, args, nargs, NULL);
}

static PyMethodDef check_def = {
    "check_head", (PyCFunction)(void (*)(void))check_head, METH_FASTCALL,
    "request.check_head's common case in C (proxy/_hotpath.c).",
};

/* setup_check(Exchange, py_check, uri_chars) -> the C function */
static PyObject *
setup_check(PyObject *self, PyObject *args)
{
    PyObject *ex_type, *py_check, *uri_chars;
    if (!PyArg_ParseTuple(args, "O!OO!:setup_check", &PyType_Type, &ex_type, &py_check,
                          &PyBytes_Type, &uri_chars))
        return NULL;
    if (!H.ready || (PyTypeObject *)ex_type != H.ex_type) {
        PyErr_SetString(PyExc_RuntimeError, "setup_check: call setup() first, with the same Exchange");
        return NULL;
    }
    K.ready = 0;
    if (slot_offsets((PyTypeObject *)ex_type, check_names, N_CHECK, K.off) < 0)
        return NULL;
    Py_INCREF(ex_type); Py_XSETREF(K.ex_type, (PyTypeObject *)ex_type);
    memset(K.uri_ok, 0, sizeof(K.uri_ok));
    for (Py_ssize_t i = 0; i < PyBytes_GET_SIZE(uri_chars); i++)
        K.uri_ok[(unsigned char)PyBytes_AS_STRING(uri_chars)[i]] = 1;
    K.uri_ok['#'] = 0;
    if (K.minus_one == NULL && (K.minus_one = PyLong_FromLong(-1)) == NULL)
        return NULL;
    Py_INCREF(py_check); Py_XSETREF(K.py_check, py_check);
    K.ready = 1;
    return PyCFunction_New(&check_def, NULL);
}

/* -- the response's fields, for Exchange._render_head ---------------------------
 * response_fields(resp_headers) -> (block, has_cl, chunked), the fields
 * forwarded as Python's loop forwards them (hop-by-hop ones dropped,
 * Content-Length kept and noted, Transfer-Encoding noted), or None when a
 * Connection field names a field that is not hop-by-hop (Python's rarer
 * second pass) or anything is of an unexpected type. */

/* A name table read once at setup: lower-case names of at most FIELD_NAME_MAX
 * bytes, each with its action (1 for HOP_BY_HOP's members). Looking a field
 * up here costs no object (a bytes object and its hash per field did). */
#define FIELD_NAME_MAX 32
#define FIELD_NAMES_MAX 64
typedef struct {
    int n;
    Py_ssize_t len[FIELD_NAMES_MAX];
    char name[FIELD_NAMES_MAX][FIELD_NAME_MAX];
    long act[FIELD_NAMES_MAX];
} Names;

static struct {
    int ready;
    Names actions;       /* exchange._RESPONSE_ACTIONS (read-only), as it was at setup */
    Names hop;           /* http11.HOP_BY_HOP (a frozenset) */
    long a_hop, a_cl, a_te, a_conn;
} F;

/* t's action for the lower-case name p[0..n), 0 for none */
static long
names_find(const Names *t, const char *p, Py_ssize_t n)
{
    for (int i = 0; i < t->n; i++)
        if (t->len[i] == n && memcmp(t->name[i], p, (size_t)n) == 0)
            return t->act[i];
    return 0;
}

/* lower-case s[0..n) into buf (FIELD_NAME_MAX bytes): 0 if longer than any name in a table */
static int
lower_name(const char *s, Py_ssize_t n, char *buf)
{
    if (n > FIELD_NAME_MAX)
        return 0;
    for (Py_ssize_t k = 0; k < n; k++)
        buf[k] = (s[k] >= 'A' && s[k] <= 'Z') ? (char)(s[k] + 32) : s[k];
    return 1;
}

/* t from a list of (name, action) pairs, or of names (action 1) when !pairs:
 * -1 (TypeError) unless each name is lower-case bytes of 1 to FIELD_NAME_MAX
 * bytes, each action an int other than 0 */
static int
names_set(Names *t, PyObject *list, int pairs)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n > FIELD_NAMES_MAX) {
        PyErr_SetString(PyExc_TypeError, "setup_fields: too many field names for the C table");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        PyObject *name = pairs ? PyTuple_GET_ITEM(item, 0) : item, *act = pairs ? PyTuple_GET_ITEM(item, 1) : NULL;
        char buf[FIELD_NAME_MAX];
        long a = act == NULL ? 1 : PyLong_Check(act) ? PyLong_AsLong(act) : 0;
        if (a == -1 && PyErr_Occurred())
            return -1;
        if (!PyBytes_Check(name) || PyBytes_GET_SIZE(name) < 1 || a == 0
            || !lower_name(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), buf)
            || memcmp(buf, PyBytes_AS_STRING(name), (size_t)PyBytes_GET_SIZE(name)) != 0) {
            PyErr_Format(PyExc_TypeError, "setup_fields: %R is not a lower-case field name the C table holds", name);
            return -1;
        }
        t->len[i] = PyBytes_GET_SIZE(name);
        memcpy(t->name[i], buf, (size_t)t->len[i]);
        t->act[i] = a;
    }
    t->n = (int)n;
    return 0;
}

static int
is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* Does a Connection value name only hop-by-hop fields? 1 yes, 0 no, -1 error */
static int
only_hop_tokens(PyObject *value)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value), i = 0;
    char buf[FIELD_NAME_MAX];
    while (i <= n) {
        Py_ssize_t j = i;
        while (j < n && p[j] != ',')
            j++;
        Py_ssize_t a = i, b = j;
        while (a < b && is_space(p[a]))
            a++;
        while (b > a && is_space(p[b - 1]))
            b--;
        if (b > a) {
            if (!lower_name((const char *)p + a, b - a, buf) || !names_find(&F.hop, buf, b - a))
                return 0;   /* longer than any hop-by-hop name, or not one */
        }
        i = j + 1;
    }
    return 1;
}

static PyObject *
response_fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!F.ready || nargs != 1 || !PyList_CheckExact(args[0]))
        Py_RETURN_NONE;
    PyObject *list = PyList_GetSlice(args[0], 0, PY_SSIZE_T_MAX);   /* own the pairs */
    if (list == NULL)
        return NULL;
    Py_ssize_t nh = PyList_GET_SIZE(list);
    Pieces s;
    s.cap = 4 * nh + 4;
    s.n = s.len = 0;
    s.v = PyMem_Malloc(s.cap * sizeof(Piece));
    PyObject *result = NULL;
    int has_cl = 0, chunked = 0, plain = 1;
    if (s.v == NULL) {
        Py_DECREF(list);
        return PyErr_NoMemory();
    }
    char lower[FIELD_NAME_MAX];
    for (Py_ssize_t i = 0; i < nh && plain; i++) {
        PyObject *pair = PyList_GET_ITEM(list, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 0)) || !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
            plain = 0;
            break;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        Py_ssize_t n = PyBytes_GET_SIZE(name);
        long act = lower_name(PyBytes_AS_STRING(name), n, lower) ? names_find(&F.actions, lower, n) : 0;
        if (act == 0 || act == F.a_cl) {
            if (act == F.a_cl)
                has_cl = 1;
            if (ADD_BYTES(&s, name) < 0 || ADD_LIT(&s, ": ") < 0 || ADD_BYTES(&s, value) < 0
                || ADD_LIT(&s, "\r\n") < 0)
                goto done;
        } else if (act == F.a_te) {
            chunked = 1;
        } else if (act == F.a_conn) {
            int only = only_hop_tokens(value);
            if (only < 0)
                goto done;
            if (!only)
                plain = 0;   /* it names an end-to-end field: Python's second pass */
        } else if (act != F.a_hop) {
            plain = 0;
        }
    }
    if (!plain) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *block = PyBytes_FromStringAndSize(NULL, s.len);
    if (block == NULL)
        goto done;
    char *out = PyBytes_AS_STRING(block);
    for (Py_ssize_t i = 0; i < s.n; i++) {
        memcpy(out, s.v[i].p, s.v[i].n);
        out += s.v[i].n;
    }
    result = PyTuple_Pack(3, block, has_cl ? Py_True : Py_False, chunked ? Py_True : Py_False);
    Py_DECREF(block);
done:
    PyMem_Free(s.v);
    Py_DECREF(list);
    return result;
}

static PyMethodDef fields_def = {
    "response_fields", (PyCFunction)(void (*)(void))response_fields, METH_FASTCALL,
    "Exchange._render_head's loop over the backend's fields in C (proxy/_hotpath.c).",
};

/* setup_fields(actions, hop_by_hop, (HOP, CL, TE, CONN)) -> the C function */
static PyObject *
setup_fields(PyObject *self, PyObject *args)
{
    PyObject *actions, *hop;
    long a_hop, a_cl, a_te, a_conn;
    if (!PyArg_ParseTuple(args, "OO!(llll):setup_fields", &actions, &PyFrozenSet_Type,
                          &hop, &a_hop, &a_cl, &a_te, &a_conn))
        return NULL;
    if (!PyDict_CheckExact(actions) && !Py_IS_TYPE(actions, &PyDictProxy_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup_fields: the actions must be a dict or a read-only view of one");
        return NULL;
    }
    if (a_hop == 0 || a_cl == 0 || a_te == 0 || a_conn == 0) {
        PyErr_SetString(PyExc_ValueError, "setup_fields: 0 is no action");
        return NULL;
    }
    PyObject *pairs = PyMapping_Items(actions), *hop_list = PySequence_List(hop);
    F.ready = 0;
    int bad = pairs == NULL || hop_list == NULL || names_set(&F.actions, pairs, 1) < 0
        || names_set(&F.hop, hop_list, 0) < 0;
    Py_XDECREF(pairs);
    Py_XDECREF(hop_list);
    if (bad)
        return NULL;
    F.a_hop = a_hop; F.a_cl = a_cl; F.a_te = a_te; F.a_conn = a_conn;
    F.ready = 1;
    return PyCFunction_New(&fields_def, NULL);
}

/* -- Exchange(down), without running __init__ ----------------------------------
 * Exchange.__init__ sets ~60 slots, nearly all to constants: ~0.5 us a
 * request in Python. new_exchange(down) allocates the object and fills its
 * slots from a template that setup_exchange() reads off an Exchange made by
 * the real __init__ (so the Python __init__ stays the one definition): a
 * slot holding the down, its node or the node's limits gets this request's;
 * an empty list or set gets a new one; anything else is an immutable
 * constant, shared. setup_exchange() refuses a template it cannot
 * classify (a dict, a non-empty list...), and the Python class is used. */

enum { T_CONST, T_DOWN, T_NODE, T_LIMITS, T_LIST, T_SET, T_UNSET };

#define MAX_TEMPLATE 128

static struct {
    int ready;
    PyTypeObject *ex_type;
    PyTypeObject *down_type;
    int n;
    Py_ssize_t off[MAX_TEMPLATE];
    int kind[MAX_TEMPLATE];
    PyObject *value[MAX_TEMPLATE];
    Py_ssize_t down_node;            /* offset of Downstream.node */
    PyObject *s_snapshot, *s_config, *s_limits;
    /* The last snapshot.Snapshot seen and its config.limits: both frozen, so
     * one look-up chain per snapshot, not per request (a Snapshot stand-in of
     * another type is read every time). */
    PyTypeObject *snap_type;         /* snapshot.Snapshot, or NULL: no caching */
    PyObject *last_snap, *last_limits;   /* owned */
} X;


static PyObject *
new_exchange(PyObject *self, PyObject *down)
{
    if (!X.ready || !PyObject_TypeCheck(down, X.down_type)) {
        PyErr_SetString(PyExc_TypeError, "new_exchange(down): not set up, or not a Downstream");
        return NULL;
    }
    PyObject *node = SLOT(down, X.down_node);
    if (node == NULL) {
        PyErr_SetString(PyExc_AttributeError, "node");
        return NULL;
    }
    /* down.node.snapshot.config.limits, as __init__ reads it */
    PyObject *snap = PyObject_GetAttr(node, X.s_snapshot), *limits;
    if (snap == NULL)
        return NULL;
    if (snap == X.last_snap) {
        limits = Py_NewRef(X.last_limits);
    } else {
        PyObject *config = PyObject_GetAttr(snap, X.s_config);
        if (config == NULL) {
            Py_DECREF(snap);
            return NULL;
        }
        limits = PyObject_GetAttr(config, X.s_limits);
        Py_DECREF(config);
        if (limits == NULL) {
            Py_DECREF(snap);
            return NULL;
        }
        if (X.snap_type != NULL && Py_TYPE(snap) == X.snap_type) {
            Py_XSETREF(X.last_snap, Py_NewRef(snap));
            Py_XSETREF(X.last_limits, Py_NewRef(limits));
        }
    }
    Py_DECREF(snap);
    PyTypeObject *t = X.ex_type;
    PyObject *ex = t->tp_alloc(t, 0);
    if (ex == NULL) {
        Py_DECREF(limits);
        return NULL;
    }
    for (int i = 0; i < X.n; i++) {
        PyObject *v;
        switch (X.kind[i]) {
        case T_CONST: v = Py_NewRef(X.value[i]); break;
        case T_DOWN: v = Py_NewRef(down); break;
        case T_NODE: v = Py_NewRef(node); break;
        case T_LIMITS: v = Py_NewRef(limits); break;
        case T_LIST: v = PyList_New(0); break;
        case T_SET: v = PySet_New(NULL); break;
        default: continue;   /* T_UNSET: __init__ leaves it unset too */
        }
        if (v == NULL) {
            Py_DECREF(limits);
            Py_DECREF(ex);
            return NULL;
        }
        SLOT(ex, X.off[i]) = v;   /* the slot is NULL in a new object */
    }
    Py_DECREF(limits);
    return ex;
}

static PyMethodDef new_exchange_def = {
    "new_exchange", (PyCFunction)new_exchange, METH_O,
    "Exchange(down) without __init__, from its template (proxy/_hotpath.c).",
};

/* setup_exchange(template, down, node, limits) -> new_exchange: `template` an
 * Exchange made by __init__ from `down` (whose node is `node`, with `limits`) */
static PyObject *
setup_exchange(PyObject *self, PyObject *args)
{
    PyObject *tpl, *down, *node, *limits, *snap_type = NULL;
    if (!PyArg_ParseTuple(args, "OOOO|O!:setup_exchange", &tpl, &down, &node, &limits, &PyType_Type, &snap_type))
        return NULL;
    if (!H.ready || Py_TYPE(tpl) != H.ex_type) {
        PyErr_SetString(PyExc_RuntimeError, "setup_exchange: call setup() first; template must be an Exchange");
        return NULL;
    }
    X.ready = 0;
    Py_XINCREF(snap_type); Py_XSETREF(X.snap_type, (PyTypeObject *)snap_type);
    Py_CLEAR(X.last_snap);
    Py_CLEAR(X.last_limits);
    if (slot_offset(H.down_type, "node", &X.down_node) < 0)
        return NULL;
    PyObject *slots = PyObject_GetAttrString((PyObject *)H.ex_type, "__slots__");
    if (slots == NULL)
        return NULL;
    PyObject *seq = PySequence_Fast(slots, "__slots__ is not a sequence");
    Py_DECREF(slots);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_TEMPLATE) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "setup_exchange: too many slots");
        return NULL;
    }
    X.ready = 0;
    for (int i = 0; i < X.n; i++)
        Py_CLEAR(X.value[i]);
    X.n = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "setup_exchange: a slot name is not a str");
            goto fail;
        }
        if (slot_offset(H.ex_type, PyUnicode_AsUTF8(name), &X.off[i]) < 0)
            goto fail;
        PyObject *v = SLOT(tpl, X.off[i]);
        X.value[i] = NULL;
        if (v == NULL)
            X.kind[i] = T_UNSET;
        else if (v == down)
            X.kind[i] = T_DOWN;
        else if (v == node)
            X.kind[i] = T_NODE;
        else if (v == limits)
            X.kind[i] = T_LIMITS;
        else if (PyList_CheckExact(v) && PyList_GET_SIZE(v) == 0)
            X.kind[i] = T_LIST;
        else if (PyAnySet_CheckExact(v) && !PyFrozenSet_Check(v) && PySet_GET_SIZE(v) == 0)
            X.kind[i] = T_SET;
        else if (immutable(v)) {
            X.kind[i] = T_CONST;
            X.value[i] = Py_NewRef(v);
        } else {
            PyErr_Format(PyExc_TypeError, "setup_exchange: slot %U holds a %s, which a template cannot copy",
                         name, Py_TYPE(v)->tp_name);
            goto fail;
        }
        X.n = (int)i + 1;
    }
    Py_DECREF(seq);
    Py_INCREF(H.ex_type); Py_XSETREF(X.ex_type, H.ex_type);
    Py_INCREF(H.down_type); Py_XSETREF(X.down_type, H.down_type);
    X.ready = 1;
    return PyCFunction_New(&new_exchange_def, NULL);
fail:
    Py_DECREF(seq);
    for (int i = 0; i < X.n; i++)
        Py_CLEAR(X.value[i]);
    X.n = 0;
    return NULL;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(Downstream, Exchange, PARSING, py_on_header): the C on_header, as a method of Downstream."},
    {"setup_head", setup_head, METH_VARARGS,
     "setup_head(Exchange, py_build, keep, (SKIP, XFF, VIA, HOST)): the C build_upstream_head."},
    {"setup_response", setup_response, METH_VARARGS,
     "setup_response(Exchange, limit, py_on_header): the C Exchange.on_header, as a method of Exchange."},
    {"setup_check", setup_check, METH_VARARGS,
     "setup_check(Exchange, py_check, uri_chars): the C check_head (its common case)."},
    {"setup_fields", setup_fields, METH_VARARGS,
     "setup_fields(actions, hop_by_hop, (HOP, CL, TE, CONN)): the C response_fields."},
    {"setup_exchange", setup_exchange, METH_VARARGS,
     "setup_exchange(template, down, node, limits[, Snapshot]): new_exchange, Exchange(down) from a "
     "template (with Snapshot, whose frozen limits it keeps per snapshot)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hotpath", "Parts of the request path in C (see _hotpath.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    if ((X.s_snapshot = PyUnicode_InternFromString("snapshot")) == NULL
        || (X.s_config = PyUnicode_InternFromString("config")) == NULL
        || (X.s_limits = PyUnicode_InternFromString("limits")) == NULL
        || (H.s_max_headers = PyUnicode_InternFromString("max_headers")) == NULL
        || (H.s_max_header_bytes = PyUnicode_InternFromString("max_header_bytes")) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
