/* proxy._hotpath: Downstream.on_header in C.
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
} H;

static int
slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *off)
{
    PyObject *d = PyDict_GetItemString(type->tp_dict, name);
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)
        || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "setup: %s.%s is not an object slot", type->tp_name, name);
        return -1;
    }
    *off = ((PyMemberDescrObject *)d)->d_member->offset;
    return 0;
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* set an object slot, owning the new value */
static void
slot_set(PyObject *obj, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(obj, off);
    SLOT(obj, off) = v;
    Py_XDECREF(old);
}

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

    Py_ssize_t n = PyBytes_GET_SIZE(name);
    const char *src = PyBytes_AS_STRING(name);
    if (memchr(src, '_', n) != NULL)
        return py_fallback(down, name, value);
    /* the limits, checked before anything changes: over one, Python raises */
    Py_ssize_t max_headers = int_attr(f[X_LIMITS], H.s_max_headers);
    Py_ssize_t max_bytes = int_attr(f[X_LIMITS], H.s_max_header_bytes);
    Py_ssize_t header_bytes = PyLong_AsSsize_t(f[X_HEADER_BYTES]);
    Py_ssize_t url_len = PyLong_AsSsize_t(f[X_URL_LEN]);
    if (max_headers < 0 || max_bytes < 0 || header_bytes < 0 || url_len < 0) {
        PyErr_Clear();
        return py_fallback(down, name, value);
    }
    Py_ssize_t new_bytes = header_bytes + n + PyBytes_GET_SIZE(value) + 4;
    if (PyList_GET_SIZE(f[X_HEADERS]) + 1 > max_headers || new_bytes > max_bytes + url_len)
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
    PyObject *down_type, *ex_type, *parsing, *py_on_header;
    if (!PyArg_ParseTuple(args, "O!O!OO:setup", &PyType_Type, &down_type, &PyType_Type, &ex_type,
                          &parsing, &py_on_header))
        return NULL;
    if (slot_offset((PyTypeObject *)down_type, "parsing", &H.down_parsing) < 0)
        return NULL;
    for (int i = 0; i < N_EX; i++)
        if (slot_offset((PyTypeObject *)ex_type, ex_names[i], &H.ex_off[i]) < 0)
            return NULL;
    Py_INCREF(down_type); Py_XSETREF(H.down_type, (PyTypeObject *)down_type);
    Py_INCREF(ex_type); Py_XSETREF(H.ex_type, (PyTypeObject *)ex_type);
    Py_INCREF(parsing); Py_XSETREF(H.parsing_state, parsing);
    Py_INCREF(py_on_header); Py_XSETREF(H.py_on_header, py_on_header);
    H.ready = 1;
    return PyDescr_NewMethod((PyTypeObject *)down_type, &on_header_def);
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(Downstream, Exchange, PARSING, py_on_header): the C on_header, as a method of Downstream."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hotpath", "Parts of the request path in C (see _hotpath.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    if ((H.s_max_headers = PyUnicode_InternFromString("max_headers")) == NULL
        || (H.s_max_header_bytes = PyUnicode_InternFromString("max_header_bytes")) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
