/* proxy._request: the request head's completion in C: Downstream.on_url,
 * on_message_begin, on_headers_complete, on_message_complete and
 * Node.head_complete's common case; then, for a plain request, what runs
 * up to the upstream write (Downstream._activate, Node.dispatch,
 * Exchange.start, ...: see "Downstream._activate and what it calls").
 *
 * Why C: together these cost ~2 us of Python per request (synthetic
 * harness, /tmp/prof/synth.py): a dozen attribute reads and writes, the
 * RequestContext's __init__ (26 slots), the request id, the target's
 * split. The C does the same steps in the same order, reading and writing
 * the same attributes, and calls whatever is Python as Python, through
 * normal attribute or global look-up: the parser's getters, Node.head_complete
 * (from on_headers_complete), check_head, split_host, next_request_id when
 * it is not Node's own, hooks.forward_headers, build_upstream_head,
 * Downstream._activate, Exchange.request_done, Downstream.pause_reading and
 * the module's _new_exchange.
 *
 * Contract: each C method hands its Python method (kept as _on_url_py,
 * _on_message_begin_py, _on_headers_complete_py, _on_message_complete_py,
 * Node._head_complete_py; they are the reference) every call that is not
 * the common case, before anything is changed:
 *   - on_url: a URL piece that takes the target over max_request_line (the
 *     Python method raises the 414), no exchange, anything of an unexpected
 *     type (a bytes subclass, a non-int count...);
 *   - on_message_begin: a dead connection (the Python method raises
 *     _StopParsing), no _new_exchange global;
 *   - on_headers_complete, on_message_complete: no exchange being parsed
 *     (the Python method's assert), no parser;
 *   - head_complete: a trusted peer (X-Forwarded-For is believed: Python),
 *     a connection or exchange that is not exactly a Downstream/Exchange.
 * Every method also hands over a call with keywords or the wrong number of
 * arguments (Python raises the TypeError), and a self of a subclass.
 * Errors raised by what the C calls propagate as they would from Python,
 * with the same state changed before them; the C itself raises only
 * Python's own errors (AttributeError for an unset slot, NameError for a
 * missing global, the unpacking ValueErrors). The RequestContext is made
 * from a template read off one made by __init__ (as _hotpath.c's
 * new_exchange), unless RequestContext, its __init__ or __new__ changed
 * since: then the type is called.
 * tests/unit/test_request_head_c.py feeds both versions the same random
 * request heads through real httptools parsers and compares everything.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "_slots.h"
#include "_heads.h"

/* a dict's version: a new one (unique across dicts) with every change, so an
 * entry read at a version stays valid while the version does (3.11) */
#if PY_VERSION_HEX < 0x030C0000
#define DICT_VERSION(d) (((PyDictObject *)(d))->ma_version_tag)
#endif



/* -- the slots used, resolved once by setup_down ------------------------------ */

enum { D_PARSING, D_PARSER, D_DEAD, D_HEAD_STARTED_AT, D_LAST_ACTIVE, D_BODY_LAST, D_CURRENT,
       D_PARSED, D_NODE, D_QUEUE, D_HOST_SEEN, D_HOST_NAME, D_CLIENT_IP, D_GEO, D_TRUSTED_PEER,
       D_CLIENT_PORT, D_LISTENER, D_FWD_MEMO, D_TUNNEL, D_UPGRADED, D_PP_PENDING, D_CLOSING,
       D_DEFERRED, D_PAUSED, D_PARSER_READY, N_D };
static const char *d_names[N_D] = {
    "parsing", "parser", "dead", "head_started_at", "last_active", "body_last", "current",
    "parsed", "node", "queue", "host_seen", "host_name", "client_ip", "geo", "trusted_peer",
    "client_port", "listener", "fwd_memo", "tunnel", "upgraded", "pp_pending", "closing",
    "deferred", "paused", "parser_ready"};

enum { E_URL, E_HEADER_BYTES, E_URL_LEN, E_LIMITS, E_VERSION, E_METHOD, E_KEEP_ALIVE,
       E_DECLARED_LEN, E_CHUNKED, E_BODY_COMPLETE, E_STATE, E_HOST_VALUE, E_HEADERS, E_CTX,
       E_REQ_HEAD, E_NAMES, E_BODY_CHUNKED_OUT, E_TIMER, E_RESP_HEAD_SENT, N_E };
static const char *e_names[N_E] = {
    "url", "header_bytes", "url_len", "limits", "version", "method", "keep_alive",
    "declared_len", "chunked", "body_complete", "state", "host_value", "headers", "ctx",
    "req_head", "names", "body_chunked_out", "timer", "resp_head_sent"};

static struct {
    int ready;
    PyTypeObject *down_type, *ex_type;
    Py_ssize_t doff[N_D], eoff[N_E];
    PyObject *dname[N_D], *ename[N_E];   /* interned, for Python's own errors */
    PyObject *globals;                   /* downstream.py's module dict */
    PyObject *waiting;                   /* exchange.WAITING */
    PyObject *py_on_url, *py_begin, *py_headers_complete, *py_message_complete;
    PyObject *request_done;              /* Exchange.request_done (the function) at setup */
} S;

/* strings and constants, made at import */
static PyObject *s_new_exchange, *s_max_request_line, *s_get_http_version, *s_get_method,
    *s_should_keep_alive, *s_head_complete, *s_activate, *s_append, *s_pause_reading,
    *s_pipelined, *s_request_done, *s_SENT, *s_decode, *s_partition, *s_encode, *s_latin1,
    *s_check_head, *s_split_host, *s_request_context, *s_build_upstream_head,
    *s_next_request_id, *s_id_prefix, *s_ids, *s_started, *s_hooks, *s_header_actions,
    *s_forward_headers, *s_name, *s_scheme, *s_client_from_xff, *s_snapshot,
    *s_is_trusted_proxy, *s_geo_lookup, *s_init, *s_slots,
    *s_now, *s_callback_failed, *s_max_headers, *s_max_header_bytes, *kw_parsing, *f_zero, *i_zero, *i_one, *b_question, *b_via, *u_empty;

/* obj.<slot>, owned: an unset slot raises what Python raises */
static PyObject *
dget(PyObject *down, int i)
{
    PyObject *v = SLOT(down, S.doff[i]);
    if (v != NULL)
        return Py_NewRef(v);
    return PyObject_GetAttr(down, S.dname[i]);
}

/* ex.<attr>, owned, for an exchange of any type */
static PyObject *
eget(PyObject *ex, int i)
{
    if (Py_TYPE(ex) == S.ex_type) {
        PyObject *v = SLOT(ex, S.eoff[i]);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(ex, S.ename[i]);
}

/* ex.<attr> = v, stealing v; -1 on error */
static int
eset(PyObject *ex, int i, PyObject *v)
{
    if (Py_TYPE(ex) == S.ex_type) {
        slot_set(ex, S.eoff[i], v);
        return 0;
    }
    int r = PyObject_SetAttr(ex, S.ename[i], v);
    Py_DECREF(v);
    return r;
}

/* the Python method, with the call's own arguments (self first) */
static PyObject *
call_py(PyObject *func, PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t total = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8];
    PyObject **stack = small;
    if (total + 1 > 8 && (stack = PyMem_Malloc((total + 1) * sizeof(PyObject *))) == NULL)
        return PyErr_NoMemory();
    stack[0] = self;
    for (Py_ssize_t i = 0; i < total; i++)
        stack[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(func, stack, nargs + 1, kwnames);
    if (stack != small)
        PyMem_Free(stack);
    return r;
}

/* a module global as Python's LOAD_GLOBAL finds it, owned */
static PyObject *
global(PyObject *globals, PyObject *name)
{
#ifdef DICT_VERSION
    /* the module's names as LOAD_GLOBAL caches them: by the dict's version */
    static struct { PyObject *dict, *name, *value; uint64_t version; } seen[8];
    unsigned int h = (unsigned int)(((uintptr_t)name >> 4) & 7);
    if (seen[h].name == name && seen[h].dict == globals && seen[h].version == DICT_VERSION(globals))
        return Py_NewRef(seen[h].value);
#endif
    PyObject *v = PyDict_GetItemWithError(globals, name);
    if (v != NULL) {
#ifdef DICT_VERSION
        seen[h].dict = globals;
        seen[h].name = name;
        seen[h].value = v;   /* borrowed: valid while the dict's version is */
        seen[h].version = DICT_VERSION(globals);
#endif
        return Py_NewRef(v);
    }
    if (PyErr_Occurred())
        return NULL;
    v = PyDict_GetItemWithError(PyEval_GetBuiltins(), name);
    if (v != NULL)
        return Py_NewRef(v);
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_NameError, "name '%U' is not defined", name);
    return NULL;
}

#define FAST_SELF(self) (S.ready && Py_TYPE(self) == S.down_type)

/* -- Downstream.on_url ------------------------------------------------------------
 * The target, piece by piece: kept, counted in url_len and header_bytes. */
/* -- the limits a request is read under ---------------------------------------------
 * ex.limits is the snapshot's config.Limits, a frozen pydantic model: its
 * values cannot change, and reading one costs a pydantic attribute look-up.
 * The last one seen is kept (owned, so its identity stays its own) with the
 * three this file reads per request. Any other object is read each time. */
static struct {
    PyTypeObject *type;   /* config.Limits (setup_fast), or NULL: no caching */
    PyObject *limits;     /* owned */
    Py_ssize_t line, headers, bytes;
} L;

static Py_ssize_t
limit(PyObject *limits, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(limits, name);
    if (v == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t r = PyLong_CheckExact(v) ? PyLong_AsSsize_t(v) : -1;
    if (r == -1)
        PyErr_Clear();
    Py_DECREF(v);
    return r;
}

/* limits.max_request_line, .max_headers, .max_header_bytes: each -1 when it is
 * not a plain int (Python's path). The look-ups could run Python code (not
 * for a Limits). */
static void
limits_of(PyObject *limits, Py_ssize_t *line, Py_ssize_t *headers, Py_ssize_t *bytes)
{
    if (limits != L.limits || L.limits == NULL) {
        Py_INCREF(limits);
        Py_ssize_t a = limit(limits, s_max_request_line), b = limit(limits, s_max_headers),
            c = limit(limits, s_max_header_bytes);
        if (L.type != NULL && Py_TYPE(limits) == L.type) {
            Py_XSETREF(L.limits, Py_NewRef(limits));
            L.line = a, L.headers = b, L.bytes = c;
        }
        Py_DECREF(limits);
        *line = a, *headers = b, *bytes = c;
        return;
    }
    *line = L.line, *headers = L.headers, *bytes = L.bytes;
}

static PyObject *
on_url(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (!FAST_SELF(self) || kwnames != NULL || nargs != 1 || !PyBytes_CheckExact(args[0]))
        goto python;
    PyObject *url = args[0];
    PyObject *ex = SLOT(self, S.doff[D_PARSING]);
    if (ex == NULL || Py_TYPE(ex) != S.ex_type)
        goto python;
    PyObject *limits = SLOT(ex, S.eoff[E_LIMITS]);
    if (limits == NULL)
        goto python;
    /* the limit first (Python reads it last): the only look-up that could run
     * Python code; the slots are read after it, the exchange owned meanwhile */
    Py_INCREF(ex);
    Py_ssize_t max_line, unused_headers, unused_bytes;
    limits_of(limits, &max_line, &unused_headers, &unused_bytes);
    PyObject *urls = SLOT(ex, S.eoff[E_URL]), *hb = SLOT(ex, S.eoff[E_HEADER_BYTES]),
        *ul = SLOT(ex, S.eoff[E_URL_LEN]);
    int odd = max_line < 0 || SLOT(self, S.doff[D_PARSING]) != ex || urls == NULL || hb == NULL
        || ul == NULL || !PyList_CheckExact(urls) || !PyLong_CheckExact(hb) || !PyLong_CheckExact(ul);
    Py_ssize_t header_bytes = 0, url_len = 0, n = PyBytes_GET_SIZE(url);
    if (!odd) {
        header_bytes = PyLong_AsSsize_t(hb);
        url_len = PyLong_AsSsize_t(ul);
        if ((header_bytes == -1 || url_len == -1) && PyErr_Occurred()) {
            PyErr_Clear();
            odd = 1;
        }
    }
    if (odd || header_bytes < 0 || url_len < 0 || __builtin_add_overflow(header_bytes, n, &header_bytes)
        || __builtin_add_overflow(url_len, n, &url_len) || url_len > max_line) {
        Py_DECREF(ex);
        goto python;   /* over the limit: Python raises the 414 */
    }
    Py_INCREF(urls);   /* (nothing below runs Python code: insurance) */
    PyObject *nb = PyLong_FromSsize_t(header_bytes), *nl = PyLong_FromSsize_t(url_len);
    if (nb == NULL || nl == NULL || PyList_Append(urls, url) < 0) {
        Py_XDECREF(nb);
        Py_XDECREF(nl);
        Py_DECREF(urls);
        Py_DECREF(ex);
        return NULL;
    }
    Py_DECREF(urls);
    slot_set(ex, S.eoff[E_HEADER_BYTES], nb);
    slot_set(ex, S.eoff[E_URL_LEN], nl);
    Py_DECREF(ex);
    Py_RETURN_NONE;
python:
    return call_py(S.py_on_url, self, args, nargs, kwnames);
}

/* -- Downstream.on_message_begin ------------------------------------------------ */
static PyObject *
on_message_begin(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (!FAST_SELF(self) || kwnames != NULL || nargs != 0 || SLOT(self, S.doff[D_DEAD]) != Py_False)
        goto python;   /* dead: Python raises _StopParsing */
    PyObject *make = PyDict_GetItemWithError(S.globals, s_new_exchange);
    if (make == NULL) {
        PyErr_Clear();
        goto python;
    }
    Py_INCREF(make);
    PyObject *ex = PyObject_CallOneArg(make, self);
    Py_DECREF(make);
    if (ex == NULL)
        return NULL;
    slot_set(self, S.doff[D_PARSING], ex);
    PyObject *started = dget(self, D_HEAD_STARTED_AT);
    if (started == NULL)
        return NULL;
    int t = PyObject_IsTrue(started);
    Py_DECREF(started);
    if (t < 0)
        return NULL;
    if (!t) {
        PyObject *last = dget(self, D_LAST_ACTIVE);
        if (last == NULL)
            return NULL;
        slot_set(self, S.doff[D_HEAD_STARTED_AT], last);
    }
    PyObject *cur = dget(self, D_CURRENT);
    if (cur == NULL)
        return NULL;
    Py_DECREF(cur);
    if (cur != Py_None) {   /* pipelined: hold further bytes until this one's turn */
        PyObject *a[2] = {self, s_pipelined};
        PyObject *r = PyObject_VectorcallMethod(s_pause_reading, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
python:
    return call_py(S.py_begin, self, args, nargs, kwnames);
}

/* -- Downstream.on_headers_complete ----------------------------------------------- */
static PyObject *headers_complete(PyObject *self, PyObject *ex, PyObject *parser);

static PyObject *
on_headers_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (!FAST_SELF(self) || kwnames != NULL || nargs != 0)
        goto python;
    PyObject *ex = SLOT(self, S.doff[D_PARSING]), *parser = SLOT(self, S.doff[D_PARSER]);
    if (ex == NULL || ex == Py_None || parser == NULL || parser == Py_None)
        goto python;   /* Python's asserts */
    Py_INCREF(ex);
    Py_INCREF(parser);
    PyObject *r = headers_complete(self, ex, parser);
    Py_DECREF(ex);
    Py_DECREF(parser);
    return r;
python:
    return call_py(S.py_headers_complete, self, args, nargs, kwnames);
}

static PyObject *
call_method0(PyObject *obj, PyObject *name)
{
    return PyObject_VectorcallMethod(name, &obj, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *headers_complete_with(PyObject *self, PyObject *ex, PyObject *version, PyObject *method,
                                       PyObject *keep_alive);

/* the parser's version, method and keep-alive, then the rest */
static PyObject *
headers_complete(PyObject *self, PyObject *ex, PyObject *parser)
{
    slot_set(self, S.doff[D_HEAD_STARTED_AT], Py_NewRef(f_zero));
    PyObject *v = dget(self, D_LAST_ACTIVE);
    if (v == NULL)
        return NULL;
    slot_set(self, S.doff[D_BODY_LAST], v);
    if ((v = call_method0(parser, s_get_http_version)) == NULL || eset(ex, E_VERSION, v) < 0)
        return NULL;
    PyObject *m = call_method0(parser, s_get_method);
    if (m == NULL)
        return NULL;
    if (PyBytes_CheckExact(m))
        v = PyUnicode_DecodeASCII(PyBytes_AS_STRING(m), PyBytes_GET_SIZE(m), "replace");
    else
        v = PyObject_CallMethod(m, "decode", "ss", "ascii", "replace");
    Py_DECREF(m);
    if (v == NULL || eset(ex, E_METHOD, v) < 0)
        return NULL;
    if ((v = call_method0(parser, s_should_keep_alive)) == NULL || eset(ex, E_KEEP_ALIVE, v) < 0)
        return NULL;
    return headers_complete_with(self, ex, NULL, NULL, NULL);
}

static PyObject *activate(PyObject *self, PyObject *ex);

/* on_headers_complete from "validates" on; with version, method and
 * keep_alive (borrowed) it first sets those as the parser's getters would */
static PyObject *
headers_complete_with(PyObject *self, PyObject *ex, PyObject *version, PyObject *method, PyObject *keep_alive)
{
    PyObject *v;
    if (version != NULL) {
        slot_set(self, S.doff[D_HEAD_STARTED_AT], Py_NewRef(f_zero));
        if ((v = dget(self, D_LAST_ACTIVE)) == NULL)
            return NULL;
        slot_set(self, S.doff[D_BODY_LAST], v);
        if (eset(ex, E_VERSION, Py_NewRef(version)) < 0 || eset(ex, E_METHOD, Py_NewRef(method)) < 0
            || eset(ex, E_KEEP_ALIVE, Py_NewRef(keep_alive)) < 0)
            return NULL;
    }
    /* validates; raises Reject on a bad head */
    PyObject *node = dget(self, D_NODE);
    if (node == NULL)
        return NULL;
    PyObject *a[3] = {node, self, ex};
    v = PyObject_VectorcallMethod(s_head_complete, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(node);
    if (v == NULL)
        return NULL;
    Py_DECREF(v);
    /* no body: the message is complete now */
    PyObject *declared = eget(ex, E_DECLARED_LEN);
    if (declared == NULL)
        return NULL;
    int t;
    if (PyLong_CheckExact(declared)) {
        /* declared <= 0 (not Py_SIZE's sign: ints keep no size there from 3.12) */
        int ov;
        long lv = PyLong_AsLongAndOverflow(declared, &ov);
        t = ov ? ov < 0 : lv <= 0;
    }
    else {
        PyObject *c = PyObject_RichCompare(declared, i_zero, Py_LE);
        t = c == NULL ? -1 : PyObject_IsTrue(c);
        Py_XDECREF(c);
    }
    Py_DECREF(declared);
    if (t < 0)
        return NULL;
    if (t) {
        PyObject *chunked = eget(ex, E_CHUNKED);
        if (chunked == NULL)
            return NULL;
        t = PyObject_IsTrue(chunked);
        Py_DECREF(chunked);
        if (t < 0 || (!t && eset(ex, E_BODY_COMPLETE, Py_NewRef(Py_True)) < 0))
            return NULL;
    }
    PyObject *cur = dget(self, D_CURRENT);
    if (cur == NULL)
        return NULL;
    Py_DECREF(cur);
    if (cur == Py_None)
        v = activate(self, ex);   /* self._activate(ex, parsing=True) */
    else {
        if (eset(ex, E_STATE, Py_NewRef(S.waiting)) < 0)
            return NULL;
        PyObject *queue = dget(self, D_QUEUE);
        if (queue == NULL)
            return NULL;
        PyObject *b[2] = {queue, ex};
        v = PyObject_VectorcallMethod(s_append, b, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(queue);
    }
    if (v == NULL)
        return NULL;
    Py_DECREF(v);
    Py_RETURN_NONE;
}

/* -- Downstream.on_message_complete ------------------------------------------------
 * ask: note whether llhttp takes another message (0: from the fast path, whose
 * heads leave it as it was, ready for one) */
static PyObject *message_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                                  int ask);

static PyObject *
on_message_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return message_complete(self, args, nargs, kwnames, 1);
}

/* ex.request_done() when it would only set body_complete (its usual case: a
 * request without a body, its head already sent and its response timer
 * armed): that done here, 1; 0 when Python's method must run (it is not
 * Exchange's own, or it would write a chunked body's end or arm the timer);
 * -1 an error. */
static int
request_done_is_noop(PyObject *ex)
{
    if (Py_TYPE(ex) != S.ex_type || S.request_done == NULL)
        return 0;
    PyObject *fn = PyDict_GetItemWithError(S.ex_type->tp_dict, s_request_done);   /* borrowed */
    if (fn != S.request_done)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *chunked = SLOT(ex, S.eoff[E_BODY_CHUNKED_OUT]), *state = SLOT(ex, S.eoff[E_STATE]),
        *timer = SLOT(ex, S.eoff[E_TIMER]), *head_sent = SLOT(ex, S.eoff[E_RESP_HEAD_SENT]);
    /* `if self.state >= SENT and not self.timer and not self.resp_head_sent`, with SENT
     * as the method finds it; exact ints, a float and bools compare without Python code */
    PyObject *sent = PyDict_GetItemWithError(PyFunction_GET_GLOBALS(fn), s_SENT);   /* borrowed */
    if (sent == NULL || chunked != Py_False || state == NULL || timer == NULL || head_sent == NULL
        || !PyLong_CheckExact(state) || !PyLong_CheckExact(sent) || !PyFloat_CheckExact(timer)
        || (head_sent != Py_True && head_sent != Py_False))
        return PyErr_Occurred() ? -1 : 0;
    int ge = PyObject_RichCompareBool(state, sent, Py_GE);
    if (ge < 0)
        return -1;
    if (ge && PyFloat_AS_DOUBLE(timer) == 0.0 && head_sent == Py_False)
        return 0;   /* it arms the timer */
    slot_set(ex, S.eoff[E_BODY_COMPLETE], Py_NewRef(Py_True));   /* self.body_complete = True */
    return 1;
}

static PyObject *
message_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int ask)
{
    if (!FAST_SELF(self) || kwnames != NULL || nargs != 0)
        goto python;
    PyObject *ex = SLOT(self, S.doff[D_PARSING]);
    if (ex == NULL || ex == Py_None)
        goto python;   /* Python's assert */
    Py_INCREF(ex);
    PyObject *r = NULL;
    {
        PyObject *parser = SLOT(self, S.doff[D_PARSER]), *ready = Py_NewRef(ask ? Py_False : Py_True);
        if (ask && parser != NULL && parser != Py_None) {
            Py_INCREF(parser);
            Py_SETREF(ready, call_method0(parser, s_should_keep_alive));
            Py_DECREF(parser);
            if (ready == NULL)
                goto done;
        }
        slot_set(self, S.doff[D_PARSER_READY], ready);
    }
    slot_set(self, S.doff[D_BODY_LAST], Py_NewRef(f_zero));
    slot_set(self, S.doff[D_PARSING], Py_NewRef(Py_None));
    PyObject *parsed = dget(self, D_PARSED);
    if (parsed == NULL)
        goto done;
    PyObject *n = PyNumber_InPlaceAdd(parsed, i_one);
    Py_DECREF(parsed);
    if (n == NULL)
        goto done;
    slot_set(self, S.doff[D_PARSED], n);
    PyObject *cur = dget(self, D_CURRENT);
    if (cur == NULL)
        goto done;
    Py_DECREF(cur);
    if (ex == cur) {
        int noop = request_done_is_noop(ex);
        if (noop < 0)
            goto done;
        if (!noop) {
            r = call_method0(ex, s_request_done);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
        }
    } else if (eset(ex, E_BODY_COMPLETE, Py_NewRef(Py_True)) < 0)
        goto done;
    r = Py_NewRef(Py_None);
done:
    Py_DECREF(ex);
    return r;
python:
    return call_py(S.py_message_complete, self, args, nargs, kwnames);
}

#define METHOD(name, fn, doc) \
    {name, (PyCFunction)(void (*)(void))fn, METH_FASTCALL | METH_KEYWORDS, doc}

static PyMethodDef on_url_def = METHOD("on_url", on_url,
    "httptools callback: a piece of the request target (proxy/_request.c).");
static PyMethodDef begin_def = METHOD("on_message_begin", on_message_begin,
    "httptools callback: a request starts (proxy/_request.c).");
static PyMethodDef headers_complete_def = METHOD("on_headers_complete", on_headers_complete,
    "httptools callback: the request head is complete (proxy/_request.c).");
static PyMethodDef message_complete_def = METHOD("on_message_complete", on_message_complete,
    "httptools callback: the request message is complete (proxy/_request.c).");

/* setup_down(Downstream, Exchange, downstream_globals, WAITING, py_on_url,
 *            py_on_message_begin, py_on_headers_complete, py_on_message_complete)
 * -> (on_url, on_message_begin, on_headers_complete, on_message_complete),
 * method descriptors for Downstream */
static PyObject *
setup_down(PyObject *module, PyObject *args)
{
    PyObject *down_type, *ex_type, *globals, *waiting, *py[4];
    if (!PyArg_ParseTuple(args, "O!O!O!OOOOO:setup_down", &PyType_Type, &down_type, &PyType_Type,
                          &ex_type, &PyDict_Type, &globals, &waiting, &py[0], &py[1], &py[2], &py[3]))
        return NULL;
    Py_ssize_t doff[N_D], eoff[N_E];
    PyObject *dname[N_D], *ename[N_E];
    if (slot_offsets((PyTypeObject *)down_type, d_names, N_D, doff) < 0)
        return NULL;
    if (slot_offsets((PyTypeObject *)ex_type, e_names, N_E, eoff) < 0)
        return NULL;
    /* Downstream's slots must be all its storage: no __dict__ to shadow one */
    if (((PyTypeObject *)down_type)->tp_dictoffset != 0 || ((PyTypeObject *)ex_type)->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "setup_down: Downstream and Exchange must have no __dict__");
        return NULL;
    }
    for (int i = 0; i < N_D; i++)
        if ((dname[i] = PyUnicode_InternFromString(d_names[i])) == NULL)
            return NULL;   /* (the few interned names made before are immortal enough) */
    for (int i = 0; i < N_E; i++)
        if ((ename[i] = PyUnicode_InternFromString(e_names[i])) == NULL)
            return NULL;
    PyObject *descrs = PyTuple_New(4);
    if (descrs == NULL)
        return NULL;
    PyMethodDef *defs[4] = {&on_url_def, &begin_def, &headers_complete_def, &message_complete_def};
    for (int i = 0; i < 4; i++) {
        PyObject *d = PyDescr_NewMethod((PyTypeObject *)down_type, defs[i]);
        if (d == NULL) {
            Py_DECREF(descrs);
            return NULL;
        }
        PyTuple_SET_ITEM(descrs, i, d);
    }
    S.ready = 0;
    memcpy(S.doff, doff, sizeof(doff));
    memcpy(S.eoff, eoff, sizeof(eoff));
    for (int i = 0; i < N_D; i++)
        Py_XSETREF(S.dname[i], dname[i]);
    for (int i = 0; i < N_E; i++)
        Py_XSETREF(S.ename[i], ename[i]);
    Py_INCREF(down_type); Py_XSETREF(S.down_type, (PyTypeObject *)down_type);
    Py_INCREF(ex_type); Py_XSETREF(S.ex_type, (PyTypeObject *)ex_type);
    Py_INCREF(globals); Py_XSETREF(S.globals, globals);
    Py_INCREF(waiting); Py_XSETREF(S.waiting, waiting);
    Py_INCREF(py[0]); Py_XSETREF(S.py_on_url, py[0]);
    Py_INCREF(py[1]); Py_XSETREF(S.py_begin, py[1]);
    Py_INCREF(py[2]); Py_XSETREF(S.py_headers_complete, py[2]);
    Py_INCREF(py[3]); Py_XSETREF(S.py_message_complete, py[3]);
    PyObject *rd = PyDict_GetItemString(((PyTypeObject *)ex_type)->tp_dict, "request_done");   /* borrowed */
    Py_XSETREF(S.request_done, rd != NULL && PyFunction_Check(rd) ? Py_NewRef(rd) : NULL);
    S.ready = 1;
    return descrs;
}

/* -- Downstream.data_received's common case: one whole, plain request head ------------
 * Most reads on a kept-alive connection are one complete GET or HEAD head and
 * nothing else. Feeding those to httptools costs more than llhttp's parse:
 * every field crosses into Python as two new bytes objects and a call
 * (~2 us for a browser's dozen fields). Here the C recognises such a head
 * itself and makes the same callbacks llhttp would make, in the same order,
 * with the same arguments (on_message_begin, on_url, on_header per field,
 * on_headers_complete with the version, method and keep-alive the parser's
 * getters would return, on_message_complete), calling the same methods,
 * except that a plain field (not one Downstream.on_header treats specially)
 * is appended to the exchange's lists here, as on_header would, when the
 * whole head is within the limits. A field line already seen keeps its
 * bytes objects in a small cache.
 *
 * It recognises a strict subset of what llhttp accepts, and hands every
 * other read to the Python data_received (and so to llhttp), before
 * anything is changed:
 *   "GET" or "HEAD", SP, an origin-form target of RFC 3986 characters (no
 *   "#"), SP, "HTTP/1.1", CRLF; fields "name:" OWS value CRLF with a token
 *   name and a non-empty value of visible ASCII, SP and HTAB that does not
 *   end in whitespace; no field llhttp acts on (Connection,
 *   Proxy-Connection, Content-Length, Transfer-Encoding, Upgrade); at most
 *   64 fields; the final CRLF the last byte of the read.
 * and only on a connection at rest: no request being parsed or answered,
 * none queued, not closing, dead, upgraded, tunnelled or paused, no PROXY
 * header pending, no deferred error. llhttp is then between messages (a
 * message that ended keep-alive false leaves the connection closing), and
 * is between messages after this one too: it never sees this head, and need
 * not. An exception from a callback ends the read as llhttp's callback
 * error does: Downstream._callback_failed gets it, as _feed would.
 * tests/unit/test_fast_head.py checks the recogniser against llhttp on
 * generated heads (same callbacks, same getters) and the node's output
 * against the Python path's. */

/* 1: `d` is exactly one head of the subset above; its fields in f[0..*nf) */
static int
scan_head(const char *d, Py_ssize_t n, int *is_head, Py_ssize_t *tlen, Field *f, int *nf)
{
    Py_ssize_t i;
    if (n >= 4 && memcmp(d, "GET ", 4) == 0) {
        *is_head = 0;
        i = 4;
    } else if (n >= 5 && memcmp(d, "HEAD ", 5) == 0) {
        *is_head = 1;
        i = 5;
    } else
        return 0;
    Py_ssize_t t0 = i;
    if (i >= n || d[i] != '/')
        return 0;
    while (i < n && c_target[(unsigned char)d[i]])
        i++;
    *tlen = i - t0;
    if (n - i < 11 || memcmp(d + i, " HTTP/1.1\r\n", 11) != 0)
        return 0;
    i += 11;
    return scan_fields(d, n, i, f, nf) == n;
}

/* the methods of Downstream called, inlined or bypassed here */
enum { M_ON_HEADER, M_ON_URL, M_BEGIN, M_HEADERS_COMPLETE, M_MESSAGE_COMPLETE, M_DATA_RECEIVED, M_FEED, N_M };
static const char *m_names[N_M] = {"on_header", "on_url", "on_message_begin", "on_headers_complete",
                                   "on_message_complete", "data_received", "_feed"};

static struct {
    int ready;
    unsigned int tag;         /* Downstream's type version when last checked */
    PyObject *special;        /* downstream._SPECIAL */
    PyObject *parsing;        /* exchange.PARSING */
    PyObject *py_data_received, *descr, *on_header;
    PyObject *m_name[N_M], *method[N_M];   /* interned names; Downstream.__dict__'s values at setup */
    Py_ssize_t feed_slice;                 /* downstream.FEED_SLICE: longer reads are llhttp's */
    PyObject *version, *get, *head;   /* "1.1", "GET", "HEAD" */
} F;

static unsigned long long fast_heads;   /* heads taken here, for the tests */

/* Is Downstream as setup_fast left it: the methods called, inlined or
 * bypassed here the same objects? */

static int
down_unchanged(void)
{
    PyTypeObject *t = S.down_type;
    if (tag_current(t, F.tag))
        return 1;
    if (!type_holds(t, F.m_name, F.method, N_M))   /* modified since (or never tagged) */
        return 0;
    F.tag = type_tag(t, F.m_name[0]);
    return 1;
}

/* The slots of a connection at rest (see above) */
static int
at_rest(PyObject *self)
{
    static const int nones[] = {D_TUNNEL, D_PARSING, D_CURRENT, D_DEFERRED};
    static const int falses[] = {D_DEAD, D_UPGRADED, D_PP_PENDING, D_CLOSING};
    if (SLOT(self, S.doff[D_PARSER_READY]) != Py_True)
        return 0;
    for (size_t i = 0; i < sizeof nones / sizeof *nones; i++)
        if (SLOT(self, S.doff[nones[i]]) != Py_None)
            return 0;
    for (size_t i = 0; i < sizeof falses / sizeof *falses; i++)
        if (SLOT(self, S.doff[falses[i]]) != Py_False)
            return 0;
    PyObject *parser = SLOT(self, S.doff[D_PARSER]), *queue = SLOT(self, S.doff[D_QUEUE]),
        *paused = SLOT(self, S.doff[D_PAUSED]);
    if (parser == NULL || parser == Py_None || queue == NULL || paused == NULL || !PySet_CheckExact(paused)
        || PySet_GET_SIZE(paused) != 0)
        return 0;
    Py_ssize_t q = PyObject_Size(queue);
    if (q != 0) {
        if (q < 0)
            PyErr_Clear();
        return 0;
    }
    return 1;
}

/* exchange ex's int attribute (a slot), or -1 */
static Py_ssize_t
ex_int(PyObject *ex, int i)
{
    PyObject *v = SLOT(ex, S.eoff[i]);
    if (v == NULL || !PyLong_CheckExact(v))
        return -1;
    Py_ssize_t r = PyLong_AsSsize_t(v);
    if (r == -1)
        PyErr_Clear();
    return r;
}

/* The callbacks for a recognised head; its fields' entries in e[] */
static PyObject *
fast_callbacks(PyObject *self, const char *d, int is_head, Py_ssize_t tlen, Obj *e, int nf)
{
    PyObject *ex = NULL, *r;
    PyObject *node = dget(self, D_NODE);
    if (node == NULL)
        return NULL;
    PyObject *now = node_call0(node, s_now);   /* data_received's first step */
    Py_DECREF(node);
    if (now == NULL)
        return NULL;
    slot_set(self, S.doff[D_LAST_ACTIVE], now);
    slot_put(self, S.doff[D_PARSER_READY], Py_False);   /* as _feed, until the message completes */
    if ((r = on_message_begin(self, NULL, 0, NULL)) == NULL)
        goto error;
    Py_DECREF(r);
    ex = SLOT(self, S.doff[D_PARSING]);
    if (ex == NULL || ex == Py_None) {
        ex = NULL;
        PyErr_SetString(PyExc_AssertionError, "fast head: no exchange after on_message_begin");
        goto error;
    }
    Py_INCREF(ex);
    PyObject *url = PyBytes_FromStringAndSize(d + (is_head ? 5 : 4), tlen);
    if (url == NULL)
        goto error;
    r = on_url(self, &url, 1, NULL);
    Py_DECREF(url);
    if (r == NULL)
        goto error;
    Py_DECREF(r);
    /* plain fields inline when on_header would only append them: a fresh
     * exchange of our type, and the whole head within its limits */
    Py_ssize_t hb = -1;
    PyObject *headers = NULL, *names = NULL;
    if (Py_TYPE(ex) == S.ex_type && SLOT(ex, S.eoff[E_LIMITS]) != NULL) {
        /* the limits first: their look-ups could run Python code; the slots after */
        Py_ssize_t max_line, max_headers, max_bytes;
        limits_of(SLOT(ex, S.eoff[E_LIMITS]), &max_line, &max_headers, &max_bytes);
        Py_ssize_t ul = ex_int(ex, E_URL_LEN), h0 = ex_int(ex, E_HEADER_BYTES), total = h0;
        for (int k = 0; k < nf; k++)
            total += PyBytes_GET_SIZE(e[k].name) + PyBytes_GET_SIZE(e[k].value) + 4;
        headers = SLOT(ex, S.eoff[E_HEADERS]);
        names = SLOT(ex, S.eoff[E_NAMES]);
        if (SLOT(ex, S.eoff[E_CTX]) == Py_None && SLOT(ex, S.eoff[E_STATE]) == F.parsing
            && headers != NULL && PyList_CheckExact(headers) && PyList_GET_SIZE(headers) == 0
            && names != NULL && PyList_CheckExact(names) && SLOT(self, S.doff[D_PARSING]) == ex
            && ul >= 0 && h0 >= 0 && max_headers >= 0 && max_bytes >= 0
            && nf <= max_headers && total <= max_bytes + ul) {
            hb = h0;
            Py_INCREF(headers);
            Py_INCREF(names);
        }
    }
    for (int k = 0; k < nf; k++) {
        Py_ssize_t add = PyBytes_GET_SIZE(e[k].name) + PyBytes_GET_SIZE(e[k].value) + 4;
        if (hb >= 0 && e[k].kind == K_PLAIN) {
            if (PyList_Append(headers, e[k].pair) < 0 || PyList_Append(names, e[k].name) < 0)
                goto error_lists;
            hb += add;
            continue;
        }
        PyObject *hbv = NULL;
        if (hb >= 0) {
            if ((hbv = PyLong_FromSsize_t(hb)) == NULL)
                goto error_lists;
            eset(ex, E_HEADER_BYTES, hbv);
        }
        PyObject *a[3] = {self, e[k].name, e[k].value};
        if ((r = PyObject_Vectorcall(F.on_header, a, 3, NULL)) == NULL)
            goto error_lists;
        Py_DECREF(r);
        if (hb >= 0)
            hb += add;
    }
    if (hb >= 0) {
        Py_DECREF(headers);
        Py_DECREF(names);
        headers = names = NULL;
        PyObject *hbv = PyLong_FromSsize_t(hb);
        if (hbv == NULL)
            goto error;
        eset(ex, E_HEADER_BYTES, hbv);
    }
    /* on_headers_complete, as llhttp would call it */
    if (SLOT(self, S.doff[D_PARSING]) != ex) {
        PyErr_SetString(PyExc_AssertionError, "fast head: the exchange changed before headers complete");
        goto error;
    }
    r = headers_complete_with(self, ex, F.version, is_head ? F.head : F.get, Py_True);
    if (r == NULL)
        goto error;
    Py_DECREF(r);
    if ((r = message_complete(self, NULL, 0, NULL, 0)) == NULL)
        goto error;
    Py_DECREF(ex);
    return r;
error_lists:
    if (hb >= 0) {
        Py_DECREF(headers);
        Py_DECREF(names);
    }
error:
    Py_XDECREF(ex);
    /* llhttp stops at a callback's error (any BaseException: httptools
     * catches them all) and _feed hands it on, inside its except clause */
    PyObject *handled, *value = handle_raised(&handled);
    PyObject *a[2] = {self, value};
    r = PyObject_VectorcallMethod(s_callback_failed, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    handled_restore(handled, value);
    return r;
}

static PyObject *
data_received(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (!F.ready || !FAST_SELF(self) || kwnames != NULL || nargs != 1 || !PyBytes_CheckExact(args[0])
        || !at_rest(self) || !down_unchanged())
        goto python;
    PyObject *data = args[0];
    const char *d = PyBytes_AS_STRING(data);
    Field f[FAST_FIELDS];
    Obj o[FAST_FIELDS];
    int is_head, nf, k, ok = 1;
    Py_ssize_t tlen;
    if (PyBytes_GET_SIZE(data) > F.feed_slice || !scan_head(d, PyBytes_GET_SIZE(data), &is_head, &tlen, f, &nf))
        goto python;   /* (a longer read is fed to llhttp in slices, the head's raw size bounded) */
    PyObject *r = NULL;
    for (k = 0; k < nf; k++) {
        if (field_objects(d, &f[k], &o[k], F.special) < 0)
            goto done;
        ok &= o[k].kind != K_LLHTTP;
    }
    if (ok) {
        Py_INCREF(data);   /* (the caller's; the callbacks run Python code) */
        r = fast_callbacks(self, d, is_head, tlen, o, nf);
        Py_DECREF(data);
    }
done:
    objs_clear(o, k);
    if (k < nf)
        return NULL;   /* field_objects' error (memory) */
    if (ok) {
        fast_heads++;
        return r;
    }
python:
    return call_py(F.py_data_received, self, args, nargs, kwnames);
}

static PyMethodDef data_received_def = METHOD("data_received", data_received,
    "Bytes from the client; a whole plain request head is parsed here (proxy/_request.c).");

/* setup_fast(Downstream, PARSING, SPECIAL, FEED_SLICE, py_data_received):
 * sets Downstream.data_received to the C one (after setup_down, with
 * Downstream's on_url, on_message_begin, on_headers_complete and
 * on_message_complete the C ones: they are called directly) */
static PyObject *
setup_fast(PyObject *module, PyObject *args)
{
    PyObject *down_type, *parsing, *special, *py, *limits_type = NULL;
    Py_ssize_t feed_slice;
    if (!PyArg_ParseTuple(args, "O!OOnO|O!:setup_fast", &PyType_Type, &down_type, &parsing, &special, &feed_slice,
                          &py, &PyType_Type, &limits_type))
        return NULL;
    if (!S.ready || (PyTypeObject *)down_type != S.down_type || !PyAnySet_Check(special)) {
        PyErr_SetString(PyExc_TypeError, "setup_fast: call setup_down() first; SPECIAL must be a set");
        return NULL;
    }
    PyObject *dict = S.down_type->tp_dict;
    void *ours[N_M] = {NULL, (void *)on_url, (void *)on_message_begin, (void *)on_headers_complete,
                       (void *)on_message_complete, NULL, NULL};
    for (int i = 0; i < N_M; i++) {
        if (F.m_name[i] == NULL && (F.m_name[i] = PyUnicode_InternFromString(m_names[i])) == NULL)
            return NULL;
        PyObject *v = PyDict_GetItemWithError(dict, F.m_name[i]);
        if (v == NULL && !PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "setup_fast: Downstream has no %s", m_names[i]);
        if (v == NULL)
            return NULL;
        if (ours[i] != NULL && !(Py_IS_TYPE(v, &PyMethodDescr_Type)
                                 && (void *)((PyMethodDescrObject *)v)->d_method->ml_meth == ours[i])) {
            PyErr_Format(PyExc_TypeError, "setup_fast: Downstream.%s is not _request.c's", m_names[i]);
            return NULL;
        }
    }
    PyObject *descr = PyDescr_NewMethod(S.down_type, &data_received_def);
    if (descr == NULL)
        return NULL;
    F.ready = 0;
    if (PyObject_SetAttr(down_type, F.m_name[M_DATA_RECEIVED], descr) < 0) {
        Py_DECREF(descr);
        return NULL;
    }
    for (int i = 0; i < CACHE_SIZE; i++)
        entry_clear(&cache[i]);   /* the kinds depend on SPECIAL */
    for (int i = 0; i < N_M; i++)
        Py_XSETREF(F.method[i], Py_NewRef(i == M_DATA_RECEIVED ? descr : PyDict_GetItem(dict, F.m_name[i])));
    Py_INCREF(special); Py_XSETREF(F.special, special);
    Py_XINCREF(limits_type); Py_XSETREF(L.type, (PyTypeObject *)limits_type);
    Py_CLEAR(L.limits);
    Py_INCREF(parsing); Py_XSETREF(F.parsing, parsing);
    Py_INCREF(py); Py_XSETREF(F.py_data_received, py);
    Py_XSETREF(F.on_header, Py_NewRef(F.method[M_ON_HEADER]));
    Py_XSETREF(F.descr, descr);
    F.feed_slice = feed_slice;
    F.tag = 0;
    F.ready = 1;
    down_unchanged();   /* records the type's version */
    Py_RETURN_NONE;
}

/* scan(data) -> None, or (method, target, [(name, value), ...]) as the fast
 * path would call back (for the tests) */
static PyObject *
scan(PyObject *module, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "scan: bytes");
        return NULL;
    }
    Field f[FAST_FIELDS];
    int is_head, nf;
    Py_ssize_t tlen;
    const char *d = PyBytes_AS_STRING(data);
    if (!scan_head(d, PyBytes_GET_SIZE(data), &is_head, &tlen, f, &nf))
        Py_RETURN_NONE;
    PyObject *fields = PyList_New(0);
    if (fields == NULL)
        return NULL;
    for (int k = 0; k < nf; k++) {
        Obj o;
        if (field_objects(d, &f[k], &o, F.special) < 0) {
            Py_DECREF(fields);
            return NULL;
        }
        int bad = o.kind == K_LLHTTP;
        PyObject *t = bad ? NULL : PyTuple_Pack(2, o.name, o.value);
        Py_DECREF(o.name);
        Py_DECREF(o.value);
        Py_DECREF(o.pair);
        if (bad) {
            Py_DECREF(fields);
            Py_RETURN_NONE;
        }
        if (t == NULL || PyList_Append(fields, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(fields);
            return NULL;
        }
        Py_DECREF(t);
    }
    return Py_BuildValue("(Ny#N)", Py_NewRef(is_head ? F.head : F.get), d + (is_head ? 5 : 4), tlen, fields);
}

static PyObject *
fast_count(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(fast_heads);
}


/* -- RequestContext(...) from a template ---------------------------------------------
 * RequestContext.__init__ stores its 12 arguments and 14 constants: ~0.7 us
 * of Python. The template, read off one context that __init__ made from 12
 * distinct stand-in arguments, says for each slot which argument it holds, or
 * the constant, or that it gets a new empty list. */

enum { C_ARG, C_CONST, C_LIST, C_UNSET };
#define MAX_CTX 64
#define N_CTX_ARGS 12

static struct {
    int ready;
    PyTypeObject *type;
    PyObject *init;          /* RequestContext.__dict__["__init__"] at setup */
    newfunc tp_new;
    initproc tp_init;
    int n;
    Py_ssize_t off[MAX_CTX];
    int kind[MAX_CTX], arg[MAX_CTX];
    PyObject *value[MAX_CTX];
} T;


/* Is the template still the type's __init__? */
static int
template_fits(PyObject *type)
{
    if (!T.ready || type != (PyObject *)T.type || T.type->tp_new != T.tp_new || T.type->tp_init != T.tp_init)
        return 0;
    PyObject *init = PyDict_GetItemWithError(T.type->tp_dict, s_init);
    if (init == NULL)
        PyErr_Clear();
    return init == T.init;
}

static PyObject *
template_new(PyObject *const *args)
{
    PyObject *obj = T.type->tp_alloc(T.type, 0);
    if (obj == NULL)
        return NULL;
    for (int i = 0; i < T.n; i++) {
        PyObject *v;
        switch (T.kind[i]) {
        case C_ARG: v = Py_NewRef(args[T.arg[i]]); break;
        case C_CONST: v = Py_NewRef(T.value[i]); break;
        case C_LIST: v = PyList_New(0); break;
        default: continue;   /* C_UNSET */
        }
        if (v == NULL) {
            Py_DECREF(obj);
            return NULL;
        }
        SLOT(obj, T.off[i]) = v;   /* NULL in a new object */
    }
    return obj;
}

/* new_context(*12 args): the C RequestContext(...) (for the tests) */
static PyObject *
new_context(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!T.ready || nargs != N_CTX_ARGS) {
        PyErr_SetString(PyExc_TypeError, "new_context: not set up, or not 12 arguments");
        return NULL;
    }
    return template_new(args);
}

static int
setup_template(PyObject *type, PyObject *tpl, PyObject *stand_ins)
{
    PyTypeObject *t = (PyTypeObject *)type;
    T.ready = 0;   /* a failed setup leaves no template */
    if (Py_TYPE(tpl) != t || !PyTuple_CheckExact(stand_ins) || PyTuple_GET_SIZE(stand_ins) != N_CTX_ARGS
        || t->tp_dictoffset != 0 || t->tp_base != &PyBaseObject_Type) {
        PyErr_SetString(PyExc_TypeError, "setup_node: the context template does not fit");
        return -1;
    }
    PyObject *slots = PyDict_GetItemWithError(t->tp_dict, s_slots);
    if (slots == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "setup_node: RequestContext has no __slots__");
        return -1;
    }
    PyObject *seq = PySequence_Fast(slots, "__slots__ is not a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int used[N_CTX_ARGS] = {0};
    if (n > MAX_CTX) {
        PyErr_SetString(PyExc_ValueError, "setup_node: too many slots");
        goto fail;
    }
    for (int i = 0; i < T.n; i++)
        Py_CLEAR(T.value[i]);
    T.n = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "setup_node: a slot name is not a str");
            goto fail;
        }
        const char *cname = PyUnicode_AsUTF8(name);
        if (cname == NULL || slot_offset(t, cname, &T.off[i]) < 0)
            goto fail;
        PyObject *v = SLOT(tpl, T.off[i]);
        T.value[i] = NULL;
        T.arg[i] = -1;
        int k;
        for (k = 0; k < N_CTX_ARGS; k++)
            if (v == PyTuple_GET_ITEM(stand_ins, k))
                break;
        if (v == NULL)
            T.kind[i] = C_UNSET;
        else if (k < N_CTX_ARGS) {
            T.kind[i] = C_ARG;
            T.arg[i] = k;
            used[k]++;
        } else if (PyList_CheckExact(v) && PyList_GET_SIZE(v) == 0)
            T.kind[i] = C_LIST;
        else if (immutable(v)) {
            T.kind[i] = C_CONST;
            T.value[i] = Py_NewRef(v);
        } else {
            PyErr_Format(PyExc_TypeError, "setup_node: slot %U holds a %s, which a template cannot copy",
                         name, Py_TYPE(v)->tp_name);
            goto fail;
        }
        T.n = (int)i + 1;
    }
    for (int k = 0; k < N_CTX_ARGS; k++)
        if (used[k] != 1) {
            PyErr_Format(PyExc_TypeError, "setup_node: argument %d is kept in %d slots", k, used[k]);
            goto fail;
        }
    Py_DECREF(seq);
    PyObject *init = PyDict_GetItemWithError(t->tp_dict, s_init);
    if (init == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "setup_node: RequestContext has no __init__ of its own");
        goto fail_seqless;
    }
    Py_INCREF(init); Py_XSETREF(T.init, init);
    Py_INCREF(type); Py_XSETREF(T.type, t);
    T.tp_new = t->tp_new;
    T.tp_init = t->tp_init;
    T.ready = 1;
    return 0;
fail:
    Py_DECREF(seq);
fail_seqless:
    for (int i = 0; i < T.n; i++)
        Py_CLEAR(T.value[i]);
    T.n = 0;
    return -1;
}

/* -- Node.head_complete --------------------------------------------------------------- */

static struct {
    int ready;
    PyObject *globals;            /* node.py's module dict */
    PyObject *py_head_complete;   /* Node._head_complete_py */
    PyObject *next_rid;           /* Node.next_request_id (the function) */
    PyTypeObject *count_type;     /* itertools.count */
} N;

/* node.next_request_id(): Node's own is done here, anything else is called */
static PyObject *
next_request_id(PyObject *node)
{
    PyObject *m = PyObject_GetAttr(node, s_next_request_id);
    if (m == NULL)
        return NULL;
    /* Node's own method reads attributes only: no global name to check */
    if (!PyMethod_Check(m) || PyMethod_GET_FUNCTION(m) != N.next_rid || PyMethod_GET_SELF(m) != node)
        goto call;
    /* self._id_prefix + "%x" % self._ids.__next__() */
    PyObject *prefix = node_attr(node, s_id_prefix);
    if (prefix == NULL)
        goto fail;
    PyObject *ids = node_attr(node, s_ids);
    if (ids == NULL) {
        Py_DECREF(prefix);
        goto fail;
    }
    if (!PyUnicode_CheckExact(prefix) || !PyUnicode_IS_COMPACT_ASCII(prefix) || Py_TYPE(ids) != N.count_type) {
        Py_DECREF(prefix);
        Py_DECREF(ids);
        goto call;   /* (attribute reads only so far: Python reads them again) */
    }
    PyObject *n = Py_TYPE(ids)->tp_iternext(ids);
    Py_DECREF(ids);
    if (n == NULL) {
        Py_DECREF(prefix);
        if (!PyErr_Occurred())
            PyErr_SetNone(PyExc_StopIteration);
        goto fail;
    }
    PyObject *r = NULL;
    int overflow;
    long long v = PyLong_CheckExact(n) ? PyLong_AsLongLongAndOverflow(n, &overflow) : -1;
    if (v >= 0 && !overflow) {
        char buf[24];   /* "%x" % v: lower-case hex digits, no prefix */
        int len = 0;
        do {
            buf[sizeof(buf) - 1 - len++] = "0123456789abcdef"[v & 15];
            v >>= 4;
        } while (v);
        Py_ssize_t plen = PyUnicode_GET_LENGTH(prefix);
        if ((r = PyUnicode_New(plen + len, 127)) != NULL) {
            memcpy(PyUnicode_1BYTE_DATA(r), PyUnicode_1BYTE_DATA(prefix), plen);
            memcpy(PyUnicode_1BYTE_DATA(r) + plen, buf + sizeof(buf) - len, len);
        }
    } else {
        PyErr_Clear();
        PyObject *x = PyUnicode_FromString("%x"), *s = NULL;
        if (x != NULL && (s = PyNumber_Remainder(x, n)) != NULL)
            r = PyNumber_Add(prefix, s);
        Py_XDECREF(x);
        Py_XDECREF(s);
    }
    Py_DECREF(n);
    Py_DECREF(prefix);
    Py_DECREF(m);
    return r;
call:
    {
        PyObject *r = PyObject_CallNoArgs(m);
        Py_DECREF(m);
        return r;
    }
fail:
    Py_DECREF(m);
    return NULL;
}

/* `a, b[, c] = seq`, with Python 3.11's errors */
static int
unpack(PyObject *seq, Py_ssize_t n, PyObject **out)
{
    if (PyTuple_CheckExact(seq) && PyTuple_GET_SIZE(seq) == n) {
        for (Py_ssize_t i = 0; i < n; i++)
            out[i] = Py_NewRef(PyTuple_GET_ITEM(seq, i));
        return 0;
    }
    PyObject *it = PyObject_GetIter(seq);
    if (it == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) && Py_TYPE(seq)->tp_iter == NULL && !PySequence_Check(seq)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "cannot unpack non-iterable %.200s object", Py_TYPE(seq)->tp_name);
        }
        return -1;
    }
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        if ((out[i] = PyIter_Next(it)) == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "not enough values to unpack (expected %zd, got %zd)", n, i);
            goto fail;
        }
    }
    PyObject *extra = PyIter_Next(it);
    if (extra == NULL && !PyErr_Occurred()) {
        Py_DECREF(it);
        return 0;
    }
    if (extra != NULL) {
        Py_DECREF(extra);
        PyErr_Format(PyExc_ValueError, "too many values to unpack (expected %zd)", n);
    }
fail:
    while (--i >= 0)
        Py_CLEAR(out[i]);
    Py_DECREF(it);
    return -1;
}

static PyObject *
decode_latin1(PyObject *b)
{
    if (PyBytes_CheckExact(b))
        return PyUnicode_DecodeLatin1(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), NULL);
    PyObject *a[2] = {b, s_latin1};
    return PyObject_VectorcallMethod(s_decode, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* `host == down.host_seen` as an `if` takes it: 1, 0, -1 */
static int
same_host(PyObject *host, PyObject *seen)
{
    if (PyBytes_CheckExact(host) && PyBytes_CheckExact(seen))
        return PyBytes_GET_SIZE(host) == PyBytes_GET_SIZE(seen)
            && memcmp(PyBytes_AS_STRING(host), PyBytes_AS_STRING(seen), PyBytes_GET_SIZE(host)) == 0;
    if (PyBytes_CheckExact(host) && seen == Py_None)
        return 0;
    PyObject *c = PyObject_RichCompare(host, seen, Py_EQ);
    if (c == NULL)
        return -1;
    int t = PyObject_IsTrue(c);
    Py_DECREF(c);
    return t;
}

/* owned references of head_complete, dropped at its end */
enum { O_CHECK, O_SEEN, O_RESULT, O_TARGET, O_HOST, O_CLIENT_IP, O_GEO, O_TRUSTED, O_RID, O_PATH,
       O_QUERY, O_HOSTS, O_CTX_TYPE, O_LAST_ACTIVE, O_METHOD, O_PATH_S, O_QUERY_S, O_VERSION,
       O_CLIENT_PORT, O_HEADERS, O_LISTENER, O_LISTENER_NAME, O_CTX, O_BUILD, O_TRUSTED2,
       O_PEER_IP, O_LISTENER2, O_SCHEME, O_RID_B, O_HOOKS, O_ACTIONS, O_HOOKS2, O_EXTRA,
       O_MEMO, O_HEAD, N_OWNED };

static int head_trusted(PyObject *self, PyObject *ex, PyObject **o);

static PyObject *
head_complete_c(PyObject *self, PyObject *down, PyObject *ex)
{
    PyObject *o[N_OWNED] = {NULL};
    PyObject *r = NULL;
    int t;
    /* target, host = check_head(ex, down.host_seen) */
    if ((o[O_CHECK] = global(N.globals, s_check_head)) == NULL || (o[O_SEEN] = dget(down, D_HOST_SEEN)) == NULL)
        goto done;
    PyObject *ca[2] = {ex, o[O_SEEN]};
    if ((o[O_RESULT] = PyObject_Vectorcall(o[O_CHECK], ca, 2, NULL)) == NULL
        || unpack(o[O_RESULT], 2, &o[O_TARGET]) < 0)
        goto done;
    if ((o[O_CLIENT_IP] = dget(down, D_CLIENT_IP)) == NULL || (o[O_GEO] = dget(down, D_GEO)) == NULL
        || (o[O_TRUSTED] = dget(down, D_TRUSTED_PEER)) == NULL)
        goto done;
    if ((t = PyObject_IsTrue(o[O_TRUSTED])) < 0)
        goto done;
    /* not trusted when the call came here (head_complete checked it), but
     * check_head could have changed that: Python's branch, as Python has it */
    if (t && head_trusted(self, ex, o) < 0)
        goto done;
    if ((o[O_RID] = next_request_id(self)) == NULL)
        goto done;
    /* path, _, query = target.partition(b"?"): kept as the target and the
     * '?' position for exact bytes (decoded below, where Python decodes) */
    PyObject *target = o[O_TARGET], *host = o[O_HOST];
    Py_ssize_t qpos = -1;
    if (PyBytes_CheckExact(target)) {
        const char *q = memchr(PyBytes_AS_STRING(target), '?', PyBytes_GET_SIZE(target));
        qpos = q == NULL ? PyBytes_GET_SIZE(target) : q - PyBytes_AS_STRING(target);
    } else {
        PyObject *a[2] = {target, b_question}, *parts[3];
        PyObject *p = PyObject_VectorcallMethod(s_partition, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (p == NULL)
            goto done;
        t = unpack(p, 3, parts);
        Py_DECREF(p);
        if (t < 0)
            goto done;
        o[O_PATH] = parts[0];
        Py_DECREF(parts[1]);
        o[O_QUERY] = parts[2];
    }
    /* the Host's host part: this connection's last one, or split and kept */
    Py_CLEAR(o[O_SEEN]);
    if ((o[O_SEEN] = dget(down, D_HOST_SEEN)) == NULL || (t = same_host(host, o[O_SEEN])) < 0)
        goto done;
    if (t) {
        if ((o[O_HOSTS] = dget(down, D_HOST_NAME)) == NULL)
            goto done;
    } else {
        if ((t = PyObject_IsTrue(host)) < 0)
            goto done;
        if (t) {
            PyObject *split = global(N.globals, s_split_host);
            if (split == NULL)
                goto done;
            o[O_HOSTS] = PyObject_CallOneArg(split, host);
            Py_DECREF(split);
            if (o[O_HOSTS] == NULL)
                goto done;
        } else
            o[O_HOSTS] = Py_NewRef(u_empty);
        PyObject *value = eget(ex, E_HOST_VALUE);
        if (value == NULL)
            goto done;
        Py_DECREF(value);
        if (host == value) {   /* validated by check_head: remember it for the next request */
            slot_set(down, S.doff[D_HOST_SEEN], Py_NewRef(host));
            slot_set(down, S.doff[D_HOST_NAME], Py_NewRef(o[O_HOSTS]));
        }
    }
    /* ctx = RequestContext(rid, down.last_active, ex.method, hosts, path.decode("latin-1"),
     *                      query.decode("latin-1"), ex.version, client_ip, down.client_port,
     *                      geo, ex.headers, down.listener.name) */
    if ((o[O_CTX_TYPE] = global(N.globals, s_request_context)) == NULL
        || (o[O_LAST_ACTIVE] = dget(down, D_LAST_ACTIVE)) == NULL || (o[O_METHOD] = eget(ex, E_METHOD)) == NULL)
        goto done;
    if (qpos >= 0) {
        const char *p = PyBytes_AS_STRING(target);
        Py_ssize_t n = PyBytes_GET_SIZE(target);
        if ((o[O_PATH_S] = PyUnicode_DecodeLatin1(p, qpos, NULL)) == NULL)
            goto done;
        if (qpos >= n)
            o[O_QUERY_S] = Py_NewRef(u_empty);
        else if ((o[O_QUERY_S] = PyUnicode_DecodeLatin1(p + qpos + 1, n - qpos - 1, NULL)) == NULL)
            goto done;
    } else if ((o[O_PATH_S] = decode_latin1(o[O_PATH])) == NULL || (o[O_QUERY_S] = decode_latin1(o[O_QUERY])) == NULL)
        goto done;
    if ((o[O_VERSION] = eget(ex, E_VERSION)) == NULL || (o[O_CLIENT_PORT] = dget(down, D_CLIENT_PORT)) == NULL
        || (o[O_HEADERS] = eget(ex, E_HEADERS)) == NULL || (o[O_LISTENER] = dget(down, D_LISTENER)) == NULL
        || (o[O_LISTENER_NAME] = PyObject_GetAttr(o[O_LISTENER], s_name)) == NULL)
        goto done;
    PyObject *cargs[N_CTX_ARGS] = {
        o[O_RID], o[O_LAST_ACTIVE], o[O_METHOD], o[O_HOSTS], o[O_PATH_S], o[O_QUERY_S], o[O_VERSION],
        o[O_CLIENT_IP], o[O_CLIENT_PORT], o[O_GEO], o[O_HEADERS], o[O_LISTENER_NAME]};
    if (template_fits(o[O_CTX_TYPE]))
        o[O_CTX] = template_new(cargs);
    else
        o[O_CTX] = PyObject_Vectorcall(o[O_CTX_TYPE], cargs, N_CTX_ARGS, NULL);
    if (o[O_CTX] == NULL)
        goto done;
    if (eset(ex, E_CTX, Py_NewRef(o[O_CTX])) < 0)
        goto done;
    /* self.started += 1 */
    {
        PyObject *s = node_attr(self, s_started);
        if (s == NULL)
            goto done;
        PyObject *s1 = PyNumber_InPlaceAdd(s, i_one);
        Py_DECREF(s);
        if (s1 == NULL)
            goto done;
        t = node_set(self, s_started, s1);
        Py_DECREF(s1);
        if (t < 0)
            goto done;
    }
    /* ex.req_head = build_upstream_head(ex, target, host, client_ip, down.trusted_peer,
     *     down.client_ip, down.listener.scheme, b"1.1 novaedge", rid.encode(),
     *     self.hooks.header_actions, self.hooks.forward_headers(self, ctx), down.fwd_memo) */
    if ((o[O_BUILD] = global(N.globals, s_build_upstream_head)) == NULL
        || (o[O_TRUSTED2] = dget(down, D_TRUSTED_PEER)) == NULL || (o[O_PEER_IP] = dget(down, D_CLIENT_IP)) == NULL
        || (o[O_LISTENER2] = dget(down, D_LISTENER)) == NULL
        || (o[O_SCHEME] = PyObject_GetAttr(o[O_LISTENER2], s_scheme)) == NULL)
        goto done;
    if (PyUnicode_CheckExact(o[O_RID]))
        o[O_RID_B] = PyUnicode_AsUTF8String(o[O_RID]);
    else
        o[O_RID_B] = call_method0(o[O_RID], s_encode);
    if (o[O_RID_B] == NULL || (o[O_HOOKS] = node_attr(self, s_hooks)) == NULL
        || (o[O_ACTIONS] = PyObject_GetAttr(o[O_HOOKS], s_header_actions)) == NULL
        || (o[O_HOOKS2] = node_attr(self, s_hooks)) == NULL)
        goto done;
    {
        PyObject *a[3] = {o[O_HOOKS2], self, o[O_CTX]};
        o[O_EXTRA] = PyObject_VectorcallMethod(s_forward_headers, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (o[O_EXTRA] == NULL || (o[O_MEMO] = dget(down, D_FWD_MEMO)) == NULL)
        goto done;
    {
        PyObject *b[12] = {ex, target, host, o[O_CLIENT_IP], o[O_TRUSTED2], o[O_PEER_IP], o[O_SCHEME], b_via,
                           o[O_RID_B], o[O_ACTIONS], o[O_EXTRA], o[O_MEMO]};
        o[O_HEAD] = PyObject_Vectorcall(o[O_BUILD], b, 12, NULL);
    }
    if (o[O_HEAD] == NULL || eset(ex, E_REQ_HEAD, Py_NewRef(o[O_HEAD])) < 0)
        goto done;
    r = Py_NewRef(Py_None);
done:
    for (int i = 0; i < N_OWNED; i++)
        Py_XDECREF(o[i]);
    return r;
}

/* Python's trusted-peer branch:
 *     xff_client = client_from_xff(ex, client_ip, self.snapshot.is_trusted_proxy)
 *     if xff_client != client_ip:
 *         client_ip = xff_client
 *         geo = self.geo_lookup(client_ip) */
static int
head_trusted(PyObject *self, PyObject *ex, PyObject **o)
{
    PyObject *fn = global(N.globals, s_client_from_xff), *snap = NULL, *is_trusted = NULL, *xff = NULL;
    int r = -1;
    if (fn == NULL || (snap = node_attr(self, s_snapshot)) == NULL
        || (is_trusted = PyObject_GetAttr(snap, s_is_trusted_proxy)) == NULL)
        goto done;
    PyObject *a[3] = {ex, o[O_CLIENT_IP], is_trusted};
    if ((xff = PyObject_Vectorcall(fn, a, 3, NULL)) == NULL)
        goto done;
    PyObject *c = PyObject_RichCompare(xff, o[O_CLIENT_IP], Py_NE);
    int t = c == NULL ? -1 : PyObject_IsTrue(c);
    Py_XDECREF(c);
    if (t < 0)
        goto done;
    if (t) {
        Py_SETREF(o[O_CLIENT_IP], Py_NewRef(xff));
        PyObject *b[2] = {self, xff};
        PyObject *geo = PyObject_VectorcallMethod(s_geo_lookup, b, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (geo == NULL)
            goto done;
        Py_SETREF(o[O_GEO], geo);
    }
    r = 0;
done:
    Py_XDECREF(fn);
    Py_XDECREF(snap);
    Py_XDECREF(is_trusted);
    Py_XDECREF(xff);
    return r;
}

static PyObject *
head_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (!N.ready || !S.ready || kwnames != NULL || nargs != 2 || Py_TYPE(args[0]) != S.down_type
        || Py_TYPE(args[1]) != S.ex_type || SLOT(args[0], S.doff[D_TRUSTED_PEER]) != Py_False)
        return call_py(N.py_head_complete, self, args, nargs, kwnames);   /* a trusted peer: XFF */
    /* (args[] is owned by the caller for the call's length) */
    return head_complete_c(self, args[0], args[1]);
}

static PyMethodDef head_complete_def = METHOD("head_complete", head_complete,
    "Node.head_complete's common case in C (proxy/_request.c).");

/* setup_node(Node, node_globals, py_head_complete, next_request_id, count_type,
 *            RequestContext, template, stand_ins) -> a method descriptor for
 * Node.head_complete. `template`: RequestContext(*stand_ins), 12 distinct objects. */
static PyObject *
setup_node(PyObject *module, PyObject *args)
{
    PyObject *node_type, *globals, *py_head_complete, *next_rid, *count_type, *ctx_type, *tpl, *stand_ins;
    if (!PyArg_ParseTuple(args, "O!O!OOO!O!OO:setup_node", &PyType_Type, &node_type, &PyDict_Type, &globals,
                          &py_head_complete, &next_rid, &PyType_Type, &count_type, &PyType_Type, &ctx_type,
                          &tpl, &stand_ins))
        return NULL;
    if (!S.ready) {
        PyErr_SetString(PyExc_RuntimeError, "setup_node: call setup_down() first");
        return NULL;
    }
    PyObject *descr = PyDescr_NewMethod((PyTypeObject *)node_type, &head_complete_def);
    if (descr == NULL)
        return NULL;
    N.ready = 0;
    if (setup_template(ctx_type, tpl, stand_ins) < 0) {
        Py_DECREF(descr);
        return NULL;
    }
    Py_INCREF(globals); Py_XSETREF(N.globals, globals);
    Py_INCREF(py_head_complete); Py_XSETREF(N.py_head_complete, py_head_complete);
    Py_INCREF(next_rid); Py_XSETREF(N.next_rid, next_rid);
    Py_INCREF(count_type); Py_XSETREF(N.count_type, (PyTypeObject *)count_type);
    N.ready = 1;
    return descr;
}


/* -- Downstream._activate and what it calls, for a plain request ----------------------
 * From on_headers_complete (C) with no request being answered, Python runs
 * Downstream._activate(ex, parsing=True) -> Node.dispatch -> Exchange.start
 * -> (cluster.on_start, BackendPool.take_idle -> UpstreamConnection.usable)
 * -> Exchange._attach -> Exchange._arm_response_timer: eight frames, ~350
 * bytecodes, ~0.8 us of a request's ~7 us (synthetic cycle, /tmp/prof).
 * Here each of those methods is done in C, as a transliteration of its
 * Python: the same reads and writes in the same order, with what Python
 * calls (selector.pick, transport.write, transport.is_closing, peer_closed,
 * close, fail_request, _answer, continue_100, pool_for, node.now,
 * loop.create_task, _connect) called as Python calls it, and state read
 * again after each such call where Python reads it again.
 *
 * Each method is inlined only while it is the function setup_activate was
 * given (Downstream, Exchange, BackendPool and UpstreamConnection's by their
 * type's version tag; Node.dispatch as the node finds it, an instance
 * attribute included; exchange.on_start as the module global) and its self
 * is exactly its class; else it is called. Each inlined method first checks
 * its own common case, before changing anything, and otherwise calls the
 * Python function (the reference) with the same arguments:
 *   _activate:  ex an Exchange; ex.pending_body an empty list (nothing
 *               held from the pipeline queue); WAITING defined;
 *   dispatch:   ex.ctx a RequestContext; node.hooks.protect_active False;
 *               node.snapshot.router.every a Route (the single catch-all);
 *   start:      ex.ctx a RequestContext;
 *   take_idle:  (none: it is all done here);
 *   _attach:    conn an UpstreamConnection with a transport; not
 *               ex.host_missing; not ex.down.write_paused (a Downstream);
 *               ex.pending_body an empty list; SENT and UNFED defined.
 * The rest (a failure tuple from pick, a 413, an Expect, an empty pool,
 * stale or closed idle connections, a retry) is done here as Python does
 * it, calling what Python calls. Not checked: a module rebinding the
 * builtins isinstance or tuple (start's `isinstance(choice, tuple)`).
 * A Snapshot's router and response_timeout_s are read once per Snapshot
 * (frozen; as new_exchange reads its limits); the module globals read
 * (WAITING, IDEMPOTENT, on_start, CONNECTING, STALE_CHECK_AFTER_S, SENT,
 * UNFED) are kept with their module dict's version, as LOAD_GLOBAL keeps them.
 * tests/unit/test_activate_c.py runs a real node twice, with this and with
 * the Python, and compares what each leaves. */

enum { T_DOWN, T_EX, T_CTX, T_BACKEND, T_POOL, T_CONN, T_ROUTE, T_RPOOL, N_T };
enum { AD_CURRENT, AD_REQUESTS, AD_NODE, AD_WRITE_PAUSED, AD_LAST_ACTIVE,
       AE_PENDING_BODY, AE_STATE, AE_CTX, AE_NODE, AE_TRIED, AE_BACKEND, AE_POOL, AE_ATTEMPT_START,
       AE_ACCOUNTED, AE_REUSED, AE_UP, AE_RESP_PARSER, AE_HOST_MISSING, AE_WANT_UPGRADE,
       AE_BODY_COMPLETE, AE_EXPECT, AE_DECLARED_LEN, AE_CHUNKED, AE_MAX_BODY, AE_LAST_FAILURE,
       AE_DOWN, AE_REQ_HEAD, AE_TIMER,
       AC_ROUTE, AC_IS_WRITE, AC_METHOD, AC_BACKEND, AC_REGION, AC_UPSTREAM_START, AC_RETRIES,
       AB_ID, AB_REGION, AB_POOL, AB_IN_FLIGHT,
       AP_IDLE, AP_BUSY, AP_REUSED,
       AU_CLOSED, AU_EOF, AU_TRANSPORT, AU_IDLE_SINCE, AU_EXCHANGE,
       AR_WRITE, AR_MAX_BODY, ARP_IN_FLIGHT, N_A };
static const struct { int type; const char *name; } a_defs[N_A] = {
    {T_DOWN, "current"}, {T_DOWN, "requests"}, {T_DOWN, "node"}, {T_DOWN, "write_paused"},
    {T_DOWN, "last_active"},
    {T_EX, "pending_body"}, {T_EX, "state"}, {T_EX, "ctx"}, {T_EX, "node"}, {T_EX, "tried"},
    {T_EX, "backend"}, {T_EX, "pool"}, {T_EX, "attempt_start"}, {T_EX, "accounted"}, {T_EX, "reused"},
    {T_EX, "up"}, {T_EX, "resp_parser"}, {T_EX, "host_missing"}, {T_EX, "want_upgrade"},
    {T_EX, "body_complete"}, {T_EX, "expect"}, {T_EX, "declared_len"}, {T_EX, "chunked"},
    {T_EX, "max_body"}, {T_EX, "last_failure"}, {T_EX, "down"}, {T_EX, "req_head"}, {T_EX, "timer"},
    {T_CTX, "route"}, {T_CTX, "is_write"}, {T_CTX, "method"}, {T_CTX, "backend"}, {T_CTX, "region"},
    {T_CTX, "upstream_start"}, {T_CTX, "retries"},
    {T_BACKEND, "id"}, {T_BACKEND, "region"}, {T_BACKEND, "pool"}, {T_BACKEND, "in_flight"},
    {T_POOL, "idle"}, {T_POOL, "busy"}, {T_POOL, "reused"},
    {T_CONN, "closed"}, {T_CONN, "eof"}, {T_CONN, "transport"}, {T_CONN, "idle_since"},
    {T_CONN, "exchange"},
    {T_ROUTE, "write"}, {T_ROUTE, "max_body"}, {T_RPOOL, "in_flight"}};

/* the inlined methods, by the function each must still be */
enum { F_ACTIVATE, F_DISPATCH, F_START, F_ATTACH, F_ARM, F_TAKE_IDLE, F_USABLE, F_ON_START, N_FN };
static const char *fn_names[N_FN] = {"_activate", "dispatch", "start", "_attach", "_arm_response_timer",
                                     "take_idle", "usable", "on_start"};

/* a class whose methods[] must be the ones setup saw (by version tag, then its dict) */
typedef struct {
    PyTypeObject *type;
    unsigned int tag;
    int n;
    PyObject *names[1], *funcs[1];   /* borrowed from A.fname / A.fn */
} Watch;
enum { W_DOWN, W_START, W_ATTACH, W_ARM, W_POOL, W_CONN, N_W };

/* Which seams run in C (counted, for the tests): the inlined methods */
enum { C_ACTIVATE, C_DISPATCH, C_START, C_TAKE_IDLE, C_USABLE, C_ATTACH, C_ARM, C_ON_START, N_C };

static struct {
    int ready, enabled;
    PyTypeObject *type[N_T];
    PyTypeObject *snap_type;
    Py_ssize_t off[N_A];
    PyObject *name[N_A];
    PyObject *fn[N_FN], *fname[N_FN];
    Watch w[N_W];
    PyObject *last_snap, *last_router, *last_timeout;   /* owned: the last Snapshot's, read once */
    PyObject *descr[N_A];                                /* owned: each slot's member descriptor at setup */
    unsigned int layout_tag[N_T];                        /* each type's tag when its layout was last checked */
    unsigned long long count[N_C];
    PyObject *s_hooks,
        *s_protect_active, *s_router, *s_every, *s_response_timeout_s, *s_selector, *s_pick,
        *s_fail_request, *s_pools, *s_get, *s_pool_for, *s_add, *s_loop, *s_create_task,
        *s_connect, *s_pop, *s_is_closing, *s_peer_closed, *s_close, *s_write, *s_deadlines,
        *s_answer, *s_continue_100, *i_413;
} A;

static int
watch_ok(Watch *w)
{
    return type_still_holds(w->type, w->names, w->funcs, w->n, &w->tag);
}

/* the type's slots may be read directly: its attribute look-up is still the
 * generic one (no __getattribute__/__getattr__ given to the class since) and
 * each slot the C uses still has its member descriptor (not a property put
 * over it); by version tag, then the dict. Writes also need the generic
 * __setattr__ (setattr_ok: a frozen Route has its own, and is only read). */
static int
layout_ok(int t)
{
    PyTypeObject *tp = A.type[t];
    if (tag_current(tp, A.layout_tag[t]))
        return 1;
    if (tp->tp_getattro != PyObject_GenericGetAttr)
        return 0;
    int any = -1;
    for (int i = 0; i < N_A; i++) {
        if (a_defs[i].type != t)
            continue;
        any = i;
        PyObject *d = PyDict_GetItemWithError(tp->tp_dict, A.name[i]);   /* borrowed */
        if (d != A.descr[i]) {
            if (d == NULL && PyErr_Occurred())
                PyErr_Clear();
            return 0;
        }
    }
    A.layout_tag[t] = any < 0 ? 0 : type_tag(tp, A.name[any]);
    return 1;
}

/* o.<attr i>, owned: the slot for an object of its exact class, else as Python reads it */
static PyObject *
aget(PyObject *o, int i)
{
    if (Py_TYPE(o) == A.type[a_defs[i].type] && layout_ok(a_defs[i].type)) {
        PyObject *v = SLOT(o, A.off[i]);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(o, A.name[i]);
}

/* o.<attr i> = v, stealing v; -1 on an error */
static int
aset(PyObject *o, int i, PyObject *v)
{
    if (v == NULL)
        return -1;
    if (Py_TYPE(o) == A.type[a_defs[i].type] && layout_ok(a_defs[i].type)
        && Py_TYPE(o)->tp_setattro == PyObject_GenericSetAttr) {
        slot_set(o, A.off[i], v);
        return 0;
    }
    int r = PyObject_SetAttr(o, A.name[i], v);
    Py_DECREF(v);
    return r;
}

/* `if v:` (v owned, released): 1, 0, -1 */
static int
truth_drop(PyObject *v)
{
    if (v == NULL)
        return -1;
    int t = v == Py_True ? 1 : v == Py_False || v == Py_None ? 0 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

/* o.<attr i> += 1 */
static int
aincr(PyObject *o, int i)
{
    PyObject *v = aget(o, i);
    if (v == NULL)
        return -1;
    PyObject *n = PyNumber_InPlaceAdd(v, i_one);
    Py_DECREF(v);
    return aset(o, i, n);
}

/* obj.name(args...): a[0] is obj; the result dropped; -1 on an error */
static int
callm(PyObject *name, PyObject **a, size_t n)
{
    PyObject *r = PyObject_VectorcallMethod(name, a, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* the Python function fn(a...), the result dropped */
static int
callf(PyObject *fn, PyObject **a, size_t n)
{
    PyObject *r = PyObject_Vectorcall(fn, a, n, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The module globals the methods read (WAITING, IDEMPOTENT, ...): looked up
 * as LOAD_GLOBAL does, each kept with its module dict's version, as
 * LOAD_GLOBAL's own cache keeps it (a dict's version changes with any change
 * to it; the value is borrowed from the dict while it does not). */
enum { G_WAITING, G_IDEMPOTENT, G_ON_START, G_CONNECTING, G_STALE, G_SENT, G_UNFED, N_G };
static const struct { int fn; const char *name; } g_defs[N_G] = {
    {F_ACTIVATE, "WAITING"}, {F_DISPATCH, "IDEMPOTENT"}, {F_START, "on_start"}, {F_START, "CONNECTING"},
    {F_TAKE_IDLE, "STALE_CHECK_AFTER_S"}, {F_ATTACH, "SENT"}, {F_ATTACH, "UNFED"}};
static struct {
    PyObject *name;
    PyObject *dict;       /* borrowed: the function's __globals__ (the function is A's) */
    uint64_t version;
    PyObject *value;      /* borrowed from dict */
} G[N_G];


/* global g, borrowed, when the module defines it; NULL (no error set) when not */
static PyObject *
gget(int g)
{
    PyObject *d = PyFunction_GET_GLOBALS(A.fn[g_defs[g].fn]);
#ifdef DICT_VERSION
    if (G[g].dict == d && G[g].version == DICT_VERSION(d))
        return G[g].value;
#endif
    PyObject *v = PyDict_GetItemWithError(d, G[g].name);
    if (v == NULL) {
        PyErr_Clear();
        G[g].dict = NULL;
        return NULL;
    }
#ifdef DICT_VERSION
    G[g].dict = d;
    G[g].version = DICT_VERSION(d);
    G[g].value = v;
#endif
    return v;
}

/* global g, owned, as LOAD_GLOBAL finds it (the builtins, or a NameError) */
static PyObject *
gload(int g)
{
    PyObject *v = gget(g);
    if (v != NULL)
        return Py_NewRef(v);
    return global(PyFunction_GET_GLOBALS(A.fn[g_defs[g].fn]), G[g].name);
}

/* set.add(v) for a set s (a set exactly: PySet_Add, which is what add does) */
static int
set_add(PyObject *s, PyObject *v)
{
    if (PySet_CheckExact(s))
        return PySet_Add(s, v);
    PyObject *a[2] = {s, v};
    return callm(A.s_add, a, 2);
}

/* snapshot.router and snapshot.response_timeout_s (which: 0, 1), owned: a
 * Snapshot's read once */
static PyObject *
snap_attr(PyObject *snap, int which)
{
    if (snap != A.last_snap || snap == NULL) {
        if (A.snap_type == NULL || Py_TYPE(snap) != A.snap_type)
            return PyObject_GetAttr(snap, which ? A.s_response_timeout_s : A.s_router);
        PyObject *router = PyObject_GetAttr(snap, A.s_router);
        if (router == NULL)
            return NULL;
        PyObject *timeout = PyObject_GetAttr(snap, A.s_response_timeout_s);
        if (timeout == NULL) {
            Py_DECREF(router);
            return NULL;
        }
        Py_XSETREF(A.last_snap, Py_NewRef(snap));
        Py_XSETREF(A.last_router, router);
        Py_XSETREF(A.last_timeout, timeout);
    }
    return Py_NewRef(which ? A.last_timeout : A.last_router);
}

static int act_dispatch(PyObject *node, PyObject *down, PyObject *ex);
static int act_start(PyObject *ex, PyObject *now);
static PyObject *act_take_idle(PyObject *pool, PyObject *now);
static int act_attach(PyObject *ex, PyObject *conn, PyObject *now);
static int act_arm(PyObject *ex, PyObject *now);

/* Downstream._activate(ex, parsing=True), self a Downstream whose _activate is the original */
static int
act_activate(PyObject *self, PyObject *ex)
{
    PyObject *pb = Py_TYPE(ex) == A.type[T_EX] && layout_ok(T_EX) ? SLOT(ex, A.off[AE_PENDING_BODY]) : NULL;
    PyObject *waiting = gget(G_WAITING);
    if (pb == NULL || !PyList_CheckExact(pb) || PyList_GET_SIZE(pb) != 0 || waiting == NULL) {
        PyObject *a[3] = {self, ex, Py_True};
        PyObject *r = PyObject_Vectorcall(A.fn[F_ACTIVATE], a, 2, kw_parsing);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    Py_INCREF(waiting);   /* (a slot's old value released below could run code) */
    /* self.current = ex; self.requests += 1; (held: None); ex.state = WAITING */
    slot_put(self, A.off[AD_CURRENT], ex);
    if (aincr(self, AD_REQUESTS) < 0) {
        Py_DECREF(waiting);
        return -1;
    }
    if (aset(ex, AE_STATE, waiting) < 0)
        return -1;
    /* self.node.dispatch(self, ex) */
    PyObject *node = aget(self, AD_NODE), *m = NULL;
    if (node == NULL)
        return -1;
    int r;
#if PY_VERSION_HEX < 0x030D0000
    int unbound = _PyObject_GetMethod(node, A.fname[F_DISPATCH], &m);
#else
    int unbound = 0;
    m = PyObject_GetAttr(node, A.fname[F_DISPATCH]);
    if (m != NULL && PyMethod_Check(m) && PyMethod_GET_SELF(m) == node
        && PyMethod_GET_FUNCTION(m) == A.fn[F_DISPATCH]) {
        Py_SETREF(m, Py_NewRef(A.fn[F_DISPATCH]));
        unbound = 1;
    }
#endif
    if (m == NULL)
        r = -1;
    else if (unbound && m == A.fn[F_DISPATCH])
        r = act_dispatch(node, self, ex);
    else if (unbound) {
        PyObject *a[3] = {node, self, ex};
        r = callf(m, a, 3);
    } else {
        PyObject *a[2] = {self, ex};
        r = callf(m, a, 2);
    }
    Py_XDECREF(m);
    Py_DECREF(node);
    /* the rest of _activate: nothing held to replay; parsing, so no request_done */
    if (r == 0)
        A.count[C_ACTIVATE]++;
    return r;
}

/* Node.dispatch(down, ex), node's own */
static int
act_dispatch(PyObject *node, PyObject *down, PyObject *ex)
{
    PyObject *ctx = NULL, *hooks = NULL, *prot = NULL, *snap = NULL, *router = NULL, *route = NULL;
    int r = -1, inlined = 0;
    if ((ctx = aget(ex, AE_CTX)) == NULL)
        goto done;
    if (Py_TYPE(ctx) != A.type[T_CTX])
        goto python;   /* (None: Python's assert) */
    if ((hooks = node_attr(node, A.s_hooks)) == NULL
        || (prot = PyObject_GetAttr(hooks, A.s_protect_active)) == NULL)
        goto done;
    if (prot != Py_False)
        goto python;   /* the protect phase's hooks */
    if ((snap = node_attr(node, s_snapshot)) == NULL || (router = snap_attr(snap, 0)) == NULL
        || (route = PyObject_GetAttr(router, A.s_every)) == NULL)
        goto done;
    if (Py_TYPE(route) != A.type[T_ROUTE])
        goto python;   /* (None: router.match) */
    inlined = 1;
    /* ctx.route = route */
    if (aset(ctx, AC_ROUTE, Py_NewRef(route)) < 0)
        goto done;
    /* ctx.is_write = route.write if route.write is not None else ctx.method not in IDEMPOTENT */
    {
        PyObject *w = aget(route, AR_WRITE), *is_write;
        if (w == NULL)
            goto done;
        if (w != Py_None)
            is_write = w;
        else {
            Py_DECREF(w);
            PyObject *method = aget(ctx, AC_METHOD), *idem = NULL;
            if (method == NULL || (idem = gload(G_IDEMPOTENT)) == NULL) {
                Py_XDECREF(method);
                goto done;
            }
            int c = PySequence_Contains(idem, method);
            Py_DECREF(method);
            Py_DECREF(idem);
            if (c < 0)
                goto done;
            is_write = Py_NewRef(c ? Py_False : Py_True);
        }
        if (aset(ctx, AC_IS_WRITE, is_write) < 0)
            goto done;
    }
    /* ex.max_body = route.max_body */
    if (aset(ex, AE_MAX_BODY, aget(route, AR_MAX_BODY)) < 0)
        goto done;
    /* if ex.declared_len > route.max_body: self._answer(down, ex, 413, f"request body over {route.max_body} bytes") */
    {
        PyObject *dl = aget(ex, AE_DECLARED_LEN), *mb;
        if (dl == NULL)
            goto done;
        if ((mb = aget(route, AR_MAX_BODY)) == NULL) {
            Py_DECREF(dl);
            goto done;
        }
        int gt = PyObject_RichCompareBool(dl, mb, Py_GT);
        Py_DECREF(dl);
        Py_DECREF(mb);
        if (gt < 0)
            goto done;
        if (gt) {
            PyObject *mb2 = aget(route, AR_MAX_BODY), *f = NULL, *msg = NULL;
            if (mb2 != NULL && (f = PyObject_Format(mb2, u_empty)) != NULL)
                msg = PyUnicode_FromFormat("request body over %U bytes", f);
            Py_XDECREF(mb2);
            Py_XDECREF(f);
            if (msg == NULL)
                goto done;
            PyObject *a[5] = {node, down, ex, A.i_413, msg};
            r = callm(A.s_answer, a, 5);
            Py_DECREF(msg);
            goto done;
        }
    }
    /* if ex.expect is not None and (ex.declared_len > 0 or ex.chunked): ex.continue_100() */
    {
        PyObject *expect = aget(ex, AE_EXPECT);
        if (expect == NULL)
            goto done;
        Py_DECREF(expect);
        if (expect != Py_None) {
            PyObject *dl = aget(ex, AE_DECLARED_LEN);
            if (dl == NULL)
                goto done;
            int t = PyObject_RichCompareBool(dl, i_zero, Py_GT);
            Py_DECREF(dl);
            if (t == 0)
                t = truth_drop(aget(ex, AE_CHUNKED));
            if (t < 0)
                goto done;
            if (t) {
                PyObject *a[1] = {ex};
                if (callm(A.s_continue_100, a, 1) < 0)
                    goto done;
            }
        }
    }
    /* ex.start(down.last_active) */
    {
        int own = watch_ok(&A.w[W_START]);
        PyObject *now = aget(down, AD_LAST_ACTIVE);
        if (now == NULL)
            goto done;
        if (own)
            r = act_start(ex, now);
        else {
            PyObject *a[2] = {ex, now};
            r = callm(A.fname[F_START], a, 2);
        }
        Py_DECREF(now);
    }
    goto done;
python:
    {
        PyObject *a[3] = {node, down, ex};
        r = callf(A.fn[F_DISPATCH], a, 3);
    }
done:
    if (inlined && r == 0)
        A.count[C_DISPATCH]++;
    Py_XDECREF(ctx);
    Py_XDECREF(hooks);
    Py_XDECREF(prot);
    Py_XDECREF(snap);
    Py_XDECREF(router);
    Py_XDECREF(route);
    return r;
}

/* cluster.on_start(b), the original */
static int
act_on_start(PyObject *b)
{
    /* b.in_flight += 1; p = b.pool; if p is not None: p.in_flight += 1 */
    if (aincr(b, AB_IN_FLIGHT) < 0)
        return -1;
    PyObject *p = aget(b, AB_POOL);
    if (p == NULL)
        return -1;
    int r = 0;
    if (p != Py_None)
        r = aincr(p, ARP_IN_FLIGHT);
    Py_DECREF(p);
    if (r == 0)
        A.count[C_ON_START]++;
    return r;
}

/* Exchange.start(now), ex an Exchange whose start is the original */
static int
act_start(PyObject *ex, PyObject *now_arg)
{
    PyObject *node = NULL, *ctx = NULL, *now = Py_NewRef(now_arg), *sel = NULL, *tried = NULL, *choice = NULL,
        *pool = NULL, *conn = NULL;
    int r = -1, t, inlined = 0;
    if ((node = aget(ex, AE_NODE)) == NULL || (ctx = aget(ex, AE_CTX)) == NULL)
        goto done;
    if (Py_TYPE(ctx) != A.type[T_CTX]) {
        PyObject *a[2] = {ex, now};
        r = callf(A.fn[F_START], a, 2);   /* (None: Python's assert) */
        goto done;
    }
    inlined = 1;
    /* if not now: now = node.now() */
    if ((t = PyFloat_CheckExact(now) ? PyFloat_AS_DOUBLE(now) != 0.0 : PyObject_IsTrue(now)) < 0)
        goto done;
    if (!t) {
        Py_SETREF(now, node_call0(node, s_now));
        if (now == NULL)
            goto done;
    }
    /* choice = node.selector.pick(ctx, self.tried, now) */
    if ((sel = node_attr(node, A.s_selector)) == NULL || (tried = aget(ex, AE_TRIED)) == NULL)
        goto done;
    {
        PyObject *a[4] = {sel, ctx, tried, now};
        if ((choice = PyObject_VectorcallMethod(A.s_pick, a, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)) == NULL)
            goto done;
    }
    /* isinstance(choice, tuple) */
    if ((t = PyTuple_CheckExact(choice) ? 1 : Py_TYPE(choice) == A.type[T_BACKEND] ? 0
             : PyObject_IsInstance(choice, (PyObject *)&PyTuple_Type)) < 0)
        goto done;
    if (t) {
        /* status, reason = self.last_failure or choice; self.down.fail_request(self, status, reason) */
        PyObject *lf = aget(ex, AE_LAST_FAILURE), *sr[2], *down;
        if (lf == NULL)
            goto done;
        if ((t = lf == Py_None ? 0 : PyObject_IsTrue(lf)) < 0) {
            Py_DECREF(lf);
            goto done;
        }
        t = unpack(t ? lf : choice, 2, sr);
        Py_DECREF(lf);
        if (t < 0)
            goto done;
        if ((down = aget(ex, AE_DOWN)) != NULL) {
            PyObject *a[4] = {down, ex, sr[0], sr[1]};
            r = callm(A.s_fail_request, a, 4);
            Py_DECREF(down);
        }
        Py_DECREF(sr[0]);
        Py_DECREF(sr[1]);
        goto done;
    }
    PyObject *backend = choice;
    /* self.backend = backend; self.tried.add(backend.id); ctx.backend = backend.id; ctx.region = backend.region */
    if (aset(ex, AE_BACKEND, Py_NewRef(backend)) < 0)
        goto done;
    Py_SETREF(tried, aget(ex, AE_TRIED));
    if (tried == NULL)
        goto done;
    {
        PyObject *id = aget(backend, AB_ID);
        if (id == NULL)
            goto done;
        t = set_add(tried, id);
        Py_DECREF(id);
        if (t < 0)
            goto done;
    }
    if (aset(ctx, AC_BACKEND, aget(backend, AB_ID)) < 0 || aset(ctx, AC_REGION, aget(backend, AB_REGION)) < 0)
        goto done;
    /* pool = node.pools.get(backend.id) or node.pool_for(backend) */
    {
        PyObject *pools = node_attr(node, A.s_pools), *id;
        if (pools == NULL)
            goto done;
        if ((id = aget(backend, AB_ID)) == NULL) {
            Py_DECREF(pools);
            goto done;
        }
        if (PyDict_CheckExact(pools)) {
            pool = PyDict_GetItemWithError(pools, id);
            if (pool == NULL && !PyErr_Occurred())
                pool = Py_None;
            Py_XINCREF(pool);
        } else {
            PyObject *a[2] = {pools, id};
            pool = PyObject_VectorcallMethod(A.s_get, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        }
        Py_DECREF(pools);
        Py_DECREF(id);
        if (pool == NULL)
            goto done;
        if ((t = pool == Py_None ? 0 : PyObject_IsTrue(pool)) < 0)
            goto done;
        if (!t) {
            PyObject *a[2] = {node, backend};
            Py_SETREF(pool, PyObject_VectorcallMethod(A.s_pool_for, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
            if (pool == NULL)
                goto done;
        }
    }
    /* self.pool = pool; self.attempt_start = now; if ctx.upstream_start == 0.0: ctx.upstream_start = now */
    if (aset(ex, AE_POOL, Py_NewRef(pool)) < 0 || aset(ex, AE_ATTEMPT_START, Py_NewRef(now)) < 0)
        goto done;
    {
        PyObject *us = aget(ctx, AC_UPSTREAM_START);
        if (us == NULL)
            goto done;
        t = PyFloat_CheckExact(us) ? PyFloat_AS_DOUBLE(us) == 0.0 : PyObject_RichCompareBool(us, f_zero, Py_EQ);
        Py_DECREF(us);
        if (t < 0 || (t && aset(ctx, AC_UPSTREAM_START, Py_NewRef(now)) < 0))
            goto done;
    }
    /* on_start(backend) */
    {
        PyObject *os = gload(G_ON_START);
        if (os == NULL)
            goto done;
        if (os == A.fn[F_ON_START])
            t = act_on_start(backend);
        else {
            PyObject *a[1] = {backend};
            t = callf(os, a, 1);
        }
        Py_DECREF(os);
        if (t < 0)
            goto done;
    }
    /* self.accounted = False */
    if (aset(ex, AE_ACCOUNTED, Py_NewRef(Py_False)) < 0)
        goto done;
    /* fresh_only = ctx.retries > 0 and self.reused */
    {
        PyObject *rt = aget(ctx, AC_RETRIES);
        if (rt == NULL)
            goto done;
        t = PyObject_RichCompareBool(rt, i_zero, Py_GT);
        Py_DECREF(rt);
        if (t > 0)
            t = truth_drop(aget(ex, AE_REUSED));
        if (t < 0)
            goto done;
    }
    /* conn = None if fresh_only else pool.take_idle(now) */
    if (t)
        conn = Py_NewRef(Py_None);
    else if (Py_TYPE(pool) == A.type[T_POOL] && watch_ok(&A.w[W_POOL]))
        conn = act_take_idle(pool, now);
    else {
        PyObject *a[2] = {pool, now};
        conn = PyObject_VectorcallMethod(A.fname[F_TAKE_IDLE], a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (conn == NULL)
        goto done;
    /* self.reused = conn is not None */
    if (aset(ex, AE_REUSED, Py_NewRef(conn != Py_None ? Py_True : Py_False)) < 0)
        goto done;
    if (conn != Py_None) {
        /* self._attach(conn, now) */
        if (watch_ok(&A.w[W_ATTACH]))
            r = act_attach(ex, conn, now);
        else {
            PyObject *a[3] = {ex, conn, now};
            r = callm(A.fname[F_ATTACH], a, 3);
        }
        goto done;
    }
    /* self.state = CONNECTING; node.loop.create_task(self._connect(pool)) */
    {
        PyObject *connecting = gload(G_CONNECTING), *loop, *ct, *coro;
        if (connecting == NULL || aset(ex, AE_STATE, connecting) < 0)
            goto done;
        if ((loop = node_attr(node, A.s_loop)) == NULL)
            goto done;
        ct = PyObject_GetAttr(loop, A.s_create_task);
        Py_DECREF(loop);
        if (ct == NULL)
            goto done;
        PyObject *a[2] = {ex, pool};
        coro = PyObject_VectorcallMethod(A.s_connect, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (coro != NULL) {
            PyObject *b[1] = {coro};
            r = callf(ct, b, 1);
            Py_DECREF(coro);
        }
        Py_DECREF(ct);
    }
done:
    if (inlined && r == 0)
        A.count[C_START]++;
    Py_XDECREF(node);
    Py_XDECREF(ctx);
    Py_XDECREF(now);
    Py_XDECREF(sel);
    Py_XDECREF(tried);
    Py_XDECREF(choice);
    Py_XDECREF(pool);
    Py_XDECREF(conn);
    return r;
}

/* UpstreamConnection.usable(), conn one whose usable is the original: 1, 0, -1 */
static int
act_usable(PyObject *conn)
{
    /* not (self.closed or self.eof or self.transport is None or self.transport.is_closing()) */
    int t = truth_drop(aget(conn, AU_CLOSED));
    if (t == 0)
        t = truth_drop(aget(conn, AU_EOF));
    if (t == 0) {
        PyObject *tr = aget(conn, AU_TRANSPORT);
        if (tr == NULL)
            return -1;
        if (tr == Py_None)
            t = 1;
        else {
            Py_SETREF(tr, aget(conn, AU_TRANSPORT));
            if (tr == NULL)
                return -1;
            PyObject *a[1] = {tr};
            t = truth_drop(PyObject_VectorcallMethod(A.s_is_closing, a, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
        }
        Py_DECREF(tr);
    }
    if (t < 0)
        return -1;
    A.count[C_USABLE]++;
    return !t;
}

/* BackendPool.take_idle(now), pool one whose take_idle is the original: the
 * connection or None, owned; NULL on an error */
static PyObject *
act_take_idle(PyObject *pool, PyObject *now)
{
    PyObject *idle = aget(pool, AP_IDLE);
    if (idle == NULL)
        return NULL;
    PyObject *r = NULL;
    for (;;) {
        /* while idle: conn = idle.pop() */
        int t = PyObject_IsTrue(idle);
        if (t < 0)
            goto done;
        if (!t)
            break;
        PyObject *a[1] = {idle};
        PyObject *conn = PyObject_VectorcallMethod(A.s_pop, a, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (conn == NULL)
            goto done;
        /* if conn.usable() and (now - conn.idle_since < STALE_CHECK_AFTER_S or not conn.peer_closed()) */
        if (Py_TYPE(conn) == A.type[T_CONN] && watch_ok(&A.w[W_CONN]))
            t = act_usable(conn);
        else {
            PyObject *b[1] = {conn};
            t = truth_drop(PyObject_VectorcallMethod(A.fname[F_USABLE], b, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
        }
        if (t > 0) {
            PyObject *since = aget(conn, AU_IDLE_SINCE), *stale = NULL;
            if (since == NULL || (stale = gload(G_STALE)) == NULL)
                t = -1;
            else if (PyFloat_CheckExact(now) && PyFloat_CheckExact(since) && PyFloat_CheckExact(stale))
                t = PyFloat_AS_DOUBLE(now) - PyFloat_AS_DOUBLE(since) < PyFloat_AS_DOUBLE(stale);
            else {
                PyObject *d = PyNumber_Subtract(now, since);
                t = d == NULL ? -1 : PyObject_RichCompareBool(d, stale, Py_LT);
                Py_XDECREF(d);
            }
            Py_XDECREF(since);
            Py_XDECREF(stale);
            if (t == 0) {
                PyObject *b[1] = {conn};
                t = truth_drop(PyObject_VectorcallMethod(A.s_peer_closed, b, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
                if (t >= 0)
                    t = !t;
            }
        }
        if (t < 0) {
            Py_DECREF(conn);
            goto done;
        }
        if (t) {
            /* self.busy.add(conn); self.reused += 1; return conn */
            PyObject *busy = aget(pool, AP_BUSY);
            if (busy == NULL || set_add(busy, conn) < 0 || aincr(pool, AP_REUSED) < 0) {
                Py_XDECREF(busy);
                Py_DECREF(conn);
                goto done;
            }
            Py_DECREF(busy);
            r = conn;
            goto counted;
        }
        /* conn.close() */
        PyObject *b[1] = {conn};
        t = callm(A.s_close, b, 1);
        Py_DECREF(conn);
        if (t < 0)
            goto done;
    }
    r = Py_NewRef(Py_None);
counted:
    A.count[C_TAKE_IDLE]++;
done:
    Py_DECREF(idle);
    return r;
}

/* Exchange._attach(conn, now), ex an Exchange whose _attach is the original */
static int
act_attach(PyObject *ex, PyObject *conn, PyObject *now)
{
    PyObject *down = SLOT(ex, A.off[AE_DOWN]), *pb = SLOT(ex, A.off[AE_PENDING_BODY]);
    PyObject *sent = gget(G_SENT), *unfed = gget(G_UNFED);
    if (Py_TYPE(conn) != A.type[T_CONN] || !layout_ok(T_CONN) || !layout_ok(T_EX) || !layout_ok(T_DOWN)
        || SLOT(conn, A.off[AU_TRANSPORT]) == NULL
        || SLOT(conn, A.off[AU_TRANSPORT]) == Py_None || SLOT(ex, A.off[AE_HOST_MISSING]) != Py_False
        || down == NULL || Py_TYPE(down) != A.type[T_DOWN] || SLOT(down, A.off[AD_WRITE_PAUSED]) != Py_False
        || pb == NULL || !PyList_CheckExact(pb) || PyList_GET_SIZE(pb) != 0 || sent == NULL || unfed == NULL) {
        PyObject *a[3] = {ex, conn, now};
        return callf(A.fn[F_ATTACH], a, 3);
    }
    Py_INCREF(sent);
    Py_INCREF(unfed);
    /* self.up = conn; conn.exchange = self; self.state = SENT; self.resp_parser = UNFED */
    if (aset(ex, AE_UP, Py_NewRef(conn)) < 0 || aset(conn, AU_EXCHANGE, Py_NewRef(ex)) < 0
        || aset(ex, AE_STATE, sent) < 0 || aset(ex, AE_RESP_PARSER, unfed) < 0)
        return -1;
    /* t = conn.transport; (no Host to add, the client reading, no body held:) t.write(self.req_head) */
    PyObject *t = aget(conn, AU_TRANSPORT), *head;
    if (t == NULL)
        return -1;
    if ((head = aget(ex, AE_REQ_HEAD)) == NULL) {
        Py_DECREF(t);
        return -1;
    }
    PyObject *a[2] = {t, head};
    int r = callm(A.s_write, a, 2);
    Py_DECREF(t);
    Py_DECREF(head);
    if (r < 0)
        return -1;
    /* if self.body_complete or self.want_upgrade: self._arm_response_timer(now) */
    int c = truth_drop(aget(ex, AE_BODY_COMPLETE));
    if (c == 0)
        c = truth_drop(aget(ex, AE_WANT_UPGRADE));
    if (c < 0)
        return -1;
    if (c) {
        if (watch_ok(&A.w[W_ARM]))
            r = act_arm(ex, now);
        else {
            PyObject *b[2] = {ex, now};
            r = callm(A.fname[F_ARM], b, 2);
        }
    }
    if (r == 0)
        A.count[C_ATTACH]++;
    return r;
}

/* Exchange._arm_response_timer(now), ex an Exchange whose method is the original */
static int
act_arm(PyObject *ex, PyObject *now_arg)
{
    /* node = self.node; self.timer = (now or node.now()) + node.snapshot.response_timeout_s */
    PyObject *node = aget(ex, AE_NODE), *now = NULL, *snap = NULL, *rt = NULL, *timer = NULL, *dl = NULL;
    int r = -1, t;
    if (node == NULL)
        return -1;
    if ((t = PyFloat_CheckExact(now_arg) ? PyFloat_AS_DOUBLE(now_arg) != 0.0 : PyObject_IsTrue(now_arg)) < 0)
        goto done;
    if ((now = t ? Py_NewRef(now_arg) : node_call0(node, s_now)) == NULL
        || (snap = node_attr(node, s_snapshot)) == NULL || (rt = snap_attr(snap, 1)) == NULL)
        goto done;
    if (PyFloat_CheckExact(now) && PyFloat_CheckExact(rt))
        timer = PyFloat_FromDouble(PyFloat_AS_DOUBLE(now) + PyFloat_AS_DOUBLE(rt));
    else
        timer = PyNumber_Add(now, rt);
    if (aset(ex, AE_TIMER, timer) < 0)
        goto done;
    /* node.deadlines.add(self) */
    if ((dl = node_attr(node, A.s_deadlines)) == NULL || set_add(dl, ex) < 0)
        goto done;
    A.count[C_ARM]++;
    r = 0;
done:
    Py_DECREF(node);
    Py_XDECREF(now);
    Py_XDECREF(snap);
    Py_XDECREF(rt);
    Py_XDECREF(dl);
    return r;
}

/* self._activate(ex, parsing=True), from on_headers_complete */
static PyObject *
activate(PyObject *self, PyObject *ex)
{
    if (A.ready && A.enabled && Py_TYPE(self) == A.type[T_DOWN] && watch_ok(&A.w[W_DOWN]) && layout_ok(T_DOWN)
        && A.type[T_DOWN]->tp_setattro == PyObject_GenericSetAttr)
        return act_activate(self, ex) < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *b[3] = {self, ex, Py_True};   /* as Python calls it */
    return PyObject_VectorcallMethod(s_activate, b, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, kw_parsing);
}

/* setup_activate(Downstream, Exchange, RequestContext, BackendState, BackendPool,
 *                UpstreamConnection, Route, RegionPool, Snapshot, functions): functions, the
 * originals of Downstream._activate, Node.dispatch, Exchange.start,
 * Exchange._attach, Exchange._arm_response_timer, BackendPool.take_idle,
 * UpstreamConnection.usable and cluster.on_start */
static PyObject *
setup_activate(PyObject *module, PyObject *args)
{
    PyObject *types[N_T], *snap_type, *fns;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!O!O!O!:setup_activate", &PyType_Type, &types[T_DOWN], &PyType_Type,
                          &types[T_EX], &PyType_Type, &types[T_CTX], &PyType_Type, &types[T_BACKEND],
                          &PyType_Type, &types[T_POOL], &PyType_Type, &types[T_CONN], &PyType_Type,
                          &types[T_ROUTE], &PyType_Type, &types[T_RPOOL], &PyType_Type, &snap_type,
                          &PyTuple_Type, &fns))
        return NULL;
    if (!S.ready || (PyTypeObject *)types[T_DOWN] != S.down_type || (PyTypeObject *)types[T_EX] != S.ex_type) {
        PyErr_SetString(PyExc_RuntimeError, "setup_activate: call setup_down() first, with the same classes");
        return NULL;
    }
    if (PyTuple_GET_SIZE(fns) != N_FN) {
        PyErr_SetString(PyExc_TypeError, "setup_activate: 8 functions");
        return NULL;
    }
    for (int i = 0; i < N_FN; i++)
        if (!PyFunction_Check(PyTuple_GET_ITEM(fns, i))) {
            PyErr_Format(PyExc_TypeError, "setup_activate: %s is not a Python function", fn_names[i]);
            return NULL;
        }
    for (int i = 0; i < N_T; i++)
        if (((PyTypeObject *)types[i])->tp_dictoffset != 0) {
            PyErr_Format(PyExc_TypeError, "setup_activate: %s has a __dict__", ((PyTypeObject *)types[i])->tp_name);
            return NULL;
        }
    Py_ssize_t off[N_A];
    for (int i = 0; i < N_A; i++)
        if (slot_offset((PyTypeObject *)types[a_defs[i].type], a_defs[i].name, &off[i]) < 0)
            return NULL;
    A.ready = 0;
    for (int i = 0; i < N_A; i++) {
        A.off[i] = off[i];
        if (A.name[i] == NULL && (A.name[i] = PyUnicode_InternFromString(a_defs[i].name)) == NULL)
            return NULL;
    }
    for (int i = 0; i < N_T; i++) {
        Py_XSETREF(A.type[i], (PyTypeObject *)Py_NewRef(types[i]));
        A.layout_tag[i] = 0;
    }
    for (int i = 0; i < N_A; i++) {
        PyObject *d = PyDict_GetItemWithError(A.type[a_defs[i].type]->tp_dict, A.name[i]);   /* (slot_offset found it) */
        if (d == NULL)
            return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "setup_activate: %s", a_defs[i].name);
        Py_XSETREF(A.descr[i], Py_NewRef(d));
    }
    Py_XSETREF(A.snap_type, (PyTypeObject *)Py_NewRef(snap_type));
    for (int i = 0; i < N_FN; i++) {
        if (A.fname[i] == NULL && (A.fname[i] = PyUnicode_InternFromString(fn_names[i])) == NULL)
            return NULL;
        Py_XSETREF(A.fn[i], Py_NewRef(PyTuple_GET_ITEM(fns, i)));
    }
    static const struct { int w, t, n, f[1]; } wd[N_W] = {
        {W_DOWN, T_DOWN, 1, {F_ACTIVATE}}, {W_START, T_EX, 1, {F_START}}, {W_ATTACH, T_EX, 1, {F_ATTACH}},
        {W_ARM, T_EX, 1, {F_ARM}},
        {W_POOL, T_POOL, 1, {F_TAKE_IDLE}}, {W_CONN, T_CONN, 1, {F_USABLE}}};
    for (int i = 0; i < N_W; i++) {
        Watch *w = &A.w[wd[i].w];
        w->type = A.type[wd[i].t];
        w->tag = 0;
        w->n = wd[i].n;
        for (int k = 0; k < w->n; k++) {
            w->names[k] = A.fname[wd[i].f[k]];
            w->funcs[k] = A.fn[wd[i].f[k]];
        }
        if (!watch_ok(w)) {
            PyErr_Format(PyExc_TypeError, "setup_activate: %s does not hold the functions given", w->type->tp_name);
            return NULL;
        }
    }
    for (int i = 0; i < N_G; i++) {
        if (G[i].name == NULL && (G[i].name = PyUnicode_InternFromString(g_defs[i].name)) == NULL)
            return NULL;
        G[i].dict = NULL;
    }
    Py_CLEAR(A.last_snap);
    Py_CLEAR(A.last_router);
    Py_CLEAR(A.last_timeout);
    A.enabled = 1;
    A.ready = 1;
    Py_RETURN_NONE;
}

/* set_activate(on): the C above on (True, the default) or off (the Python
 * _activate always: for the tests, to compare); the previous setting */
static PyObject *
set_activate(PyObject *module, PyObject *on)
{
    int t = PyObject_IsTrue(on);
    if (t < 0)
        return NULL;
    PyObject *was = PyBool_FromLong(A.enabled);
    A.enabled = t;
    return was;
}

static PyObject *
activate_counts(PyObject *module, PyObject *unused)
{
    PyObject *d = PyDict_New();
    static const char *names[N_C] = {"_activate", "dispatch", "start", "take_idle", "usable", "_attach",
                                     "_arm_response_timer", "on_start"};
    for (int i = 0; d != NULL && i < N_C; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(A.count[i]);
        if (v == NULL || PyDict_SetItemString(d, names[i], v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

static PyMethodDef methods[] = {
    {"setup_node_slots", setup_node_slots, METH_O, "setup_node_slots(Node): its slots read by offset."},
    {"setup_down", setup_down, METH_VARARGS,
     "setup_down(Downstream, Exchange, globals, WAITING, py_on_url, py_on_message_begin, "
     "py_on_headers_complete, py_on_message_complete): the four C callbacks, as methods of Downstream."},
    {"setup_node", setup_node, METH_VARARGS,
     "setup_node(Node, globals, py_head_complete, next_request_id, count_type, RequestContext, template, "
     "stand_ins): the C Node.head_complete."},
    {"setup_fast", setup_fast, METH_VARARGS,
     "setup_fast(Downstream, PARSING, SPECIAL, FEED_SLICE, py_data_received[, Limits]): the C "
     "Downstream.data_received (with Limits, whose frozen values it keeps per object)."},
    {"setup_activate", setup_activate, METH_VARARGS,
     "setup_activate(Downstream, Exchange, RequestContext, BackendState, BackendPool, UpstreamConnection, "
     "Route, RegionPool, Snapshot, functions): Downstream._activate and what it calls in C, from on_headers_complete."},
    {"set_activate", set_activate, METH_O,
     "set_activate(on): the C _activate on or off (for the tests); the previous setting."},
    {"activate_counts", activate_counts, METH_NOARGS,
     "activate_counts(): how often each method was done in C (for the tests)."},
    {"scan", scan, METH_O, "scan(data): what the fast path makes of a request head, or None (for the tests)."},
    {"fast_count", fast_count, METH_NOARGS, "fast_count(): heads the fast path has taken (for the tests)."},
    {"new_context", (PyCFunction)(void (*)(void))new_context, METH_FASTCALL,
     "new_context(*12 args): RequestContext(...) from the template (for the tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_request", "The request head's completion in C (see _request.c).", -1, methods,
};

static int
intern(PyObject **p, const char *s)
{
    return (*p = PyUnicode_InternFromString(s)) == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__request(void)
{
    if (intern(&s_new_exchange, "_new_exchange") < 0 || intern(&s_max_request_line, "max_request_line") < 0
        || intern(&s_get_http_version, "get_http_version") < 0 || intern(&s_get_method, "get_method") < 0
        || intern(&s_should_keep_alive, "should_keep_alive") < 0 || intern(&s_head_complete, "head_complete") < 0
        || intern(&s_activate, "_activate") < 0 || intern(&s_append, "append") < 0
        || intern(&s_pause_reading, "pause_reading") < 0 || intern(&s_pipelined, "pipelined") < 0
        || intern(&s_request_done, "request_done") < 0 || intern(&s_SENT, "SENT") < 0 || intern(&s_decode, "decode") < 0
        || intern(&s_partition, "partition") < 0 || intern(&s_encode, "encode") < 0
        || intern(&s_latin1, "latin-1") < 0 || intern(&s_check_head, "check_head") < 0
        || intern(&s_split_host, "split_host") < 0 || intern(&s_request_context, "RequestContext") < 0
        || intern(&s_build_upstream_head, "build_upstream_head") < 0
        || intern(&s_next_request_id, "next_request_id") < 0 || intern(&s_id_prefix, "_id_prefix") < 0
        || intern(&s_ids, "_ids") < 0 || intern(&s_started, "started") < 0 || intern(&s_hooks, "hooks") < 0
        || intern(&s_header_actions, "header_actions") < 0 || intern(&s_forward_headers, "forward_headers") < 0
        || intern(&s_name, "name") < 0 || intern(&s_scheme, "scheme") < 0
        || intern(&s_client_from_xff, "client_from_xff") < 0 || intern(&s_snapshot, "snapshot") < 0
        || intern(&s_is_trusted_proxy, "is_trusted_proxy") < 0 || intern(&s_geo_lookup, "geo_lookup") < 0
        || intern(&s_init, "__init__") < 0
        || intern(&s_slots, "__slots__") < 0 || intern(&u_empty, "") < 0 || intern(&s_now, "now") < 0
        || intern(&s_callback_failed, "_callback_failed") < 0
        || intern(&s_max_headers, "max_headers") < 0 || intern(&s_max_header_bytes, "max_header_bytes") < 0 || intern(&F.version, "1.1") < 0
        || intern(&F.get, "GET") < 0 || intern(&F.head, "HEAD") < 0)
        return NULL;
    if ((kw_parsing = Py_BuildValue("(s)", "parsing")) == NULL || (f_zero = PyFloat_FromDouble(0.0)) == NULL
        || (i_zero = PyLong_FromLong(0)) == NULL || (i_one = PyLong_FromLong(1)) == NULL
        || (b_question = PyBytes_FromString("?")) == NULL || (b_via = PyBytes_FromString("1.1 novaedge")) == NULL)
        return NULL;
    struct { PyObject **p; const char *s; } act_names[] = {
        {&A.s_hooks, "hooks"},
        {&A.s_protect_active, "protect_active"}, {&A.s_router, "router"}, {&A.s_every, "every"},
        {&A.s_response_timeout_s, "response_timeout_s"}, {&A.s_selector, "selector"}, {&A.s_pick, "pick"},
        {&A.s_fail_request, "fail_request"}, {&A.s_pools, "pools"}, {&A.s_get, "get"},
        {&A.s_pool_for, "pool_for"}, {&A.s_add, "add"}, {&A.s_loop, "loop"},
        {&A.s_create_task, "create_task"}, {&A.s_connect, "_connect"}, {&A.s_pop, "pop"},
        {&A.s_is_closing, "is_closing"}, {&A.s_peer_closed, "peer_closed"}, {&A.s_close, "close"},
        {&A.s_write, "write"}, {&A.s_deadlines, "deadlines"}, {&A.s_answer, "_answer"},
        {&A.s_continue_100, "continue_100"}};
    for (size_t i = 0; i < sizeof act_names / sizeof *act_names; i++)
        if (intern(act_names[i].p, act_names[i].s) < 0)
            return NULL;
    if ((A.i_413 = PyLong_FromLong(413)) == NULL)
        return NULL;
    init_classes();
    return PyModule_Create(&module);
}
