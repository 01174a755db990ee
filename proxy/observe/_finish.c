/* proxy.observe._finish: finish.observe_and_log in C.
 *
 * Why C: the Python version is ~70 bytecode statements a request (2.3 us in
 * loadtests/bench_observe.py, ~4 us in the core bench, where every request
 * runs it with cold caches); issue 7's budget is 3 us. This does the same
 * steps with the same objects: the metrics record (a list) in
 * m._requests, m._clients, a._rec/_rec_short, orjson for the JSON and
 * a._buf for the bytes. JSON escaping stays orjson's.
 *
 * Contract: the result (lines, deltas, counters) is exactly the Python
 * function's; tests/unit/observe/test_observe_finish.py runs both on the
 * same random contexts. Anything this file does not expect (a context of
 * another class, a status that is not an int, times that are not floats,
 * an unset slot) goes to the Python function, before anything is changed.
 *
 * setup() is called once by finish.py with the Python side's constants, so
 * the layout (record indices, bounds, tables) has one source: finish.py and
 * metrics.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <string.h>

enum { F_ROUTE, F_STATUS, F_REGION, F_BACKEND, F_START, F_END, F_BYTES_IN, F_BYTES_OUT,
       F_UP_AT, F_UP_START, F_GEO, F_VERDICTS, F_ERROR, F_RETRIES, F_ID, F_CLIENT,
       F_METHOD, F_HOST, F_PATH, N_FIELDS };
static const char *field_names[N_FIELDS] = {
    "route", "status", "region", "backend", "start", "end", "bytes_in", "bytes_out",
    "upstream_headers_at", "upstream_start", "geo", "verdicts", "error", "retries",
    "request_id", "client_ip", "method", "host", "path"};

#define MAX_BOUNDS 64

typedef struct {
    int ready;
    PyTypeObject *ctx_type;
    PyMemberDef *members[N_FIELDS];
    PyObject *py_fallback;      /* finish._observe_and_log_py */
    PyObject *new_record;       /* metrics.new_record */
    PyObject *tail_fragment;    /* finish.tail_fragment */
    PyObject *tail_text;        /* finish.tail_text */
    PyObject *classes;          /* tuple: status 0..599 -> class label */
    PyObject *other;            /* "other" */
    PyObject *none_label;       /* metrics.NONE */
    PyObject *millis;           /* tuple of ".000Z".. */
    PyObject *dumps;            /* orjson.dumps */
    PyObject *dumps_kwnames;    /* ("option",) */
    PyObject *option;           /* OPT_APPEND_NEWLINE */
    PyObject *no_geo;           /* (None, None) */
    PyObject *one;
    PyObject *zero;
    double bounds[MAX_BOUNDS];
    Py_ssize_t n_bounds;
    Py_ssize_t r_lat, r_lat_sum, r_up, r_up_sum, r_frag, r_tail, max_path;
    Py_ssize_t r_len;   /* a full record's length: every index above is below it */
    /* interned attribute and key names */
    PyObject *s_requests, *s_clients, *s_wall_offset, *s_sec, *s_sec_text, *s_time_text,
        *s_rec, *s_rec_short, *s_buf, *s_buf_bytes, *s_buf_lines, *s_overflow, *s_format,
        *s_count_rare, *s_name, *s_country, *s_continent;
    PyObject *k_time, *k_id, *k_client, *k_country, *k_method, *k_host, *k_path, *k_status,
        *k_bytes_in, *k_bytes_out, *k_total_ms, *k_upstream_ms, *k_route, *k_region,
        *k_backend, *k_verdicts, *k_error, *k_retries;
} State;

static State S;

/* the offset of an object slot `name` of `type`; 0 (no error set) when it is not one */
static int
slot_offset_quiet(PyTypeObject *type, const char *name, Py_ssize_t *off)
{
    PyObject *d = PyDict_GetItemString(type->tp_dict, name);
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)
        || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX)
        return 0;
    *off = ((PyMemberDescrObject *)d)->d_member->offset;
    return 1;
}

static int set_attr_ssize(PyObject *o, PyObject *name, Py_ssize_t v);

/* Attributes of the metrics and the access log: by slot offset when the
 * object is exactly the class setup() was given (no look-up a request),
 * else by name. */
static struct {
    PyTypeObject *type;
    Py_ssize_t off[16];
} SA, SM;

static PyObject *
get_attr(PyObject *o, PyObject *name, int i, int is_log)
{
    if (is_log ? Py_TYPE(o) == SA.type : Py_TYPE(o) == SM.type) {
        PyObject *v = *(PyObject **)((char *)o + (is_log ? SA.off[i] : SM.off[i]));
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(o, name);
}

static int
set_log_ssize(PyObject *a, PyObject *name, int i, Py_ssize_t v)
{
    if (Py_TYPE(a) != SA.type)
        return set_attr_ssize(a, name, v);
    PyObject *x = PyLong_FromSsize_t(v);
    if (x == NULL)
        return -1;
    PyObject **slot = (PyObject **)((char *)a + SA.off[i]);
    PyObject *old = *slot;
    *slot = x;
    Py_XDECREF(old);
    return 0;
}

enum { LA_BUF, LA_BUF_BYTES, LA_BUF_LINES, LA_WALL, LA_SEC, LA_SEC_TEXT, LA_REC, LA_REC_SHORT, N_LA };
static const char *la_names[N_LA] = {"_buf", "_buf_bytes", "_buf_lines", "_wall_offset", "_sec",
                                     "_sec_text", "_rec", "_rec_short"};
enum { LM_REQUESTS, LM_CLIENTS, N_LM };
static const char *lm_names[N_LM] = {"_requests", "_clients"};

#define A_GET(a, attr, i) get_attr((a), S.attr, (i), 1)
#define M_GET(m, attr, i) get_attr((m), S.attr, (i), 0)

/* the classes' slots, or none (then every access is by name) */
static void
resolve_slots(PyObject *log_type, PyObject *metrics_type)
{
    Py_ssize_t off[16];
    int ok = PyType_Check(log_type);
    for (int i = 0; ok && i < N_LA; i++)
        ok = slot_offset_quiet((PyTypeObject *)log_type, la_names[i], &off[i]);
    Py_CLEAR(SA.type);
    if (ok) {
        memcpy(SA.off, off, sizeof(off));
        SA.type = (PyTypeObject *)Py_NewRef(log_type);
    }
    ok = PyType_Check(metrics_type);
    for (int i = 0; ok && i < N_LM; i++)
        ok = slot_offset_quiet((PyTypeObject *)metrics_type, lm_names[i], &off[i]);
    Py_CLEAR(SM.type);
    if (ok) {
        memcpy(SM.off, off, sizeof(off));
        SM.type = (PyTypeObject *)Py_NewRef(metrics_type);
    }
}


static PyObject *
intern(const char *s)
{
    return PyUnicode_InternFromString(s);
}

/* setup(ctx_type, py_fallback, new_record, tail_fragment, tail_text, classes, millis, bounds,
 *       (r_lat, r_lat_sum, r_up, r_up_sum, r_frag, r_tail), max_path, dumps, option, none_label) */
static PyObject *
setup(PyObject *self, PyObject *args)
{
    PyObject *ctx_type, *fallback, *new_record, *tail_fragment, *tail_text, *classes, *millis,
        *bounds, *dumps, *option, *none_label;
    Py_ssize_t r_lat, r_lat_sum, r_up, r_up_sum, r_frag, r_tail, max_path;
    double bounds_d[MAX_BOUNDS];
    PyMemberDef *members[N_FIELDS];
    S.ready = 0;   /* until everything is checked: a failed setup leaves the Python version */
    PyObject *log_type = Py_None, *metrics_type = Py_None;
    if (!PyArg_ParseTuple(args, "O!OOOOO!O!O!(nnnnnn)nOOU|OO:setup", &PyType_Type, &ctx_type,
                          &fallback, &new_record, &tail_fragment, &tail_text, &PyTuple_Type, &classes,
                          &PyTuple_Type, &millis, &PyTuple_Type, &bounds, &r_lat, &r_lat_sum,
                          &r_up, &r_up_sum, &r_frag, &r_tail, &max_path, &dumps, &option, &none_label,
                          &log_type, &metrics_type))
        return NULL;
    if (PyTuple_GET_SIZE(classes) != 600 || PyTuple_GET_SIZE(millis) != 1001) {
        PyErr_SetString(PyExc_ValueError, "setup: classes must have 600 entries and millis 1001");
        return NULL;
    }
    Py_ssize_t nb = PyTuple_GET_SIZE(bounds);
    if (nb > MAX_BOUNDS) {
        PyErr_SetString(PyExc_ValueError, "setup: too many latency bounds");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        double b = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, i));
        if (b == -1.0 && PyErr_Occurred())
            return NULL;
        bounds_d[i] = b;
    }
    for (Py_ssize_t i = 0; i < 1001; i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(millis, i))) {
            PyErr_SetString(PyExc_TypeError, "setup: millis must hold str");
            return NULL;
        }
    }
    /* the record layout: [count, in, out, buckets..., sum, buckets..., sum, frag, tail] */
    if (!(r_lat > 2 && r_lat + nb < r_lat_sum && r_lat_sum < r_up && r_up + nb < r_up_sum
          && r_up_sum < r_frag && r_up_sum < r_tail && max_path >= 0)) {
        PyErr_SetString(PyExc_ValueError, "setup: inconsistent record layout");
        return NULL;
    }
    PyObject *dict = ((PyTypeObject *)ctx_type)->tp_dict;
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *d = PyDict_GetItemString(dict, field_names[i]);
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "setup: %s.%s is not a slot",
                         ((PyTypeObject *)ctx_type)->tp_name, field_names[i]);
            return NULL;
        }
        members[i] = ((PyMemberDescrObject *)d)->d_member;
        if (members[i]->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "setup: slot %s is not an object slot", field_names[i]);
            return NULL;
        }
    }
    memcpy(S.bounds, bounds_d, nb * sizeof(double));
    memcpy(S.members, members, sizeof(members));
    S.n_bounds = nb;
    S.r_lat = r_lat; S.r_lat_sum = r_lat_sum; S.r_up = r_up; S.r_up_sum = r_up_sum;
    S.r_frag = r_frag; S.r_tail = r_tail; S.max_path = max_path;
    S.r_len = (r_frag > r_tail ? r_frag : r_tail) + 1;
    Py_INCREF(ctx_type); Py_XSETREF(S.ctx_type, (PyTypeObject *)ctx_type);
    Py_INCREF(fallback); Py_XSETREF(S.py_fallback, fallback);
    Py_INCREF(new_record); Py_XSETREF(S.new_record, new_record);
    Py_INCREF(tail_fragment); Py_XSETREF(S.tail_fragment, tail_fragment);
    Py_INCREF(tail_text); Py_XSETREF(S.tail_text, tail_text);
    Py_INCREF(classes); Py_XSETREF(S.classes, classes);
    Py_INCREF(millis); Py_XSETREF(S.millis, millis);
    Py_INCREF(dumps); Py_XSETREF(S.dumps, dumps);
    Py_INCREF(option); Py_XSETREF(S.option, option);
    Py_INCREF(none_label); Py_XSETREF(S.none_label, none_label);
    resolve_slots(log_type, metrics_type);
    S.ready = 1;
    Py_RETURN_NONE;
}

/* r[i] += v, for the record list r */
static int
list_add(PyObject *r, Py_ssize_t i, PyObject *v)
{
    if (i >= PyList_GET_SIZE(r)) {
        PyErr_SetString(PyExc_IndexError, "metrics record too short");
        return -1;
    }
    PyObject *old = Py_NewRef(PyList_GET_ITEM(r, i));
    PyObject *sum = PyNumber_Add(old, v);   /* may run Python code: r may change */
    Py_DECREF(old);
    if (sum == NULL)
        return -1;
    return PyList_SetItem(r, i, sum);   /* steals sum; IndexError if r shrank */
}

/* r[i] += 1 */
static int
list_inc(PyObject *r, Py_ssize_t i)
{
    if (i >= PyList_GET_SIZE(r)) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return -1;
    }
    PyObject *old = PyList_GET_ITEM(r, i);
    if (PyLong_CheckExact(old)) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(old, &overflow);
        if (!overflow && v < LONG_MAX) {
            PyObject *x = PyLong_FromLong(v + 1);
            if (x == NULL)
                return -1;
            return PyList_SetItem(r, i, x);
        }
    }
    PyObject *one = PyLong_FromLong(1);
    if (one == NULL)
        return -1;
    int rc = list_add(r, i, one);
    Py_DECREF(one);
    return rc;
}

/* r[i] += t, a float */
static int
list_add_float(PyObject *r, Py_ssize_t i, double t)
{
    if (i >= PyList_GET_SIZE(r)) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return -1;
    }
    PyObject *old = PyList_GET_ITEM(r, i);
    PyObject *x;
    if (PyFloat_CheckExact(old)) {
        if ((x = PyFloat_FromDouble(PyFloat_AS_DOUBLE(old) + t)) == NULL)
            return -1;
        return PyList_SetItem(r, i, x);
    }
    if ((x = PyFloat_FromDouble(t)) == NULL)
        return -1;
    int rc = list_add(r, i, x);
    Py_DECREF(x);
    return rc;
}

static Py_ssize_t
bucket(double t)
{
    /* bisect_left: the first bound >= t */
    Py_ssize_t lo = 0, hi = S.n_bounds;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (S.bounds[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* trunc(t * 1e6 + 0.5): the microseconds that Python's line shows as
 * trunc(...) / 1000 ms (the same double for t < 2**53 us). + 0.0: Python's
 * int 0 for a trunc of (-1, 0) gives 0.0, not -0.0. */
static double
micros(double t)
{
    return trunc(t * 1e6 + 0.5) + 0.0;
}

static int
set_attr_ssize(PyObject *o, PyObject *name, Py_ssize_t v)
{
    PyObject *x = PyLong_FromSsize_t(v);
    if (x == NULL)
        return -1;
    int rc = PyObject_SetAttr(o, name, x);
    Py_DECREF(x);
    return rc;
}

/* -- the line without orjson ------------------------------------------------
 * Most lines need no JSON escaping at all: ASCII strings without quotes,
 * backslashes or control characters, ints, and times in whole microseconds.
 * Those are written here straight into the buffer, byte for byte what
 * orjson makes of the same record (the tests compare the two); any other
 * line goes to orjson. */

typedef struct {
    const char *p;
    Py_ssize_t n;
} Seg;

#define MAX_SEGS 48

typedef struct {
    Seg s[MAX_SEGS];
    int n;
    Py_ssize_t len;
} Line;

static void
put(Line *l, const char *p, Py_ssize_t n)
{
    l->s[l->n].p = p;
    l->s[l->n].n = n;
    l->n++;
    l->len += n;
}

#define PUT_LIT(l, lit) put((l), (lit), (Py_ssize_t)sizeof(lit) - 1)

/* AccessLog.log for a line given as segments (`line`: the same line as a
 * bytes object, when the caller has one): copied into the buffer at
 * _buf_bytes, or handed to _overflow when it does not fit. 0, or -1 with an
 * exception set. */
static int
buffer_line(PyObject *a, const Line *l, PyObject *line)
{
    int rc = -1;
    PyObject *buf = NULL, *pos_obj = NULL, *lines_obj = NULL, *owned = NULL;
    if ((buf = A_GET(a, s_buf, LA_BUF)) == NULL || (pos_obj = A_GET(a, s_buf_bytes, LA_BUF_BYTES)) == NULL
        || (lines_obj = A_GET(a, s_buf_lines, LA_BUF_LINES)) == NULL)
        goto done;
    if (!PyByteArray_Check(buf)) {
        PyErr_SetString(PyExc_TypeError, "access log buffer is not a bytearray");
        goto done;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(pos_obj);
    Py_ssize_t nlines = PyLong_AsSsize_t(lines_obj);
    if ((pos == -1 || nlines == -1) && PyErr_Occurred())
        goto done;
    Py_ssize_t size = PyByteArray_GET_SIZE(buf);
    if (pos >= 0 && pos <= size && l->len <= size - pos) {
        char *out = PyByteArray_AS_STRING(buf) + pos;
        for (int i = 0; i < l->n; i++) {
            memcpy(out, l->s[i].p, l->s[i].n);
            out += l->s[i].n;
        }
        if (set_log_ssize(a, S.s_buf_bytes, LA_BUF_BYTES, pos + l->len) < 0
            || set_log_ssize(a, S.s_buf_lines, LA_BUF_LINES, nlines + 1) < 0)
            goto done;
    } else {   /* does not fit: as a bytes line, through _overflow */
        if (line == NULL) {
            if ((owned = line = PyBytes_FromStringAndSize(NULL, l->len)) == NULL)
                goto done;
            char *out = PyBytes_AS_STRING(line);
            for (int i = 0; i < l->n; i++) {
                memcpy(out, l->s[i].p, l->s[i].n);
                out += l->s[i].n;
            }
        }
        PyObject *x = PyObject_CallMethodOneArg(a, S.s_overflow, line);
        if (x == NULL)
            goto done;
        Py_DECREF(x);
    }
    rc = 0;
done:
    Py_XDECREF(buf); Py_XDECREF(pos_obj); Py_XDECREF(lines_obj); Py_XDECREF(owned);
    return rc;
}

/* A str (or None) that JSON writes as it is, quoted: 0 when it needs orjson. */
static int
put_str(Line *l, PyObject *o)
{
    if (o == Py_None) {
        PUT_LIT(l, "null");
        return 1;
    }
    if (!PyUnicode_CheckExact(o) || !PyUnicode_IS_COMPACT_ASCII(o))
        return 0;
    const unsigned char *d = PyUnicode_1BYTE_DATA(o);
    Py_ssize_t n = PyUnicode_GET_LENGTH(o);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = d[i];
        if (c < 0x20 || c == '"' || c == '\\')
            return 0;
    }
    PUT_LIT(l, "\"");
    put(l, (const char *)d, n);
    PUT_LIT(l, "\"");
    return 1;
}

/* decimal digits of v into the end of buf[24]; returns the start */
static char *
digits(unsigned long long v, char *end)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

/* an exact int as orjson writes it; 0 when it is not one or does not fit */
static int
put_int(Line *l, PyObject *o, char *buf /* [24] */)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    char *end = buf + 24;
    char *p = digits(v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v, end);
    if (v < 0)
        *--p = '-';
    put(l, p, end - p);
    return 1;
}

/* us / 1000 as orjson writes that float: the shortest round-trip form,
 * which for |us| < 1e15 is the exact decimal without trailing zeros (any
 * other number with at most 3 decimals is 0.001 away, far outside the
 * double's rounding interval). */
static int
put_ms(Line *l, double us, char *buf /* [32] */)
{
    if (!(us > -1e15 && us < 1e15))
        return 0;
    long long u = (long long)us;
    unsigned long long a = u < 0 ? 0ULL - (unsigned long long)u : (unsigned long long)u;
    char *end = buf + 32;
    unsigned frac = (unsigned)(a % 1000);
    char *p = end;
    if (frac == 0) {
        *--p = '0';
    } else {
        char f3[3] = {(char)('0' + frac / 100), (char)('0' + frac / 10 % 10), (char)('0' + frac % 10)};
        int k = 3;
        while (f3[k - 1] == '0')
            k--;
        while (k)
            *--p = f3[--k];
    }
    *--p = '.';
    p = digits(a / 1000, p);
    if (u < 0)
        *--p = '-';
    put(l, p, end - p);
    return 1;
}

static int
write_fast(PyObject *a, PyObject **f, PyObject *country, double sec, double now,
           double total_us, int has_up, double up_us, PyObject *tail)
{
    Line l;
    l.n = 0;
    l.len = 0;
    char nb[3][24], mb[2][32];
    int rc = -1;
    PyObject *sec_text = NULL;

    if (f[F_PATH] != Py_None && PyUnicode_CheckExact(f[F_PATH])
        && PyUnicode_GET_LENGTH(f[F_PATH]) > S.max_path)
        return 0;   /* cut to max_path: orjson's path */
    if ((sec_text = A_GET(a, s_sec_text, LA_SEC_TEXT)) == NULL)
        return -1;
    double msf = trunc((now - sec) * 1000 + 1e-4);
    Py_ssize_t ms = msf < 0 ? 0 : msf > 1000 ? 1000 : (Py_ssize_t)msf;
    PyObject *millis = PyTuple_GET_ITEM(S.millis, ms);
    if (!PyUnicode_CheckExact(sec_text) || !PyUnicode_IS_COMPACT_ASCII(sec_text)
        || !PyUnicode_IS_COMPACT_ASCII(millis))
        goto slow;
    PUT_LIT(&l, "{\"time\":\"");
    put(&l, (const char *)PyUnicode_1BYTE_DATA(sec_text), PyUnicode_GET_LENGTH(sec_text));
    put(&l, (const char *)PyUnicode_1BYTE_DATA(millis), PyUnicode_GET_LENGTH(millis));
    PUT_LIT(&l, "\",\"id\":");
    if (!put_str(&l, f[F_ID]))
        goto slow;
    PUT_LIT(&l, ",\"client\":");
    if (!put_str(&l, f[F_CLIENT]))
        goto slow;
    PUT_LIT(&l, ",\"country\":");
    if (!put_str(&l, country))
        goto slow;
    PUT_LIT(&l, ",\"method\":");
    if (!put_str(&l, f[F_METHOD]))
        goto slow;
    PUT_LIT(&l, ",\"host\":");
    if (!put_str(&l, f[F_HOST]))
        goto slow;
    PUT_LIT(&l, ",\"path\":");
    if (!put_str(&l, f[F_PATH]))
        goto slow;
    PUT_LIT(&l, ",\"status\":");
    if (!put_int(&l, f[F_STATUS], nb[0]))
        goto slow;
    PUT_LIT(&l, ",\"bytes_in\":");
    if (!put_int(&l, f[F_BYTES_IN], nb[1]))
        goto slow;
    PUT_LIT(&l, ",\"bytes_out\":");
    if (!put_int(&l, f[F_BYTES_OUT], nb[2]))
        goto slow;
    PUT_LIT(&l, ",\"total_ms\":");
    if (!put_ms(&l, total_us, mb[0]))
        goto slow;
    PUT_LIT(&l, ",\"upstream_ms\":");
    if (!has_up)
        PUT_LIT(&l, "null");
    else if (!put_ms(&l, up_us, mb[1]))
        goto slow;
    PUT_LIT(&l, ",\"route\":");
    put(&l, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
    PUT_LIT(&l, "}\n");

    /* -- into the buffer (AccessLog.log) -- */
    if (buffer_line(a, &l, NULL) < 0)
        goto done;
    rc = 1;
    goto done;
slow:
    rc = 0;
done:
    Py_XDECREF(sec_text);
    return rc;
}

static PyObject *
fallback(PyObject *m, PyObject *a, PyObject *ctx)
{
    if (S.py_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_finish.setup() has not been called");
        return NULL;
    }
    return PyObject_CallFunctionObjArgs(S.py_fallback, m, a, ctx, NULL);
}

static PyObject *
observe_and_log(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "observe_and_log(m, a, ctx)");
        return NULL;
    }
    PyObject *m = args[0], *a = args[1], *ctx = args[2];
    if (!S.ready || Py_TYPE(ctx) != S.ctx_type)
        return fallback(m, a, ctx);

    /* Borrowed views of the slots. Every slot must be set and have the
     * expected type; otherwise the Python function decides (and raises as
     * Python would). */
    PyObject *f[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        f[i] = *(PyObject **)((char *)ctx + S.members[i]->offset);
        if (f[i] == NULL)
            return fallback(m, a, ctx);
    }
    if (!PyLong_CheckExact(f[F_STATUS]) || !PyFloat_CheckExact(f[F_START])
        || !PyFloat_CheckExact(f[F_END]) || !PyFloat_CheckExact(f[F_UP_AT])
        || !PyFloat_CheckExact(f[F_UP_START]) || !PyLong_CheckExact(f[F_BYTES_IN])
        || !PyLong_CheckExact(f[F_BYTES_OUT]) || !PyLong_CheckExact(f[F_RETRIES])
        || !PyUnicode_CheckExact(f[F_PATH]))
        return fallback(m, a, ctx);
    double start = PyFloat_AS_DOUBLE(f[F_START]);
    double end = PyFloat_AS_DOUBLE(f[F_END]);
    double up_at = PyFloat_AS_DOUBLE(f[F_UP_AT]);
    /* no end (timed to "now" by the metrics clock) or a time Python's trunc
     * and floor would raise on: rare, the Python path */
    if (end == 0.0 || !isfinite(start) || !isfinite(end) || !isfinite(up_at)
        || !isfinite(PyFloat_AS_DOUBLE(f[F_UP_START])) || !isfinite((end - start) * 1e6 + 0.5)
        || (up_at != 0.0 && !isfinite((up_at - PyFloat_AS_DOUBLE(f[F_UP_START])) * 1e6 + 0.5)))
        return fallback(m, a, ctx);
    /* own the fields: the calls below run Python code (attribute and dict
     * look-ups), which must not be able to free them under us */
    for (int i = 0; i < N_FIELDS; i++)
        Py_INCREF(f[i]);
    int overflow = 0;
    long status = PyLong_AsLongAndOverflow(f[F_STATUS], &overflow);

    PyObject *result = NULL;
    PyObject *rname = NULL, *key = NULL, *requests = NULL, *r = NULL, *clients = NULL,
        *gkey = NULL, *country = NULL, *total_ms = NULL, *upstream_ms = NULL,
        *wall = NULL, *asec = NULL, *rec = NULL, *frag = NULL, *sec_text = NULL,
        *time_text = NULL, *path = NULL, *line = NULL;

    /* -- metrics (WorkerMetrics.observe) -- */
    PyObject *route = f[F_ROUTE];
    if (route == Py_None) {
        rname = Py_NewRef(Py_None);
    } else if ((rname = PyObject_GetAttr(route, S.s_name)) == NULL) {
        goto done;
    }
    PyObject *cls = (!overflow && status >= 0 && status < 600)
        ? PyTuple_GET_ITEM(S.classes, status) : S.other;
    key = PyTuple_Pack(4, rname, f[F_REGION], f[F_BACKEND], cls);
    if (key == NULL || (requests = M_GET(m, s_requests, LM_REQUESTS)) == NULL)
        goto done;
    r = PyDict_GetItemWithError(requests, key);
    if (r != NULL) {
        Py_INCREF(r);
    } else {
        if (PyErr_Occurred() || (r = PyObject_CallNoArgs(S.new_record)) == NULL)
            goto done;
        if (PyDict_SetItem(requests, key, r) < 0)
            goto done;
    }
    if (!PyList_CheckExact(r) || PyList_GET_SIZE(r) < S.r_len) {
        /* not a record new_record() made: the Python version (nothing changed yet) */
        result = fallback(m, a, ctx);
        goto done;
    }
    if (PyObject_IsTrue(f[F_BYTES_IN]) && list_add(r, 1, f[F_BYTES_IN]) < 0)
        goto done;
    if (list_add(r, 2, f[F_BYTES_OUT]) < 0)
        goto done;
    double t = end - start;
    double total_us = micros(t), up_us = 0.0;
    /* the record's list is exactly as long as new_record() makes it (checked above) */
    if (list_inc(r, S.r_lat + bucket(t)) < 0 || list_add_float(r, S.r_lat_sum, t) < 0)
        goto done;
    if (up_at != 0.0) {
        t = up_at - PyFloat_AS_DOUBLE(f[F_UP_START]);
        if (list_inc(r, S.r_up + bucket(t)) < 0 || list_add_float(r, S.r_up_sum, t) < 0)
            goto done;
        up_us = micros(t);
    }
    PyObject *geo = f[F_GEO];
    if (geo != Py_None) {
        if ((country = PyObject_GetAttr(geo, S.s_country)) == NULL)
            goto done;
        PyObject *continent = PyObject_GetAttr(geo, S.s_continent);
        if (continent == NULL)
            goto done;
        gkey = PyTuple_Pack(2, country, continent);
        Py_DECREF(continent);
        if (gkey == NULL)
            goto done;
    } else {
        country = Py_NewRef(Py_None);
        gkey = Py_NewRef(S.no_geo);
    }
    if ((clients = M_GET(m, s_clients, LM_CLIENTS)) == NULL)
        goto done;
    {
        PyObject *n = PyDict_GetItemWithError(clients, gkey);
        if (n == NULL && PyErr_Occurred())
            goto done;
        PyObject *n1 = PyNumber_Add(n != NULL ? n : S.zero, S.one);
        if (n1 == NULL)
            goto done;
        int rc = PyDict_SetItem(clients, gkey, n1);
        Py_DECREF(n1);
        if (rc < 0)
            goto done;
    }

    /* -- access log line (AccessLog.format) -- */
    if ((wall = A_GET(a, s_wall_offset, LA_WALL)) == NULL)
        goto done;
    double wall_d = PyFloat_AsDouble(wall);
    if (wall_d == -1.0 && PyErr_Occurred())
        goto done;
    double now = end + wall_d;
    double sec = floor(now);
    if ((asec = A_GET(a, s_sec, LA_SEC)) == NULL)
        goto done;
    {
        int same;
        if (PyLong_CheckExact(asec)) {
            int overflow;
            long long have = PyLong_AsLongLongAndOverflow(asec, &overflow);
            same = !overflow && (double)have == sec;
        } else {
            PyObject *secobj = PyLong_FromDouble(sec);
            if (secobj == NULL)
                goto done;
            same = PyObject_RichCompareBool(asec, secobj, Py_EQ);
            Py_DECREF(secobj);
            if (same < 0)
                goto done;
        }
        if (!same) {
            PyObject *nowobj = PyFloat_FromDouble(now);
            if (nowobj == NULL)
                goto done;
            PyObject *x = PyObject_CallMethodOneArg(a, S.s_time_text, nowobj);
            Py_DECREF(nowobj);
            if (x == NULL)
                goto done;
            Py_DECREF(x);
        }
    }
    int rare = PyObject_IsTrue(f[F_VERDICTS]);
    if (rare < 0)
        goto done;
    if (rare || f[F_ERROR] != Py_None || PyObject_IsTrue(f[F_RETRIES])) {
        PyObject *x = PyObject_CallMethodObjArgs(
            m, S.s_count_rare, rname == Py_None ? S.none_label : rname,
            f[F_VERDICTS], f[F_ERROR], f[F_RETRIES], NULL);
        if (x == NULL)
            goto done;
        Py_DECREF(x);
        frag = Py_NewRef(Py_False);
    } else {
        /* the fast line's tail, only for labels that are None or str (equal keys
         * of other types, 1 and True, would share a tail and print differently) */
        if ((rname == Py_None || PyUnicode_CheckExact(rname))
            && (f[F_REGION] == Py_None || PyUnicode_CheckExact(f[F_REGION]))
            && (f[F_BACKEND] == Py_None || PyUnicode_CheckExact(f[F_BACKEND]))) {
            if (PyList_GET_SIZE(r) < S.r_len) {   /* Python code ran (drain): as Python fails */
                PyErr_SetString(PyExc_IndexError, "list index out of range");
                goto done;
            }
            PyObject *tail = Py_NewRef(PyList_GET_ITEM(r, S.r_tail));
            if (tail == Py_None) {
                Py_DECREF(tail);
                if ((tail = PyObject_CallFunctionObjArgs(S.tail_text, rname, f[F_REGION],
                                                         f[F_BACKEND], NULL)) == NULL)
                    goto done;
                Py_INCREF(tail);
                if (PyList_SetItem(r, S.r_tail, tail) < 0) {   /* the record keeps one */
                    Py_DECREF(tail);
                    goto done;
                }
            }
            int rc = PyBytes_CheckExact(tail)
                ? write_fast(a, f, country, sec, now, total_us, up_at != 0.0, up_us, tail) : 0;
            Py_DECREF(tail);
            if (rc < 0)
                goto done;
            if (rc > 0) {
                result = Py_NewRef(Py_None);
                goto done;
            }
        }
        if (PyList_GET_SIZE(r) < S.r_len) {
            PyErr_SetString(PyExc_IndexError, "list index out of range");
            goto done;
        }
        frag = Py_NewRef(PyList_GET_ITEM(r, S.r_frag));
        if (frag == Py_None) {
            Py_SETREF(frag, PyObject_CallFunctionObjArgs(S.tail_fragment, rname, f[F_REGION],
                                                         f[F_BACKEND], NULL));
            if (frag == NULL)
                goto done;
            Py_INCREF(frag);
            if (PyList_SetItem(r, S.r_frag, frag) < 0)   /* the record keeps one */
                goto done;
        }
    }
    if ((total_ms = PyFloat_FromDouble(total_us / 1000.0)) == NULL)
        goto done;
    if (up_at != 0.0) {
        if ((upstream_ms = PyFloat_FromDouble(up_us / 1000.0)) == NULL)
            goto done;
    } else {
        upstream_ms = Py_NewRef(Py_None);
    }
    int have_frag = PyObject_IsTrue(frag);
    if (have_frag < 0)
        goto done;
    if (have_frag) {
        if ((rec = A_GET(a, s_rec_short, LA_REC_SHORT)) == NULL || !PyDict_Check(rec)
            || PyDict_SetItem(rec, S.k_route, frag) < 0)
            goto bad_rec;
    } else {
        if ((rec = A_GET(a, s_rec, LA_REC)) == NULL || !PyDict_Check(rec)
            || PyDict_SetItem(rec, S.k_route, rname) < 0
            || PyDict_SetItem(rec, S.k_region, f[F_REGION]) < 0
            || PyDict_SetItem(rec, S.k_backend, f[F_BACKEND]) < 0
            || PyDict_SetItem(rec, S.k_verdicts, f[F_VERDICTS]) < 0
            || PyDict_SetItem(rec, S.k_error, f[F_ERROR]) < 0
            || PyDict_SetItem(rec, S.k_retries, f[F_RETRIES]) < 0)
            goto bad_rec;
    }
    if ((sec_text = A_GET(a, s_sec_text, LA_SEC_TEXT)) == NULL)
        goto done;
    {
        double msf = trunc((now - sec) * 1000 + 1e-4);
        Py_ssize_t ms = msf < 0 ? 0 : msf > 1000 ? 1000 : (Py_ssize_t)msf;
        time_text = PyUnicode_Concat(sec_text, PyTuple_GET_ITEM(S.millis, ms));
        if (time_text == NULL)
            goto done;
    }
    path = f[F_PATH];
    if (PyUnicode_CheckExact(path) && PyUnicode_GET_LENGTH(path) <= S.max_path)
        Py_INCREF(path);
    else if ((path = PySequence_GetSlice(path, 0, S.max_path)) == NULL)
        goto done;
    if (PyDict_SetItem(rec, S.k_time, time_text) < 0
        || PyDict_SetItem(rec, S.k_id, f[F_ID]) < 0
        || PyDict_SetItem(rec, S.k_client, f[F_CLIENT]) < 0
        || PyDict_SetItem(rec, S.k_country, country) < 0
        || PyDict_SetItem(rec, S.k_method, f[F_METHOD]) < 0
        || PyDict_SetItem(rec, S.k_host, f[F_HOST]) < 0
        || PyDict_SetItem(rec, S.k_path, path) < 0
        || PyDict_SetItem(rec, S.k_status, f[F_STATUS]) < 0
        || PyDict_SetItem(rec, S.k_bytes_in, f[F_BYTES_IN]) < 0
        || PyDict_SetItem(rec, S.k_bytes_out, f[F_BYTES_OUT]) < 0
        || PyDict_SetItem(rec, S.k_total_ms, total_ms) < 0
        || PyDict_SetItem(rec, S.k_upstream_ms, upstream_ms) < 0)
        goto done;
    {
        PyObject *cargs[2] = {rec, S.option};
        line = PyObject_Vectorcall(S.dumps, cargs, 1, S.dumps_kwnames);
    }
    if (line == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError))
            goto done;
        PyErr_Clear();   /* lone surrogates: the json fallback, as in Python */
        if ((line = PyObject_CallMethodOneArg(a, S.s_format, ctx)) == NULL)
            goto done;
    }
    if (!PyBytes_Check(line)) {
        PyErr_SetString(PyExc_TypeError, "access log line is not bytes");
        goto done;
    }

    /* -- buffer it (AccessLog.log) -- */
    {
        Line one;
        one.n = 1;
        one.len = one.s[0].n = PyBytes_GET_SIZE(line);
        one.s[0].p = PyBytes_AS_STRING(line);
        if (buffer_line(a, &one, line) < 0)
            goto done;
    }
    result = Py_NewRef(Py_None);
    goto done;

bad_rec:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "access log record is not a dict");
done:
    Py_XDECREF(rname); Py_XDECREF(key); Py_XDECREF(requests); Py_XDECREF(r);
    Py_XDECREF(clients); Py_XDECREF(gkey); Py_XDECREF(country);
    Py_XDECREF(total_ms); Py_XDECREF(upstream_ms); Py_XDECREF(wall); Py_XDECREF(asec);
    Py_XDECREF(rec); Py_XDECREF(frag); Py_XDECREF(sec_text); Py_XDECREF(time_text);
    Py_XDECREF(path); Py_XDECREF(line);
    for (int i = 0; i < N_FIELDS; i++)
        Py_DECREF(f[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "Hand over finish.py's constants (once, at import)."},
    {"observe_and_log", (PyCFunction)(void (*)(void))observe_and_log, METH_FASTCALL,
     "observe_and_log(m, a, ctx): finish.observe_and_log, in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_finish", "finish.observe_and_log in C (see _finish.c).", -1, methods,
};

#define INTERN(dst, s) do { if (((dst) = intern(s)) == NULL) return NULL; } while (0)

PyMODINIT_FUNC
PyInit__finish(void)
{
    INTERN(S.s_requests, "_requests"); INTERN(S.s_clients, "_clients");
    INTERN(S.s_wall_offset, "_wall_offset"); INTERN(S.s_sec, "_sec");
    INTERN(S.s_sec_text, "_sec_text"); INTERN(S.s_time_text, "_time_text");
    INTERN(S.s_rec, "_rec"); INTERN(S.s_rec_short, "_rec_short"); INTERN(S.s_buf, "_buf");
    INTERN(S.s_buf_bytes, "_buf_bytes"); INTERN(S.s_buf_lines, "_buf_lines");
    INTERN(S.s_overflow, "_overflow"); INTERN(S.s_format, "format");
    INTERN(S.s_count_rare, "count_rare"); INTERN(S.s_name, "name");
    INTERN(S.s_country, "country"); INTERN(S.s_continent, "continent");
    INTERN(S.k_time, "time"); INTERN(S.k_id, "id"); INTERN(S.k_client, "client");
    INTERN(S.k_country, "country"); INTERN(S.k_method, "method"); INTERN(S.k_host, "host");
    INTERN(S.k_path, "path"); INTERN(S.k_status, "status"); INTERN(S.k_bytes_in, "bytes_in");
    INTERN(S.k_bytes_out, "bytes_out"); INTERN(S.k_total_ms, "total_ms");
    INTERN(S.k_upstream_ms, "upstream_ms"); INTERN(S.k_route, "route");
    INTERN(S.k_region, "region"); INTERN(S.k_backend, "backend");
    INTERN(S.k_verdicts, "verdicts"); INTERN(S.k_error, "error"); INTERN(S.k_retries, "retries");
    INTERN(S.other, "other");
    /* interned: orjson matches keyword names by identity with its own */
    PyObject *option = intern("option");
    if (option == NULL || (S.dumps_kwnames = PyTuple_Pack(1, option)) == NULL
        || (S.no_geo = PyTuple_Pack(2, Py_None, Py_None)) == NULL
        || (S.one = PyLong_FromLong(1)) == NULL || (S.zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
