/* proxy._response: the response parser callbacks of Exchange in C
 * (on_message_begin, on_status, on_headers_complete with its _render_head,
 * on_body, on_message_complete; on_header is proxy/_hotpath.c's).
 *
 * Why C: httptools calls these for every response from a backend; in Python
 * they cost ~1.5 us a request (mostly the interpreter's overhead of small
 * methods: on_headers_complete and _render_head alone ~1 us).
 *
 * Contract: each is its Python method (proxy/exchange.py, kept as
 * Exchange._<name>_py, the reference) for the common case, and hands
 * everything else to that method before anything is changed:
 *   - an exchange of a subclass, a slot of an unexpected type (each flag must
 *     be an exact bool, each count an exact int, ...), a parser that is not
 *     an httptools.HttpResponseParser (or feed_fast's stand-in, below), a
 *     context that is not a RequestContext;
 *   - on_message_begin / on_headers_complete after the response was complete
 *     (Python raises _ExtraResponse); on_body on a HEAD/204/304 response
 *     (Python closes the connection);
 *   - on_headers_complete of an interim (1xx) or 101 response; of a head
 *     whose fields the C response_fields (proxy/_hotpath.c) leaves to Python
 *     (a Connection field naming end-to-end fields...); with an
 *     X-NovaEdge-Decision wanted (trusted peer or debug_headers); when
 *     Exchange._render_head or Exchange._clear_timer are not the functions
 *     this was set up with, or exchange._response_fields is not the C one.
 * In the common case on_headers_complete computes the head from the state
 * as it finds it, then changes the exchange and its context in the order the
 * Python method does, calling the parser's get_status_code() and
 * should_keep_alive() and down.keep_alive_after(ex) (inlined only once
 * setup_down() has seen Downstream and while its method is the one seen).
 * tests/unit/test_response_callbacks.py feeds both versions the same
 * responses through httptools and compares the bytes and the state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <stdio.h>

#include "_slots.h"
#include "_heads.h"

enum { E_RESP_COMPLETE, E_RESP_REASON, E_RESP_STATUS, E_RESP_PARSER, E_RESP_HEAD_BYTES, E_TIMER,
       E_CTX, E_LAST_READ, E_RESP_KEEP_ALIVE, E_RESP_NO_BODY, E_RESP_HEADERS, E_NODE, E_DOWN,
       E_VERSION, E_RESP_CLOSE_DELIMITED, E_RESP_OUT_CHUNKED, E_RESP_CLOSE_AFTER, E_BODY_COMPLETE,
       E_OUT, E_RESP_HEAD_SENT, E_HEAD_UNFLUSHED, E_KEEP_ALIVE, N_EX };
static const char *ex_names[N_EX] = {
    "resp_complete", "resp_reason", "resp_status", "resp_parser", "resp_head_bytes", "timer",
    "ctx", "last_read", "resp_keep_alive", "resp_no_body", "resp_headers", "node", "down",
    "version", "resp_close_delimited", "resp_out_chunked", "resp_close_after", "body_complete",
    "out", "resp_head_sent", "head_unflushed", "keep_alive"};

enum { C_STATUS, C_UPSTREAM_HEADERS_AT, C_METHOD, C_REQUEST_ID, C_BYTES_OUT, N_CTX };
static const char *ctx_names[N_CTX] = {"status", "upstream_headers_at", "method", "request_id", "bytes_out"};

/* the Python methods, by index */
enum { P_BEGIN, P_STATUS, P_HEADERS, P_BODY, P_COMPLETE, N_PY };

static struct {
    int ready;
    PyTypeObject *ex_type, *ctx_type, *parser_type;
    Py_ssize_t off[N_EX], coff[N_CTX];
    PyObject *py[N_PY];        /* Exchange._on_*_py */
    PyObject *globals;         /* proxy.exchange's namespace: _response_fields, REASONS */
    PyObject *fields;          /* proxy._hotpath.response_fields */
    PyObject *render_head;     /* Exchange._render_head */
    PyObject *clear_timer;     /* Exchange._clear_timer */
    PyObject *zero, *zero_float, *i500, *empty_bytes;
    PyObject *responding_obj, *done_obj;   /* Exchange.state's RESPONDING and DONE (setup_read) */
    PyObject *desc[N_PY];      /* the method descriptors setup() made, as Exchange holds them */
    PyObject *on_header;       /* Exchange's on_header when it is a C fast-call method (owned), or NULL */
    unsigned int tag;          /* Exchange's version tag when they were last found there; 0 none */
} S;

static PyTypeObject ParsedType;   /* feed_fast's stand-in parser (below) */
static PyObject *parsed_status_of(PyObject *parsed);

/* Downstream, for keep_alive_after inlined (setup_down) */
static struct {
    int ready;
    PyTypeObject *type;
    Py_ssize_t closing, node, trusted_peer;
    PyObject *keep_alive_after;
} D;

static PyObject *s_get_status_code, *s_should_keep_alive, *s_via_header, *s_snapshot, *s_config,
    *s_debug_headers, *s_deadlines, *s_discard, *s_trusted_peer, *s_keep_alive_after, *s_draining,
    *s_fields_name, *s_reasons, *s_render_head, *s_clear_timer, *s_append, *s_resp_no_body, *s_down;


#define EX(ex, i) SLOT(ex, S.off[i])
#define CTX(ctx, i) SLOT(ctx, S.coff[i])


static int
is_bool(PyObject *o)
{
    return o == Py_True || o == Py_False;
}

static PyObject *
py_call(int which, PyObject *ex, PyObject *arg)
{
    PyObject *args[2] = {ex, arg};
    return PyObject_Vectorcall(S.py[which], args, arg == NULL ? 1 : 2, NULL);
}

/* -- on_message_begin, on_status, on_message_complete ------------------------ */

static PyObject *
on_message_begin(PyObject *ex, PyObject *unused)
{
    if (!S.ready || Py_TYPE(ex) != S.ex_type || EX(ex, E_RESP_COMPLETE) != Py_False)
        return py_call(P_BEGIN, ex, NULL);   /* True: it raises _ExtraResponse */
    Py_RETURN_NONE;
}

static PyObject *
on_status(PyObject *ex, PyObject *reason)
{
    if (!S.ready || Py_TYPE(ex) != S.ex_type || !PyBytes_CheckExact(reason))
        return py_call(P_STATUS, ex, reason);
    PyObject *have = EX(ex, E_RESP_REASON);
    if (have == NULL || !PyBytes_CheckExact(have))
        return py_call(P_STATUS, ex, reason);
    PyObject *joined = PyNumber_InPlaceAdd(have, reason);   /* `+=` on bytes */
    if (joined == NULL)
        return NULL;
    slot_put(ex, S.off[E_RESP_REASON], joined);
    Py_DECREF(joined);
    Py_RETURN_NONE;
}

static PyObject *
on_message_complete(PyObject *ex, PyObject *unused)
{
    if (!S.ready || Py_TYPE(ex) != S.ex_type)
        return py_call(P_COMPLETE, ex, NULL);
    PyObject *st = EX(ex, E_RESP_STATUS);
    if (st == NULL || !PyLong_CheckExact(st))
        return py_call(P_COMPLETE, ex, NULL);
    int overflow;
    long status = PyLong_AsLongAndOverflow(st, &overflow);
    if (overflow == 0 && status == -1 && PyErr_Occurred())
        return NULL;
    if (overflow > 0 || status >= 200 || (overflow == 0 && status == 0))
        slot_put(ex, S.off[E_RESP_COMPLETE], Py_True);
    Py_RETURN_NONE;
}

/* -- on_body ----------------------------------------------------------------- */

static PyObject *
on_body(PyObject *ex, PyObject *body)
{
    if (!S.ready || Py_TYPE(ex) != S.ex_type || !PyBytes_CheckExact(body))
        return py_call(P_BODY, ex, body);
    Py_ssize_t n = PyBytes_GET_SIZE(body);
    if (n == 0)
        Py_RETURN_NONE;
    PyObject *ctx = EX(ex, E_CTX), *chunked = EX(ex, E_RESP_OUT_CHUNKED), *out = EX(ex, E_OUT);
    if (EX(ex, E_RESP_NO_BODY) != Py_False || ctx == NULL || Py_TYPE(ctx) != S.ctx_type
        || chunked == NULL || !is_bool(chunked) || out == NULL || !PyList_CheckExact(out))
        return py_call(P_BODY, ex, body);   /* a body on HEAD/204/304: Python drops the connection */
    PyObject *have = CTX(ctx, C_BYTES_OUT);
    if (have == NULL || !PyLong_CheckExact(have))
        return py_call(P_BODY, ex, body);
    PyObject *len = PyLong_FromSsize_t(n);
    if (len == NULL)
        return NULL;
    PyObject *total = PyNumber_Add(have, len);
    Py_DECREF(len);
    if (total == NULL)
        return NULL;
    PyObject *piece;
    if (chunked == Py_True) {
        char size[32];
        int k = snprintf(size, sizeof(size), "%zx\r\n", n);
        piece = PyBytes_FromStringAndSize(NULL, k + n + 2);
        if (piece == NULL) {
            Py_DECREF(total);
            return NULL;
        }
        char *p = PyBytes_AS_STRING(piece);
        memcpy(p, size, k);
        memcpy(p + k, PyBytes_AS_STRING(body), n);
        memcpy(p + k + n, "\r\n", 2);
    } else {
        piece = Py_NewRef(body);
    }
    Py_INCREF(out);   /* own the list across the changes */
    slot_put(ctx, S.coff[C_BYTES_OUT], total);
    Py_DECREF(total);
    int r = PyList_Append(out, piece);
    Py_DECREF(piece);
    Py_DECREF(out);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* -- on_headers_complete ------------------------------------------------------- */

typedef struct {
    PyObject *f[N_EX];        /* the exchange's slots, owned */
    PyObject *status, *keep, *via, *fields, *reason, *rid, *method, *deadlines;   /* owned */
    long st;
    int client_11, no_body, chunked, has_cl;
} Head;

static void
head_clear(Head *h)
{
    for (int i = 0; i < N_EX; i++)
        Py_CLEAR(h->f[i]);
    Py_CLEAR(h->status);
    Py_CLEAR(h->keep);
    Py_CLEAR(h->via);
    Py_CLEAR(h->fields);
    Py_CLEAR(h->reason);
    Py_CLEAR(h->rid);
    Py_CLEAR(h->method);
    Py_CLEAR(h->deadlines);
}

static int
str_is(PyObject *o, const char *s, Py_ssize_t n)
{
    return PyUnicode_CheckExact(o) && PyUnicode_IS_COMPACT_ASCII(o) && PyUnicode_GET_LENGTH(o) == n
        && memcmp(PyUnicode_1BYTE_DATA(o), s, n) == 0;
}

/* attr must be exactly False: 1 yes, 0 no (Python's path), -1 error */
static int
attr_is_false(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = v == Py_False;
    Py_DECREF(v);
    return r;
}

/* Read and check everything the common case needs, changing nothing (the
 * reads are of slots and plain attributes, and the parser's getters):
 * 1 it is the common case (h filled), 0 it is not, -1 an error (both: Python's method). */
static int
head_prepare(PyObject *ex, Head *h)
{
    PyObject *d = S.ex_type->tp_dict;
    if (PyDict_GetItemWithError(d, s_render_head) != S.render_head
        || PyDict_GetItemWithError(d, s_clear_timer) != S.clear_timer)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *fields_fn = PyDict_GetItemWithError(S.globals, s_fields_name);
    if (fields_fn != S.fields)
        return PyErr_Occurred() ? -1 : 0;
    for (int i = 0; i < N_EX; i++) {
        if (SLOT(ex, S.off[i]) == NULL)
            return 0;
        h->f[i] = Py_NewRef(SLOT(ex, S.off[i]));
    }
    PyObject **f = h->f;
    if ((Py_TYPE(f[E_RESP_PARSER]) != S.parser_type && Py_TYPE(f[E_RESP_PARSER]) != &ParsedType)
        || f[E_RESP_COMPLETE] != Py_False
        || Py_TYPE(f[E_CTX]) != S.ctx_type || !PyFloat_CheckExact(f[E_TIMER])
        || !PyBytes_CheckExact(f[E_RESP_REASON]) || !PyUnicode_CheckExact(f[E_VERSION])
        || !is_bool(f[E_RESP_CLOSE_AFTER]) || !is_bool(f[E_BODY_COMPLETE])
        || !PyList_CheckExact(f[E_OUT]))
        return 0;
    /* _clear_timer's set: an exact set runs no Python code between the reads here and the writes */
    if (PyFloat_AS_DOUBLE(f[E_TIMER]) != 0.0) {
        h->deadlines = node_attr(f[E_NODE], s_deadlines);
        if (h->deadlines == NULL)
            return -1;
        if (!PySet_CheckExact(h->deadlines))
            return 0;
    }
    /* the parser's calls run no Python code (httptools' Cython methods); feed_fast's
     * stand-in answers from its fields, as its methods would */
    if (Py_TYPE(f[E_RESP_PARSER]) == &ParsedType)
        h->status = Py_NewRef(parsed_status_of(f[E_RESP_PARSER]));
    else
        h->status = PyObject_CallMethodNoArgs(f[E_RESP_PARSER], s_get_status_code);
    if (h->status == NULL)
        return -1;
    if (!PyLong_CheckExact(h->status))
        return 0;
    int overflow;
    h->st = PyLong_AsLongAndOverflow(h->status, &overflow);
    if (h->st == -1 && PyErr_Occurred())
        return -1;
    if (overflow || h->st < 200)
        return 0;   /* 1xx and 101 */
    h->keep = Py_TYPE(f[E_RESP_PARSER]) == &ParsedType
        ? Py_NewRef(Py_True)   /* (parsed_keep_alive) */
        : PyObject_CallMethodNoArgs(f[E_RESP_PARSER], s_should_keep_alive);
    if (h->keep == NULL)
        return -1;
    PyObject *ctx = f[E_CTX];
    if (CTX(ctx, C_METHOD) == NULL || CTX(ctx, C_REQUEST_ID) == NULL)
        return 0;
    h->method = Py_NewRef(CTX(ctx, C_METHOD));
    h->rid = Py_NewRef(CTX(ctx, C_REQUEST_ID));
    if (!PyUnicode_CheckExact(h->method) || !PyUnicode_CheckExact(h->rid))
        return 0;
    h->no_body = str_is(h->method, "HEAD", 4) || h->st == 204 || h->st == 304;
    h->client_11 = str_is(f[E_VERSION], "1.1", 3);

    /* no X-NovaEdge-Decision: neither a trusted peer nor debug_headers */
    PyObject *down = f[E_DOWN], *trusted;
    int r;
    if (D.ready && Py_TYPE(down) == D.type && (trusted = SLOT(down, D.trusted_peer)) != NULL)
        r = trusted == Py_False;
    else if ((r = attr_is_false(down, s_trusted_peer)) <= 0)
        return r;
    if (!r)
        return 0;
    PyObject *snap = node_attr(f[E_NODE], s_snapshot);
    if (snap == NULL)
        return -1;
    /* snapshot.config.debug_headers: once per Snapshot (frozen, as its config) */
    static PyObject *seen_snap;   /* owned: the last one asked */
    static int seen_quiet;
    if (snap != seen_snap) {
        PyObject *config = PyObject_GetAttr(snap, s_config);
        if (config == NULL) {
            Py_DECREF(snap);
            return -1;
        }
        r = attr_is_false(config, s_debug_headers);
        Py_DECREF(config);
        if (r < 0) {
            Py_DECREF(snap);
            return -1;
        }
        seen_quiet = r;
        Py_XSETREF(seen_snap, Py_NewRef(snap));
    }
    Py_DECREF(snap);
    if (!seen_quiet)
        return 0;
    h->via = node_attr(f[E_NODE], s_via_header);
    if (h->via == NULL)
        return -1;
    if (!PyBytes_CheckExact(h->via))
        return 0;

    /* the fields: the C loop of _render_head, or None (Python's loop) */
    h->fields = PyObject_Vectorcall(S.fields, &f[E_RESP_HEADERS], 1, NULL);
    if (h->fields == NULL)
        return -1;
    if (!PyTuple_CheckExact(h->fields) || PyTuple_GET_SIZE(h->fields) != 3
        || !PyBytes_CheckExact(PyTuple_GET_ITEM(h->fields, 0))
        || !is_bool(PyTuple_GET_ITEM(h->fields, 1)) || !is_bool(PyTuple_GET_ITEM(h->fields, 2)))
        return 0;
    h->has_cl = PyTuple_GET_ITEM(h->fields, 1) == Py_True;
    h->chunked = PyTuple_GET_ITEM(h->fields, 2) == Py_True;

    /* the reason phrase: the backend's, or REASONS.get(status, "Unknown").encode() */
    if (PyBytes_GET_SIZE(f[E_RESP_REASON]) > 0) {
        h->reason = Py_NewRef(f[E_RESP_REASON]);
    } else {
        PyObject *reasons = PyDict_GetItemWithError(S.globals, s_reasons);
        if (reasons == NULL || !PyDict_CheckExact(reasons))
            return PyErr_Occurred() ? -1 : 0;
        PyObject *phrase = PyDict_GetItemWithError(reasons, h->status);
        if (phrase == NULL && PyErr_Occurred())
            return -1;
        if (phrase == NULL) {
            h->reason = PyBytes_FromStringAndSize("Unknown", 7);
        } else {
            if (!PyUnicode_CheckExact(phrase))
                return 0;
            h->reason = PyUnicode_AsUTF8String(phrase);
            if (h->reason == NULL) {
                PyErr_Clear();
                return 0;   /* Python raises its own */
            }
        }
        if (h->reason == NULL)
            return -1;
    }
    if (PyUnicode_AsUTF8AndSize(h->rid, NULL) == NULL) {
        PyErr_Clear();
        return 0;   /* a request id .encode() refuses: Python raises */
    }
    return 1;
}

/* down.keep_alive_after(ex): 1 true, 0 false, -1 error */
static int
keep_alive_after(PyObject *ex)
{
    PyObject *down = EX(ex, E_DOWN);   /* self.down (an exact Exchange here; unset: Python's own error) */
    down = down != NULL ? Py_NewRef(down) : PyObject_GetAttr(ex, s_down);
    if (down == NULL)
        return -1;
    int r = -2;
    if (D.ready && Py_TYPE(down) == D.type) {
        PyObject *fn = PyDict_GetItem(D.type->tp_dict, s_keep_alive_after);   /* (no error: a str key) */
        PyObject *keep = EX(ex, E_KEEP_ALIVE), *closing = SLOT(down, D.closing);
        /* ex.keep_alive and not self.closing and not self.node.draining */
        if (fn == D.keep_alive_after && keep != NULL && is_bool(keep) && closing != NULL && is_bool(closing)) {
            if (keep == Py_False || closing == Py_True) {
                r = 0;
            } else {
                PyObject *node = SLOT(down, D.node);
                if (node != NULL) {
                    Py_INCREF(node);
                    PyObject *draining = node_attr(node, s_draining);
                    Py_DECREF(node);
                    if (draining == NULL)
                        PyErr_Clear();   /* the method raises it */
                    else if (is_bool(draining))
                        r = draining == Py_False;
                    Py_XDECREF(draining);
                }
            }
        }
    }
    if (r == -2) {
        PyObject *res = PyObject_CallMethodOneArg(down, s_keep_alive_after, ex);
        r = res == NULL ? -1 : PyObject_IsTrue(res);
        Py_XDECREF(res);
    }
    Py_DECREF(down);
    return r;
}

static PyObject *
head_apply(PyObject *ex, Head *h)
{
    PyObject **f = h->f, *ctx = f[E_CTX];
    /* on_headers_complete, in its order */
    slot_put(ex, S.off[E_RESP_STATUS], h->status);
    slot_put(ex, S.off[E_RESP_HEAD_BYTES], S.zero);
    if (PyFloat_AS_DOUBLE(f[E_TIMER]) != 0.0) {
        /* _clear_timer(): self.timer = 0.0; self.node.deadlines.discard(self) */
        slot_put(ex, S.off[E_TIMER], S.zero_float);
        if (PySet_Discard(h->deadlines, ex) < 0)
            return NULL;
    }
    slot_put(ctx, S.coff[C_STATUS], h->status);
    slot_put(ctx, S.coff[C_UPSTREAM_HEADERS_AT], f[E_LAST_READ]);
    slot_put(ex, S.off[E_RESP_KEEP_ALIVE], h->keep);
    slot_put(ex, S.off[E_RESP_NO_BODY], h->no_body ? Py_True : Py_False);

    /* _render_head(interim=False), from the framing on */
    int out_chunked = 0, close_after = f[E_RESP_CLOSE_AFTER] == Py_True;
    if (!h->no_body && (h->chunked || !h->has_cl)) {
        slot_put(ex, S.off[E_RESP_CLOSE_DELIMITED], h->chunked ? Py_False : Py_True);
        if (h->client_11) {
            out_chunked = 1;
            slot_put(ex, S.off[E_RESP_OUT_CHUNKED], Py_True);
        } else {
            close_after = 1;
            slot_put(ex, S.off[E_RESP_CLOSE_AFTER], Py_True);
        }
    }
    const char *conn = NULL;
    int keep = close_after || f[E_BODY_COMPLETE] == Py_False ? 0 : keep_alive_after(ex);
    if (keep < 0)
        return NULL;
    if (!keep) {
        slot_put(ex, S.off[E_RESP_CLOSE_AFTER], Py_True);
        conn = "Connection: close\r\n";
    } else if (!h->client_11) {
        conn = "Connection: keep-alive\r\n";
    }

    char code[32];
    int ncode = snprintf(code, sizeof(code), "HTTP/1.1 %ld ", h->st);
    Py_ssize_t nrid;
    const char *rid = PyUnicode_AsUTF8AndSize(h->rid, &nrid);   /* checked: cannot fail */
    if (rid == NULL)
        return NULL;
    PyObject *block = PyTuple_GET_ITEM(h->fields, 0);
    static const char te[] = "Transfer-Encoding: chunked\r\n", xrid[] = "X-Request-Id: ";
    Py_ssize_t nconn = conn == NULL ? 0 : (Py_ssize_t)strlen(conn);
    Py_ssize_t len = ncode + PyBytes_GET_SIZE(h->reason) + 2 + PyBytes_GET_SIZE(block)
        + PyBytes_GET_SIZE(h->via) + (Py_ssize_t)sizeof(xrid) - 1 + nrid + 2
        + (out_chunked ? (Py_ssize_t)sizeof(te) - 1 : 0) + nconn + 2;
    PyObject *head = PyBytes_FromStringAndSize(NULL, len);
    if (head == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(head);
#define PUT(src, n) do { memcpy(p, (src), (n)); p += (n); } while (0)
    PUT(code, ncode);
    PUT(PyBytes_AS_STRING(h->reason), PyBytes_GET_SIZE(h->reason));
    PUT("\r\n", 2);
    PUT(PyBytes_AS_STRING(block), PyBytes_GET_SIZE(block));
    PUT(PyBytes_AS_STRING(h->via), PyBytes_GET_SIZE(h->via));
    PUT(xrid, sizeof(xrid) - 1);
    PUT(rid, nrid);
    PUT("\r\n", 2);
    if (out_chunked)
        PUT(te, sizeof(te) - 1);
    if (conn != NULL)
        PUT(conn, nconn);
    PUT("\r\n", 2);
#undef PUT

    /* self.out.append(...): Python binds self.out.append before _render_head runs */
    int r = PyList_Append(f[E_OUT], head);
    Py_DECREF(head);
    if (r < 0)
        return NULL;
    slot_put(ex, S.off[E_RESP_HEAD_SENT], Py_True);
    slot_put(ex, S.off[E_HEAD_UNFLUSHED], Py_True);
    PyObject *no_body = PyObject_GetAttr(ex, s_resp_no_body);   /* unset: Python's own error */
    if (no_body == NULL)
        return NULL;
    r = PyObject_IsTrue(no_body);
    Py_DECREF(no_body);
    if (r < 0)
        return NULL;
    if (r)
        slot_put(ex, S.off[E_RESP_COMPLETE], Py_True);
    Py_RETURN_NONE;
}

static PyObject *
on_headers_complete(PyObject *ex, PyObject *unused)
{
    if (!S.ready || Py_TYPE(ex) != S.ex_type)
        return py_call(P_HEADERS, ex, NULL);
    Head h;
    memset(&h, 0, sizeof(h));
    Py_INCREF(ex);
    PyObject *res;
    int r = head_prepare(ex, &h);
    if (r <= 0) {
        /* An error here too: Python's method raises it, after the changes it
         * makes before its read that fails. */
        PyErr_Clear();
        res = py_call(P_HEADERS, ex, NULL);
    } else {
        res = head_apply(ex, &h);
    }
    head_clear(&h);
    Py_DECREF(ex);
    return res;
}

/* -- setup --------------------------------------------------------------------- */

static PyMethodDef defs[N_PY] = {
    {"on_message_begin", (PyCFunction)on_message_begin, METH_NOARGS,
     "httptools callback: a response begins (proxy/_response.c)."},
    {"on_status", (PyCFunction)on_status, METH_O,
     "httptools callback: (part of) the reason phrase (proxy/_response.c)."},
    {"on_headers_complete", (PyCFunction)on_headers_complete, METH_NOARGS,
     "httptools callback: the response head is complete (proxy/_response.c)."},
    {"on_body", (PyCFunction)on_body, METH_O,
     "httptools callback: response body bytes (proxy/_response.c)."},
    {"on_message_complete", (PyCFunction)on_message_complete, METH_NOARGS,
     "httptools callback: the response is complete (proxy/_response.c)."},
};

/* setup(Exchange, RequestContext, HttpResponseParser, exchange_globals, response_fields,
 *       render_head, clear_timer, (py_begin, py_status, py_headers, py_body, py_complete))
 * -> (on_message_begin, on_status, on_headers_complete, on_body, on_message_complete),
 * method descriptors for Exchange */
static PyObject *
setup(PyObject *self, PyObject *args)
{
    PyObject *ex_type, *ctx_type, *parser_type, *globals, *fields, *render_head, *clear_timer;
    PyObject *py[N_PY];
    if (!PyArg_ParseTuple(args, "O!O!O!O!OOO(OOOOO):setup", &PyType_Type, &ex_type, &PyType_Type,
                          &ctx_type, &PyType_Type, &parser_type, &PyDict_Type, &globals, &fields,
                          &render_head, &clear_timer, &py[0], &py[1], &py[2], &py[3], &py[4]))
        return NULL;
    if (!PyCallable_Check(fields)) {
        PyErr_SetString(PyExc_TypeError, "setup: response_fields is not callable (the C one is needed)");
        return NULL;
    }
    Py_ssize_t off[N_EX], coff[N_CTX];
    if (slot_offsets((PyTypeObject *)ex_type, ex_names, N_EX, off) < 0)
        return NULL;
    if (slot_offsets((PyTypeObject *)ctx_type, ctx_names, N_CTX, coff) < 0)
        return NULL;
    if (((PyTypeObject *)ex_type)->tp_dictoffset != 0 || ((PyTypeObject *)ctx_type)->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "setup: Exchange and RequestContext must have no __dict__");
        return NULL;
    }
    PyObject *methods = PyTuple_New(N_PY);
    if (methods == NULL)
        return NULL;
    for (int i = 0; i < N_PY; i++) {
        PyObject *m = PyDescr_NewMethod((PyTypeObject *)ex_type, &defs[i]);
        if (m == NULL) {
            Py_DECREF(methods);
            return NULL;
        }
        PyTuple_SET_ITEM(methods, i, m);
    }
    S.ready = 0;
    memcpy(S.off, off, sizeof(off));
    memcpy(S.coff, coff, sizeof(coff));
    Py_INCREF(ex_type); Py_XSETREF(S.ex_type, (PyTypeObject *)ex_type);
    Py_INCREF(ctx_type); Py_XSETREF(S.ctx_type, (PyTypeObject *)ctx_type);
    Py_INCREF(parser_type); Py_XSETREF(S.parser_type, (PyTypeObject *)parser_type);
    Py_INCREF(globals); Py_XSETREF(S.globals, globals);
    Py_INCREF(fields); Py_XSETREF(S.fields, fields);
    Py_INCREF(render_head); Py_XSETREF(S.render_head, render_head);
    Py_INCREF(clear_timer); Py_XSETREF(S.clear_timer, clear_timer);
    for (int i = 0; i < N_PY; i++) {
        Py_INCREF(py[i]);
        Py_XSETREF(S.py[i], py[i]);
        Py_XSETREF(S.desc[i], Py_NewRef(PyTuple_GET_ITEM(methods, i)));
    }
    S.tag = 0;
    Py_CLEAR(S.on_header);
    S.ready = 1;
    return methods;
}

/* setup_down(Downstream, keep_alive_after): down.keep_alive_after(ex) inlined
 * for a Downstream whose method is still that function */
static PyObject *
setup_down(PyObject *self, PyObject *args)
{
    PyObject *down_type, *fn;
    if (!PyArg_ParseTuple(args, "O!O:setup_down", &PyType_Type, &down_type, &fn))
        return NULL;
    Py_ssize_t closing, node, trusted_peer;
    if (slot_offset((PyTypeObject *)down_type, "closing", &closing) < 0
        || slot_offset((PyTypeObject *)down_type, "node", &node) < 0
        || slot_offset((PyTypeObject *)down_type, "trusted_peer", &trusted_peer) < 0)
        return NULL;
    if (((PyTypeObject *)down_type)->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "setup_down: Downstream must have no __dict__");
        return NULL;
    }
    D.ready = 0;
    D.closing = closing;
    D.node = node;
    D.trusted_peer = trusted_peer;
    Py_INCREF(down_type); Py_XSETREF(D.type, (PyTypeObject *)down_type);
    Py_INCREF(fn); Py_XSETREF(D.keep_alive_after, fn);
    D.ready = 1;
    Py_RETURN_NONE;
}

/* -- Exchange.upstream_data's common case: one whole, plain response ------------------
 * Most reads from a kept-alive backend are one complete response: a status
 * line, a few fields, a Content-Length body, nothing more. httptools costs
 * ~1.5 us on those (each field as two new bytes objects and a call into
 * Python). feed_fast(ex, data) recognises such a read and makes the
 * callbacks llhttp would make, in its order and with its arguments, through
 * the exchange's methods as httptools calls them (on_message_begin,
 * on_status, on_header per field, on_headers_complete, on_body unless the
 * body is empty, on_message_complete); while Exchange holds this module's
 * own callbacks, those five are called as C functions, not looked up
 * (ex_unchanged), and so is on_header while it is a C method of Exchange's. Field lines already seen keep their
 * bytes objects in a cache (_heads.h). While the callbacks run,
 * ex.resp_parser is a stand-in (Parsed) that answers get_status_code() and
 * should_keep_alive() as llhttp's parser would at headers-complete; UNFED
 * (no parser made yet) is put back after. It returns False, changing nothing,
 * for anything else, and the caller feeds llhttp:
 *   - not "HTTP/1.1", SP, three digits, SP, a reason phrase (visible ASCII,
 *     SP, HTAB, not empty, not ending in whitespace), CRLF; a status under
 *     200, 204 or 304;
 *   - a field outside _heads.h's subset; Transfer-Encoding, Upgrade,
 *     Proxy-Connection; a Connection other than "keep-alive"; not exactly
 *     one Content-Length of 1 to 18 digits; more or fewer body bytes than it
 *     says (a response split over reads, or with bytes after it);
 *   - a request other than GET (HEAD's response has no body), an exchange
 *     of a subclass, an exchange whose resp_parser is not UNFED (llhttp has
 *     been fed: the response's first read is not this one), a response
 *     already complete.
 * A callback's exception ends the read as llhttp's callback error does:
 * httptools.HttpParserCallbackError, raised while handling it (its
 * __context__), as upstream_data expects.
 * tests/unit/test_response_fast.py checks the recogniser against llhttp and
 * the exchange's state against feeding llhttp. */

typedef struct {
    PyObject_HEAD
    PyObject *status;   /* int */
} Parsed;

/* what its get_status_code() answers (borrowed) */
static PyObject *
parsed_status_of(PyObject *parsed)
{
    return ((Parsed *)parsed)->status;
}

static PyObject *
parsed_status(PyObject *self, PyObject *unused)
{
    return Py_NewRef(parsed_status_of(self));
}

static PyObject *
parsed_keep_alive(PyObject *self, PyObject *unused)
{
    Py_RETURN_TRUE;   /* HTTP/1.1, no Connection but keep-alive */
}

static void
parsed_dealloc(PyObject *self)
{
    Py_XDECREF(((Parsed *)self)->status);
    Py_TYPE(self)->tp_free(self);
}

static PyMethodDef parsed_methods[] = {
    {"get_status_code", parsed_status, METH_NOARGS, "The status code, as llhttp's parser gives it."},
    {"should_keep_alive", parsed_keep_alive, METH_NOARGS, "True, as llhttp's parser says at headers-complete."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ParsedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy._response.Parsed",
    .tp_basicsize = sizeof(Parsed),
    .tp_dealloc = parsed_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The response parser's answers while feed_fast makes its callbacks.",
    .tp_methods = parsed_methods,
};

static struct {
    int ready;
    PyObject *unfed;               /* exchange.UNFED: resp_parser before the first read */
    PyObject *callback_error;      /* httptools.HttpParserCallbackError */
    unsigned long long taken;      /* responses taken here (for the tests) */
} R;

static PyObject *s_on_message_begin, *s_on_status, *s_on_header, *s_on_headers_complete, *s_on_body,
    *s_on_message_complete;
/* the five C callbacks' names, in P_ order */
static PyObject **const callback_names[N_PY] = {&s_on_message_begin, &s_on_status, &s_on_headers_complete,
                                                &s_on_body, &s_on_message_complete};

/* 1: d[0..n) is one response of the subset; status, reason span, fields, body offset */
static int
scan_response(const char *d, Py_ssize_t n, long *status, Py_ssize_t *reason_len, Field *f, int *nf,
              Py_ssize_t *body)
{
    if (n < 16 || memcmp(d, "HTTP/1.1 ", 9) != 0)
        return 0;
    for (int i = 9; i < 12; i++)
        if (d[i] < '0' || d[i] > '9')
            return 0;
    if (d[12] != ' ')
        return 0;
    *status = (d[9] - '0') * 100 + (d[10] - '0') * 10 + (d[11] - '0');
    if (*status < 200 || *status == 204 || *status == 304)
        return 0;
    if (!c_value[(unsigned char)d[13]])
        return 0;   /* empty, or starting with whitespace */
    Py_ssize_t end, i = scan_text(d, n, 13, &end);
    if (end != i || n - i < 2 || d[i] != '\r' || d[i + 1] != '\n')
        return 0;
    *reason_len = end - 13;
    *body = scan_fields(d, n, i + 2, f, nf);
    return *body >= 0;
}

/* The value is `s` (lower case), ignoring case */
static int
value_is(PyObject *value, const char *s)
{
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    if ((size_t)n != strlen(s))
        return 0;
    const char *v = PyBytes_AS_STRING(value);
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = v[i];
        if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != s[i])
            return 0;
    }
    return 1;
}

/* The framing fields: 1 if only a Connection: keep-alive and one
 * Content-Length that says exactly the bytes left, 0 else */
static int
framing_fits(const Obj *o, int nf, Py_ssize_t left)
{
    int lengths = 0;
    for (int k = 0; k < nf; k++) {
        if (o[k].kind != K_LLHTTP)
            continue;
        PyObject *lower = PyTuple_GET_ITEM(o[k].pair, 0), *v = o[k].value;
        if (value_is(lower, "connection")) {
            if (!value_is(v, "keep-alive"))
                return 0;
        } else if (value_is(lower, "content-length")) {
            Py_ssize_t m = PyBytes_GET_SIZE(v);
            const char *p = PyBytes_AS_STRING(v);
            if (m > 18 || lengths++)
                return 0;
            long long cl = 0;
            for (Py_ssize_t j = 0; j < m; j++) {
                if (p[j] < '0' || p[j] > '9')
                    return 0;
                cl = cl * 10 + (p[j] - '0');
            }
            if (cl != left)
                return 0;
        } else
            return 0;   /* Transfer-Encoding, Upgrade, Proxy-Connection */
    }
    return lengths == 1;
}

/* scan_response, the fields' objects (owned, in o[0..*nf)) and the framing:
 * 1 a response feed_fast takes, 0 not (nothing held), -1 an error */
static int
recognise(const char *d, Py_ssize_t n, long *status, Py_ssize_t *reason_len, Obj *o, int *nf, Py_ssize_t *body)
{
    Field f[FAST_FIELDS];
    if (!scan_response(d, n, status, reason_len, f, nf, body))
        return 0;
    for (int k = 0; k < *nf; k++)
        if (field_objects(d, &f[k], &o[k], NULL) < 0) {
            objs_clear(o, k);
            return -1;
        }
    if (!framing_fits(o, *nf, n - *body)) {
        objs_clear(o, *nf);
        return 0;
    }
    return 1;
}

/* Exchange still holds this module's five callbacks (setup's descriptors):
 * then feed_fast calls the C functions themselves, not through a method
 * look-up (~0.2 us a response). feed_fast takes only an exact Exchange, so
 * its own dict is where Python would find them, as long as the class keeps
 * the generic attribute look-up. The type's version tag changes with any
 * assignment to the class: until then one comparison. */
static int
ex_unchanged(void)
{
    PyTypeObject *t = S.ex_type;
    if (tag_current(t, S.tag))
        return 1;
    PyObject *names[N_PY];
    for (int i = 0; i < N_PY; i++)
        names[i] = *callback_names[i];
    if (!type_holds(t, names, S.desc, N_PY))
        return 0;
    /* on_header (_hotpath.c's, as downstream.py sets it up): called through its C
     * function while it is a fast-call method of Exchange's own */
    PyObject *h = PyDict_GetItemWithError(t->tp_dict, s_on_header);   /* borrowed */
    if (h == NULL && PyErr_Occurred())
        PyErr_Clear();
    int fast = h != NULL && Py_IS_TYPE(h, &PyMethodDescr_Type) && ((PyMethodDescrObject *)h)->d_common.d_type == t
        && (((PyMethodDescrObject *)h)->d_method->ml_flags & ~METH_COEXIST) == METH_FASTCALL;
    Py_XSETREF(S.on_header, fast ? Py_NewRef(h) : NULL);
    S.tag = type_tag(t, names[0]);
    return 1;
}

/* ex.on_header(name, value): its C function while ex_unchanged() found one, else the method */
static PyObject *
call_on_header(PyObject *ex, PyObject *name, PyObject *value)
{
    PyObject *a[3] = {ex, name, value};
    if (ex_unchanged() && S.on_header != NULL) {
        _PyCFunctionFast fn = (_PyCFunctionFast)(void (*)(void))((PyMethodDescrObject *)S.on_header)->d_method->ml_meth;
        return fn(ex, a + 1, 2);
    }
    return PyObject_VectorcallMethod(s_on_header, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* ex.<callback i>(arg): the C function while Exchange's is setup's, else the method */
static PyObject *
callback(PyObject *ex, int i, PyObject *arg)
{
    static PyObject *(*const direct[N_PY])(PyObject *, PyObject *) = {
        on_message_begin, on_status, on_headers_complete, on_body, on_message_complete};
    if (ex_unchanged())
        return direct[i](ex, arg);
    PyObject *a[2] = {ex, arg};
    return PyObject_VectorcallMethod(*callback_names[i], a, (arg == NULL ? 1 : 2) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

/* the callbacks for a recognised response; 0, or -1 with the callback's exception */
static int
fast_callbacks(PyObject *ex, const char *d, Py_ssize_t reason_len, const Obj *o, int nf, Py_ssize_t body,
               Py_ssize_t n)
{
    PyObject *r, *piece;
    if ((r = callback(ex, P_BEGIN, NULL)) == NULL)
        return -1;
    Py_DECREF(r);
    if ((piece = PyBytes_FromStringAndSize(d + 13, reason_len)) == NULL)
        return -1;
    r = callback(ex, P_STATUS, piece);
    Py_DECREF(piece);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    for (int k = 0; k < nf; k++) {
        if ((r = call_on_header(ex, o[k].name, o[k].value)) == NULL)
            return -1;
        Py_DECREF(r);
    }
    if ((r = callback(ex, P_HEADERS, NULL)) == NULL)
        return -1;
    Py_DECREF(r);
    if (n > body) {
        if ((piece = PyBytes_FromStringAndSize(d + body, n - body)) == NULL)
            return -1;
        r = callback(ex, P_BODY, piece);
        Py_DECREF(piece);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if ((r = callback(ex, P_COMPLETE, NULL)) == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* feed_fast(ex, data) -> True (the callbacks made) or False (nothing done) */
static PyObject *feed(PyObject *ex, PyObject *data);

static PyObject *
feed_fast(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "feed_fast(ex, data)");
        return NULL;
    }
    return feed(args[0], args[1]);
}

static PyObject *
feed(PyObject *ex, PyObject *data)
{
    if (!S.ready || !R.ready || Py_TYPE(ex) != S.ex_type || !PyBytes_CheckExact(data))
        Py_RETURN_FALSE;
    PyObject *parser = EX(ex, E_RESP_PARSER), *ctx = EX(ex, E_CTX), *method;
    if (parser == NULL || parser != R.unfed || EX(ex, E_RESP_COMPLETE) != Py_False || ctx == NULL
        || Py_TYPE(ctx) != S.ctx_type || (method = CTX(ctx, C_METHOD)) == NULL || !str_is(method, "GET", 3))
        Py_RETURN_FALSE;
    const char *d = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data), reason_len, body;
    long status;
    Obj o[FAST_FIELDS];
    int nf, r = recognise(d, n, &status, &reason_len, o, &nf, &body);
    if (r <= 0)
        return r < 0 ? NULL : Py_NewRef(Py_False);
    PyObject *result = NULL;
    /* the cache's misses could run Python code (the GC): the checks again */
    parser = EX(ex, E_RESP_PARSER);
    if (parser != R.unfed || EX(ex, E_RESP_COMPLETE) != Py_False) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    Parsed *standin = PyObject_New(Parsed, &ParsedType);
    if (standin == NULL)
        goto done;
    if ((standin->status = PyLong_FromLong(status)) == NULL) {
        Py_DECREF(standin);
        goto done;
    }
    Py_INCREF(ex);
    Py_INCREF(data);   /* (the caller's; the callbacks run Python code) */
    Py_INCREF(parser);
    slot_put(ex, S.off[E_RESP_PARSER], (PyObject *)standin);
    r = fast_callbacks(ex, d, reason_len, o, nf, body, n);
    if (EX(ex, E_RESP_PARSER) == (PyObject *)standin)
        slot_put(ex, S.off[E_RESP_PARSER], parser);   /* UNFED back: llhttp never saw it */
    Py_DECREF(parser);
    Py_DECREF(standin);
    if (r < 0) {
        /* as httptools: HttpParserCallbackError raised while handling the cause */
        PyObject *handled, *value = handle_raised(&handled);
        PyErr_SetString(R.callback_error, "a response callback failed");
        handled_restore(handled, value);
    } else {
        R.taken++;
        result = Py_NewRef(Py_True);
    }
    Py_DECREF(data);
    Py_DECREF(ex);
done:
    objs_clear(o, nf);
    return result;
}

/* setup_fast(HttpParserCallbackError, UNFED): feed_fast on (after setup) */
static PyObject *
setup_fast(PyObject *self, PyObject *args)
{
    PyObject *error, *unfed;
    if (!PyArg_ParseTuple(args, "OO:setup_fast", &error, &unfed))
        return NULL;
    if (!S.ready || !PyExceptionClass_Check(error)) {
        PyErr_SetString(PyExc_TypeError, "setup_fast: call setup() first; an exception class");
        return NULL;
    }
    R.ready = 0;
    Py_INCREF(error); Py_XSETREF(R.callback_error, error);
    Py_INCREF(unfed); Py_XSETREF(R.unfed, unfed);
    R.ready = 1;
    Py_RETURN_NONE;
}

static PyObject *
fast_count(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(R.taken);
}

/* scan(data) -> None, or (status, reason, [(name, value)...], body) as feed_fast
 * would call back (for the tests) */
static PyObject *
scan(PyObject *self, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "scan: bytes");
        return NULL;
    }
    const char *d = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data), reason_len, body;
    long status;
    Obj o[FAST_FIELDS];
    int nf, r = recognise(d, n, &status, &reason_len, o, &nf, &body);
    if (r <= 0)
        return r < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *result = NULL, *fields = NULL;
    if ((fields = PyList_New(nf)) == NULL)
        goto done;
    for (int j = 0; j < nf; j++) {
        PyObject *t = PyTuple_Pack(2, o[j].name, o[j].value);
        if (t == NULL)
            goto done;
        PyList_SET_ITEM(fields, j, t);
    }
    result = Py_BuildValue("(ly#Oy#)", status, d + 13, reason_len, fields, d + body, n - body);
done:
    Py_XDECREF(fields);
    objs_clear(o, nf);
    return result;
}

/* -- UpstreamConnection.data_received: a read from a backend --------------------
 * What UpstreamConnection.data_received, Exchange.upstream_data and, for a
 * response that ends in this read on a connection both sides keep,
 * Exchange._read_over, _done_plain, Downstream.write and _response_over do
 * (~340 bytecodes and five Python frames a response), in C on the slots:
 *   data_received: an exact UpstreamConnection with an exact Exchange, else
 *     its Python method (kept as UpstreamConnection._data_received_py);
 *   upstream_data: its preamble as Python has it, then feed_fast for a
 *     response's first read (while exchange._feed_fast is this module's),
 *     and the three seams Python has: _feed_llhttp (what feed_fast does not
 *     take), _parse_failed (called while handling the exception, as in the
 *     except clause) and _read_over, whose plain end (done_plain, below) is
 *     done here; anything else calls the Python method (upstream_data,
 *     _read_over) before changing anything;
 *   while Exchange's upstream_data, _read_over and _done_plain and
 *     Downstream's write and _response_over are the functions set up with
 *     (setup_read), else their Python methods run.
 * tests/unit/test_done_plain.py carries the same requests through this, the
 * Python _done_plain and the general path, and compares what each leaves. */

enum { X_STATE, X_UP, X_POOL, X_BACKEND, X_ACCOUNTED, X_ATTEMPT_START, N_X };
static const char *x_names[N_X] = {"state", "up", "pool", "backend", "accounted", "attempt_start"};
enum { U_EXCHANGE, U_TRANSPORT, U_CLOSED, U_EOF, U_PAUSED_BY_CLIENT, U_IDLE_SINCE, N_U };
static const char *u_names[N_U] = {"exchange", "transport", "closed", "eof", "paused_by_client", "idle_since"};
enum { B_IDLE, B_BUSY, B_MAX_IDLE, N_B };
static const char *b_names[N_B] = {"idle", "busy", "max_idle"};
enum { W_TRANSPORT, W_CLOSED, W_EOF_SENT, W_CURRENT, W_PAUSED, W_CLOSING, W_NODE, W_ADVANCING, W_QUEUE,
       W_UPGRADED, W_DEFERRED, W_CLIENT_EOF, W_LAST_ACTIVE, N_W };
static const char *w_names[N_W] = {"transport", "closed", "eof_sent", "current", "paused", "closing", "node",
                                   "advancing", "queue", "upgraded", "deferred", "client_eof", "last_active"};
/* the methods stood for: Exchange's, then Downstream's */
enum { M_UPSTREAM_DATA, M_READ_OVER, M_DONE_PLAIN, N_MX };
enum { M_WRITE, M_RESPONSE_OVER, N_MD };

static struct {
    int ready;
    PyTypeObject *up_type, *pool_type, *down_type, *deque_type;
    Py_ssize_t x[N_X], u[N_U], b[N_B], w[N_W], c_end;
    long sent, responding, tunnel, done;   /* Exchange.state's values */
    PyObject *py_data_received;   /* UpstreamConnection._data_received_py */
    PyObject *parser_error;       /* httptools.HttpParserError */
    PyObject *feed_fast;          /* this module's feed_fast, as exchange._feed_fast holds it */
    PyObject *ex_fns[N_MX], *down_fns[N_MD];
    PyObject *ex_names[N_MX], *down_names[N_MD];   /* their names (interned, set at setup_read) */
    unsigned int ex_tag, down_tag;
    unsigned long long ended;     /* responses done_plain ended (for the tests) */
} U;

static PyObject *s_read_on, *s_upstream_data, *s_read_over, *s_done_plain, *s_write, *s_response_over,
    *s_feed_llhttp, *s_parse_failed, *s_feed_fast, *s_now, *s_is_closing, *s_resume_reading, *s_selector, *s_on_done, *s_stats,
    *s_requests, *s_errors, *s_finished, *s_close, *s_advance, *s_upstream_full, *s_connecting, *u_5xx, *u_ok,
    *i_one;

#define XS(ex, i) SLOT(ex, U.x[i])

/* Exchange and Downstream still hold the methods this stands for */
static int
read_unchanged(void)
{
    return type_still_holds(S.ex_type, U.ex_names, U.ex_fns, N_MX, &U.ex_tag)
        && type_still_holds(U.down_type, U.down_names, U.down_fns, N_MD, &U.down_tag);
}

/* an exact int's value, or `otherwise` */
static long
int_or(PyObject *o, long otherwise)
{
    if (o == NULL || !PyLong_CheckExact(o))
        return otherwise;
    int overflow;
    long v = PyLong_AsLongAndOverflow(o, &overflow);
    return overflow ? otherwise : v;
}

/* a slot's truth as Python's `if obj.name:` (-1: error, AttributeError if unset) */
static int
truth(PyObject *obj, Py_ssize_t off)
{
    PyObject *v = SLOT(obj, off);
    if (v == Py_True)
        return 1;
    if (v == Py_False || v == Py_None)
        return 0;
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%s' object: a slot read here is not set", Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_INCREF(v);
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* obj.name(args...): the result released; 0 or -1 */
static int
call_method(PyObject *obj, PyObject *name, PyObject *const *args, Py_ssize_t n)
{
    PyObject *a[5] = {obj};
    for (Py_ssize_t i = 0; i < n; i++)
        a[i + 1] = args[i];
    PyObject *r = PyObject_VectorcallMethod(name, a, (n + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* slot name's value's method `method`(arg): obj.name.method(arg) */
static int
slot_call(PyObject *obj, Py_ssize_t off, PyObject *method, PyObject *arg)
{
    PyObject *v = SLOT(obj, off);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%s' object: a slot read here is not set", Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_INCREF(v);
    int r = PySet_CheckExact(v) && method == s_discard ? PySet_Discard(v, arg) : call_method(v, method, &arg, 1);
    Py_DECREF(v);
    return r < 0 ? -1 : 0;
}

/* mapping[key] += 1 */
static int
count(PyObject *mapping, PyObject *key)
{
    PyObject *v = PyObject_GetItem(mapping, key);
    if (v == NULL)
        return -1;
    PyObject *v1 = PyNumber_InPlaceAdd(v, i_one);
    Py_DECREF(v);
    if (v1 == NULL)
        return -1;
    int r = PyObject_SetItem(mapping, key, v1);
    Py_DECREF(v1);
    return r;
}

/* getattr(obj, name) (owned), or NULL */
#define ATTR(obj, name) PyObject_GetAttr(obj, name)

/* Downstream._response_over(ex, False, False, now) */
static int
response_over(PyObject *down, PyObject *ex, PyObject *now)
{
    int t;
    PyObject *current = SLOT(down, U.w[W_CURRENT]);
    if (current != ex)
        return current == NULL ? truth(down, U.w[W_CURRENT]) : 0;
    slot_put(down, U.w[W_CURRENT], Py_None);
    if ((t = truth(down, U.w[W_PAUSED])) != 0) {
        /* Pauses that belonged to this exchange's upstream end with it. */
        if (t < 0 || call_method(down, s_resume_reading, &s_upstream_full, 1) < 0
            || call_method(down, s_resume_reading, &s_connecting, 1) < 0)
            return -1;
    }
    PyObject *tr = SLOT(down, U.w[W_TRANSPORT]);
    if (tr == NULL || tr == Py_None)
        return tr == NULL ? truth(down, U.w[W_TRANSPORT]) : 0;   /* (the AttributeError) */
    if ((t = truth(down, U.w[W_CLOSED])) != 0)
        return t < 0 ? -1 : 0;
    /* close or not ex.keep_alive or self.closing or self.node.draining */
    int close = truth(ex, S.off[E_KEEP_ALIVE]);
    if (close < 0)
        return -1;
    close = !close;
    if (!close && (close = truth(down, U.w[W_CLOSING])) < 0)
        return -1;
    if (!close) {
        PyObject *node = SLOT(down, U.w[W_NODE]);
        if (node == NULL)
            return truth(down, U.w[W_NODE]);
        Py_INCREF(node);
        PyObject *draining = node_attr(node, s_draining);
        Py_DECREF(node);
        if (draining == NULL)
            return -1;
        close = PyObject_IsTrue(draining);
        Py_DECREF(draining);
        if (close < 0)
            return -1;
    }
    if (close)
        return call_method(down, s_close, NULL, 0);
    slot_put(down, U.w[W_LAST_ACTIVE], now);
    if ((t = truth(down, U.w[W_ADVANCING])) != 0)
        return t < 0 ? -1 : 0;   /* called from inside _advance: it goes on */
    static const int more[] = {W_QUEUE, W_PAUSED, W_UPGRADED};
    for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++)
        if ((t = truth(down, U.w[more[i]])) != 0)
            return t < 0 ? -1 : call_method(down, s_advance, NULL, 0);
    PyObject *deferred = SLOT(down, U.w[W_DEFERRED]);
    if (deferred == NULL)
        return truth(down, U.w[W_DEFERRED]);
    if (deferred != Py_None || (t = truth(down, U.w[W_CLIENT_EOF])) != 0)
        return t < 0 ? -1 : call_method(down, s_advance, NULL, 0);
    return 0;
}

/* Exchange._done_plain(now) with its calls inlined: 1 done, 0 not the plain
 * case (nothing changed: Python decides), 2 not, after asking ut.is_closing()
 * (the caller goes on with _read_on, as Python after _done_plain), -1 an error. The checks, in
 * Python's order, read only slots, then ut.is_closing() last. */
static int
done_plain(PyObject *ex, PyObject *now)
{
    PyObject *st = XS(ex, X_STATE), *up = XS(ex, X_UP), *pool = XS(ex, X_POOL), *ctx = EX(ex, E_CTX),
        *down = EX(ex, E_DOWN), *node = EX(ex, E_NODE);
    long state = int_or(st, U.done);
    if (state == U.done || EX(ex, E_RESP_COMPLETE) != Py_True || EX(ex, E_RESP_OUT_CHUNKED) != Py_False
        || EX(ex, E_RESP_CLOSE_AFTER) != Py_False || EX(ex, E_BODY_COMPLETE) != Py_True
        || EX(ex, E_RESP_KEEP_ALIVE) != Py_True || EX(ex, E_RESP_CLOSE_DELIMITED) != Py_False)
        return 0;
    if (up == NULL || Py_TYPE(up) != U.up_type || pool == NULL || Py_TYPE(pool) != U.pool_type || ctx == NULL
        || Py_TYPE(ctx) != S.ctx_type || down == NULL || Py_TYPE(down) != U.down_type || node == NULL)
        return 0;
    PyObject *ut = SLOT(up, U.u[U_TRANSPORT]), *idle = SLOT(pool, U.b[B_IDLE]);
    if (SLOT(up, U.u[U_CLOSED]) != Py_False || SLOT(up, U.u[U_EOF]) != Py_False || ut == NULL || ut == Py_None
        || idle == NULL || Py_TYPE(idle) != U.deque_type)
        return 0;
    long max_idle = int_or(SLOT(pool, U.b[B_MAX_IDLE]), -1);
    Py_ssize_t n_idle = PyObject_Size(idle);
    if (max_idle < 0 || n_idle < 0 || n_idle >= max_idle)
        return n_idle < 0 ? -1 : 0;
    PyObject *held[5] = {Py_NewRef(up), Py_NewRef(pool), Py_NewRef(ctx), Py_NewRef(down), Py_NewRef(node)};
    int r = -1, t;
    PyObject *closing = PyObject_CallMethodNoArgs(ut, s_is_closing);
    if (closing == NULL)
        goto done;
    t = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    if (t != 0) {
        r = t < 0 ? -1 : 2;   /* _done_plain's False, is_closing() asked: _read_on */
        goto done;
    }
    /* _flush, with down.write inlined */
    PyObject *out = Py_XNewRef(EX(ex, E_OUT));   /* Python's local `out` */
    if ((t = truth(ex, S.off[E_OUT])) < 0) {
        Py_XDECREF(out);
        goto done;
    }
    if (!t)
        Py_XDECREF(out);
    if (t) {
        Py_ssize_t n = PyObject_Size(out);
        PyObject *data = n < 0 ? NULL : n == 1 ? PySequence_GetItem(out, 0) : _PyBytes_Join(S.empty_bytes, out);
        Py_DECREF(out);
        if (data == NULL)
            goto done;
        PyObject *dt = Py_XNewRef(SLOT(down, U.w[W_TRANSPORT]));   /* Python's local `t` */
        if (dt != NULL && dt != Py_None && (t = truth(down, U.w[W_CLOSED])) == 0
            && (t = truth(down, U.w[W_EOF_SENT])) == 0)
            t = call_method(dt, s_write, &data, 1);
        else if (dt == NULL)
            t = truth(down, U.w[W_TRANSPORT]);
        Py_XDECREF(dt);
        Py_DECREF(data);
        if (t < 0)
            goto done;
        PyObject *fresh = PyList_New(0);
        if (fresh == NULL)
            goto done;
        slot_set(ex, S.off[E_OUT], fresh);
    }
    slot_put(ex, S.off[E_HEAD_UNFLUSHED], Py_False);
    /* _response_done */
    slot_put(ex, U.x[X_STATE], S.done_obj);
    if ((t = truth(ex, S.off[E_TIMER])) < 0)
        goto done;
    if (t) {
        slot_put(ex, S.off[E_TIMER], S.zero_float);
        PyObject *deadlines = node_attr(node, s_deadlines);
        if (deadlines == NULL)
            goto done;
        t = PySet_CheckExact(deadlines) ? PySet_Discard(deadlines, ex) : call_method(deadlines, s_discard, &ex, 1);
        Py_DECREF(deadlines);
        if (t < 0)
            goto done;
    }
    slot_put(ex, U.x[X_UP], Py_None);
    /* pool.release(up, now, usable=True) */
    if (slot_call(pool, U.b[B_BUSY], s_discard, up) < 0)
        goto done;
    slot_put(up, U.u[U_EXCHANGE], Py_None);
    slot_put(up, U.u[U_IDLE_SINCE], now);
    if ((t = truth(up, U.u[U_PAUSED_BY_CLIENT])) < 0 || (t && call_method(up, s_resume_reading, NULL, 0) < 0))
        goto done;
    if (slot_call(pool, U.b[B_IDLE], s_append, up) < 0)
        goto done;
    /* _finish_attempt */
    PyObject *backend = XS(ex, X_BACKEND);
    if (backend == NULL && truth(ex, U.x[X_BACKEND]) < 0)
        goto done;
    if (backend != Py_None) {
        Py_INCREF(backend);
        if ((t = truth(ex, U.x[X_ACCOUNTED])) != 0)
            Py_DECREF(backend);
        if (t < 0)
            goto done;
        if (!t) {
            slot_put(ex, U.x[X_ACCOUNTED], Py_True);
            PyObject *start = XS(ex, X_ATTEMPT_START), *status = EX(ex, E_RESP_STATUS), *a[4] = {backend};
            PyObject *sel = node_attr(node, s_selector), *err = NULL;
            if (sel != NULL && start != NULL && status != NULL && (a[1] = PyNumber_Subtract(now, start)) != NULL)
                err = PyObject_RichCompare(status, S.i500, Py_GE);
            if (sel != NULL && a[1] != NULL && err != NULL && (t = PyObject_IsTrue(err)) >= 0) {
                a[2] = t ? u_5xx : u_ok;
                a[3] = now;
                t = call_method(sel, s_on_done, a, 4);
            } else {
                if (sel != NULL && (start == NULL || status == NULL))
                    truth(ex, start == NULL ? U.x[X_ATTEMPT_START] : S.off[E_RESP_STATUS]);   /* the AttributeError */
                t = -1;
            }
            Py_XDECREF(sel);
            Py_XDECREF(a[1]);
            Py_XDECREF(err);
            Py_DECREF(backend);
            if (t < 0)
                goto done;
        }
    }
    /* down.response_finished's first half, and node.finish */
    slot_put(ex, S.off[E_RESP_PARSER], Py_None);
    slot_put(ctx, U.c_end, now);
    PyObject *stats = node_attr(node, s_stats);
    if (stats == NULL)
        goto done;
    t = count(stats, s_requests);
    if (t == 0) {
        PyObject *status = CTX(ctx, C_STATUS);
        if (status == NULL)
            t = truth(ctx, S.coff[C_STATUS]);
        else {
            Py_INCREF(status);
            PyObject *c = PyObject_RichCompare(status, S.i500, Py_GE);
            t = c == NULL ? -1 : PyObject_IsTrue(c);
            Py_XDECREF(c);
            Py_DECREF(status);
            if (t == 0 && (status = CTX(ctx, C_STATUS)) != NULL) {
                Py_INCREF(status);
                c = PyObject_RichCompare(status, S.zero, Py_EQ);
                t = c == NULL ? -1 : PyObject_IsTrue(c);
                Py_XDECREF(c);
                Py_DECREF(status);
            }
            if (t > 0)
                t = count(stats, s_errors);
        }
    }
    Py_DECREF(stats);
    if (t < 0)
        goto done;
    PyObject *f = node_attr(node, s_finished);
    if (f == NULL)
        goto done;
    if (f != Py_None) {
        PyObject *res = PyObject_CallOneArg(f, ctx);
        Py_DECREF(f);
        if (res == NULL)
            goto done;
        Py_DECREF(res);
    } else
        Py_DECREF(f);
    U.ended++;
    r = response_over(down, ex, now) < 0 ? -1 : 1;
done:
    for (int i = 0; i < 5; i++)
        Py_DECREF(held[i]);
    return r;
}

/* UpstreamConnection.data_received(data) */
static PyObject *
up_data_received(PyObject *up, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *ex, *data = nargs == 1 ? args[0] : NULL;
    if (!U.ready || !S.ready || data == NULL || Py_TYPE(up) != U.up_type || (ex = SLOT(up, U.u[U_EXCHANGE])) == NULL
        || Py_TYPE(ex) != S.ex_type || !PyBytes_CheckExact(data) || !read_unchanged()) {
        PyObject *a[4] = {up};
        if (nargs > 3) {
            PyErr_SetString(PyExc_TypeError, "data_received(data)");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nargs; i++)
            a[i + 1] = args[i];
        return PyObject_Vectorcall(U.py_data_received, a, nargs + 1, NULL);
    }
    /* ex.upstream_data(data) */
    PyObject *parser = EX(ex, E_RESP_PARSER), *node = EX(ex, E_NODE);
    long state = int_or(XS(ex, X_STATE), U.tunnel);
    if (state == U.tunnel || parser == NULL || parser == Py_None || EX(ex, E_RESP_COMPLETE) != Py_False
        || node == NULL) {
        PyObject *a[2] = {ex, data};
        return PyObject_VectorcallMethod(s_upstream_data, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_INCREF(ex);
    Py_INCREF(parser);
    PyObject *result = NULL, *now = NULL;
    if (state == U.sent)
        slot_put(ex, U.x[X_STATE], S.responding_obj);
    if ((now = node_call0(node, s_now)) == NULL)
        goto done;
    slot_put(ex, S.off[E_LAST_READ], now);
    PyObject *ff = PyDict_GetItemWithError(S.globals, s_feed_fast);   /* exchange._feed_fast */
    if (ff == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_NameError, "name '_feed_fast' is not defined");
        goto done;
    }
    if (ff != Py_None && parser == R.unfed) {
        PyObject *fed = ff == U.feed_fast ? feed(ex, data) : PyObject_CallFunctionObjArgs(ff, ex, data, NULL);
        if (fed == NULL) {
            if (!PyErr_ExceptionMatches(U.parser_error))
                goto done;
            PyObject *before, *e = handle_raised(&before), *a[3] = {ex, e, data};
            result = PyObject_VectorcallMethod(s_parse_failed, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            handled_restore(before, e);
            goto done;
        }
        int t = PyObject_IsTrue(fed);
        Py_DECREF(fed);
        if (t < 0)
            goto done;
        if (t) {
            /* _read_over(data, now): its plain end here */
            if ((t = done_plain(ex, now)) < 0)
                goto done;
            if (t == 1) {
                result = Py_NewRef(Py_None);
                goto done;
            }
            PyObject *a[3] = {ex, data, now};
            result = PyObject_VectorcallMethod(t == 2 ? s_read_on : s_read_over, a,
                                               3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            goto done;
        }
    }
    PyObject *a[3] = {ex, data, now};
    result = PyObject_VectorcallMethod(s_feed_llhttp, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
done:
    Py_XDECREF(now);
    Py_DECREF(parser);
    Py_DECREF(ex);
    return result;
}

static PyObject *
ended_count(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(U.ended);
}

static PyMethodDef up_data_received_def = {"data_received", (PyCFunction)(void (*)(void))up_data_received,
    METH_FASTCALL, "A read from the backend (see proxy/_response.c)."};

/* setup_read(UpstreamConnection, BackendPool, Downstream, deque, HttpParserError, feed_fast,
 *            (SENT, RESPONDING, TUNNEL, DONE), data_received_py, (upstream_data, _read_over,
 *            _done_plain), (write, _response_over)) -> the C data_received, a method of
 * UpstreamConnection (after setup and setup_fast) */
static PyObject *
setup_read(PyObject *self, PyObject *args)
{
    PyObject *up_type, *pool_type, *down_type, *deque_type, *error, *ff, *py, *xf, *df;
    long st[4];
    if (!PyArg_ParseTuple(args, "O!O!O!O!OO(llll)OO!O!:setup_read", &PyType_Type, &up_type, &PyType_Type,
                          &pool_type, &PyType_Type, &down_type, &PyType_Type, &deque_type, &error, &ff,
                          &st[0], &st[1], &st[2], &st[3], &py, &PyTuple_Type, &xf, &PyTuple_Type, &df))
        return NULL;
    if (!S.ready || !R.ready || !PyExceptionClass_Check(error) || PyTuple_GET_SIZE(xf) != N_MX
        || PyTuple_GET_SIZE(df) != N_MD) {
        PyErr_SetString(PyExc_TypeError, "setup_read: call setup() and setup_fast() first; 3 and 2 methods");
        return NULL;
    }
    Py_ssize_t x[N_X], u[N_U], b[N_B], w[N_W], c_end;
    if (slot_offsets(S.ex_type, x_names, N_X, x) < 0 || slot_offsets((PyTypeObject *)up_type, u_names, N_U, u) < 0
        || slot_offsets((PyTypeObject *)pool_type, b_names, N_B, b) < 0
        || slot_offsets((PyTypeObject *)down_type, w_names, N_W, w) < 0 || slot_offset(S.ctx_type, "end", &c_end) < 0)
        return NULL;
    if (((PyTypeObject *)up_type)->tp_dictoffset != 0 || ((PyTypeObject *)pool_type)->tp_dictoffset != 0
        || ((PyTypeObject *)down_type)->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "setup_read: the classes must have no __dict__");
        return NULL;
    }
    PyObject *method = PyDescr_NewMethod((PyTypeObject *)up_type, &up_data_received_def);
    if (method == NULL)
        return NULL;
    U.ready = 0;
    memcpy(U.x, x, sizeof(x));
    memcpy(U.u, u, sizeof(u));
    memcpy(U.b, b, sizeof(b));
    memcpy(U.w, w, sizeof(w));
    U.c_end = c_end;
    U.sent = st[0], U.responding = st[1], U.tunnel = st[2], U.done = st[3];
    Py_XSETREF(S.responding_obj, PyLong_FromLong(st[1]));
    Py_XSETREF(S.done_obj, PyLong_FromLong(st[3]));
    if (S.responding_obj == NULL || S.done_obj == NULL) {
        Py_DECREF(method);
        return NULL;
    }
    Py_INCREF(up_type); Py_XSETREF(U.up_type, (PyTypeObject *)up_type);
    Py_INCREF(pool_type); Py_XSETREF(U.pool_type, (PyTypeObject *)pool_type);
    Py_INCREF(down_type); Py_XSETREF(U.down_type, (PyTypeObject *)down_type);
    Py_INCREF(deque_type); Py_XSETREF(U.deque_type, (PyTypeObject *)deque_type);
    Py_INCREF(error); Py_XSETREF(U.parser_error, error);
    Py_INCREF(ff); Py_XSETREF(U.feed_fast, ff);
    Py_INCREF(py); Py_XSETREF(U.py_data_received, py);
    U.ex_names[M_UPSTREAM_DATA] = s_upstream_data, U.ex_names[M_READ_OVER] = s_read_over;
    U.ex_names[M_DONE_PLAIN] = s_done_plain;
    U.down_names[M_WRITE] = s_write, U.down_names[M_RESPONSE_OVER] = s_response_over;
    for (int i = 0; i < N_MX; i++)
        Py_XSETREF(U.ex_fns[i], Py_NewRef(PyTuple_GET_ITEM(xf, i)));
    for (int i = 0; i < N_MD; i++)
        Py_XSETREF(U.down_fns[i], Py_NewRef(PyTuple_GET_ITEM(df, i)));
    U.ex_tag = U.down_tag = 0;
    U.ready = 1;
    return method;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(Exchange, RequestContext, HttpResponseParser, globals, response_fields, render_head, "
     "clear_timer, py_methods): the C callbacks, as methods of Exchange."},
    {"setup_down", setup_down, METH_VARARGS,
     "setup_down(Downstream, keep_alive_after): inline Downstream.keep_alive_after."},
    {"setup_fast", setup_fast, METH_VARARGS,
     "setup_fast(HttpParserCallbackError, UNFED): feed_fast on (after setup)."},
    {"feed_fast", (PyCFunction)(void (*)(void))feed_fast, METH_FASTCALL,
     "feed_fast(ex, data): a whole plain response's callbacks made here (True), or nothing done (False)."},
    {"setup_node_slots", setup_node_slots, METH_O, "setup_node_slots(Node): its slots read by offset."},
    {"setup_read", setup_read, METH_VARARGS,
     "setup_read(UpstreamConnection, BackendPool, Downstream, deque, HttpParserError, feed_fast, states, "
     "data_received_py, exchange_methods, downstream_methods): UpstreamConnection.data_received in C."},
    {"ended_count", ended_count, METH_NOARGS, "ended_count(): responses ended by the C data_received (for the tests)."},
    {"scan", scan, METH_O, "scan(data): what feed_fast makes of a response, or None (for the tests)."},
    {"fast_count", fast_count, METH_NOARGS, "fast_count(): responses feed_fast has taken (for the tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_response", "Exchange's response callbacks in C (see _response.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__response(void)
{
    struct { PyObject **p; const char *s; } names[] = {
        {&s_get_status_code, "get_status_code"}, {&s_should_keep_alive, "should_keep_alive"},
        {&s_via_header, "via_header"}, {&s_snapshot, "snapshot"}, {&s_config, "config"},
        {&s_debug_headers, "debug_headers"}, {&s_deadlines, "deadlines"}, {&s_discard, "discard"},
        {&s_trusted_peer, "trusted_peer"}, {&s_keep_alive_after, "keep_alive_after"},
        {&s_draining, "draining"}, {&s_fields_name, "_response_fields"}, {&s_reasons, "REASONS"},
        {&s_render_head, "_render_head"}, {&s_clear_timer, "_clear_timer"}, {&s_append, "append"},
        {&s_resp_no_body, "resp_no_body"}, {&s_down, "down"}, {&s_on_message_begin, "on_message_begin"},
        {&s_on_status, "on_status"}, {&s_on_header, "on_header"}, {&s_on_headers_complete, "on_headers_complete"},
        {&s_on_body, "on_body"}, {&s_on_message_complete, "on_message_complete"},
        {&s_upstream_data, "upstream_data"}, {&s_read_on, "_read_on"}, {&s_read_over, "_read_over"},
        {&s_done_plain, "_done_plain"},
        {&s_write, "write"}, {&s_response_over, "_response_over"}, {&s_feed_llhttp, "_feed_llhttp"},
        {&s_parse_failed, "_parse_failed"}, {&s_feed_fast, "_feed_fast"}, {&s_now, "now"},
        {&s_is_closing, "is_closing"}, {&s_resume_reading, "resume_reading"}, {&s_selector, "selector"},
        {&s_on_done, "on_done"}, {&s_stats, "stats"}, {&s_requests, "requests"}, {&s_errors, "errors"},
        {&s_finished, "_finished"}, {&s_close, "_close"}, {&s_advance, "_advance"},
        {&s_upstream_full, "upstream-full"}, {&s_connecting, "connecting"}, {&u_5xx, "5xx"}, {&u_ok, "ok"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (*names[i].p == NULL && (*names[i].p = PyUnicode_InternFromString(names[i].s)) == NULL)
            return NULL;
    if (S.zero == NULL && ((S.zero = PyLong_FromLong(0)) == NULL || (S.zero_float = PyFloat_FromDouble(0.0)) == NULL
                           || (S.i500 = PyLong_FromLong(500)) == NULL || (i_one = PyLong_FromLong(1)) == NULL
                           || (S.empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL))
        return NULL;
    if (PyType_Ready(&ParsedType) < 0)
        return NULL;
    init_classes();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "Parsed", (PyObject *)&ParsedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
